"""The engine: plain, blocking diffusers code (pipelines, safety checker, PNG metadata, devices).

It imports only `sdbot` settings and types and `generation.errors`: no asyncio, no store, no Discord.
"""

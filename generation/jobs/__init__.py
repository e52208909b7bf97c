"""Jobs: the fair-share queue, cost model, scheduler, worker and runners that feed the engine.

Imports `sdbot` (store, settings, types), `generation.errors` and `generation.engine`; never `bot`.
"""

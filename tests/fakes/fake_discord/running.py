"""Pytest fixtures: a started :class:`FakeDiscord` with discord.py pointed at it, and :func:`run_client`.

Import into a conftest with ``from tests.fakes.fake_discord.running import fake_discord  # noqa: F401``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import discord
import discord.gateway
import discord.http
import yarl

from .client_api import FakeDiscord


@contextlib.asynccontextmanager
async def serve_fake_discord(**kwargs: object) -> AsyncIterator[FakeDiscord]:
    """Start a fake, point discord.py's REST base and gateway URL at it, restore both afterwards."""
    fake = FakeDiscord(**kwargs)  # type: ignore[arg-type]
    await fake.start()
    old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.ws_url + "/")
    try:
        yield fake
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway
        await fake.stop()


@contextlib.asynccontextmanager
async def run_client(fake: FakeDiscord, client: discord.Client, *, token: str | None = None,
                     ready_timeout: float = 10.0, fast_ready: bool = True) -> AsyncIterator[discord.Client]:
    """Run an already-constructed ``discord.Client``/``commands.Bot`` against ``fake`` until the block exits.

    Waits until the client is ready (READY + guild available). ``fast_ready`` caps discord.py's
    ``guild_ready_timeout`` (2 s by default) at 0.05 s. A client object can only be started once;
    to test a restart, exit this block and run a *new* client against the same fake.
    """
    if fast_ready:
        state = client._connection  # noqa: SLF001 - only to shorten discord.py's post-GUILD_CREATE wait
        state.guild_ready_timeout = min(state.guild_ready_timeout, 0.05)
    task = asyncio.create_task(client.start(token or fake.token), name="fake-discord-client")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ready_timeout
    try:
        while not (client.is_ready() and client.get_guild(fake.guild.id) is not None):
            if task.done():
                task.result()  # re-raise the startup failure (LoginFailure, HTTPException...)
                raise RuntimeError("client.start() returned before the client became ready")
            if loop.time() > deadline:
                raise TimeoutError(f"client not ready after {ready_timeout}s; violations: {fake.violations}")
            await asyncio.sleep(0.01)
        yield client
    finally:
        await client.close()
        try:
            await asyncio.wait_for(task, timeout=5)
        except (asyncio.CancelledError, Exception):
            pass

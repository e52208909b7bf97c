"""A source of real bot processes for hard-kill tests: imports everything and loads the tiny model
once, then forks one bot per line read on stdin and prints its pid, so a test can SIGKILL each.

Run as `python -m tests.fakes.bot_process API_BASE WS_URL TOKEN SETTINGS_JSON`; each bot connects
to the fake Discord at those URLs. Forking skips the ~10 s of imports a fresh interpreter needs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import traceback

import discord.gateway
import discord.http
import yarl

from bot.app import build_bot
from generation.engine.config import EngineConfig
from generation.engine.diffusion import DiffusionEngine
from sdbot.settings import Settings
from sdbot.store import Store


async def _serve(settings: Settings, engine: DiffusionEngine, token: str) -> None:
    store = await Store.open(settings.database_path, default_daily_quota=settings.default_daily_quota)
    bot = build_bot(settings, store, engine)
    bot._connection.guild_ready_timeout = 0.05  # as tests.fakes.fake_discord.running does
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(bot.close()))
    try:
        async with bot:
            await bot.start(token)
    finally:
        await store.close()


def main() -> None:
    api_base, ws_url, token, settings_json = sys.argv[1:5]
    discord.http.Route.BASE = api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(ws_url + "/")
    settings = Settings.model_validate_json(settings_json)
    engine = DiffusionEngine.load(EngineConfig.from_settings(settings))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # bots that end are reaped by the kernel
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                asyncio.run(_serve(settings, engine, token))
            except BaseException:  # noqa: BLE001 - reported on stderr, the exit code says it failed
                traceback.print_exc()
                code = 1
            os._exit(code)
        print(pid, flush=True)


if __name__ == "__main__":
    main()

"""Start-up: open the database, load the models, then connect to Discord.

Resources are opened here and handed to the bot, so tests build the same bot around a temporary
database, tiny models and the fake Discord.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from bot.client import ModelInfo, SDBot
from generation.engine import DiffusionEngine
from generation.errors import GenerationError
from generation.runners import BatchRunner, LocalRunner
from sdbot.migrate import MigrationError
from sdbot.settings import Settings
from sdbot.store import Store

log = logging.getLogger(__name__)


def build_bot(settings: Settings, store: Store, engine: DiffusionEngine, **options: object) -> SDBot:
    runners: list[BatchRunner] = [LocalRunner(engine)]
    model = ModelInfo(model_id=engine.model_id, native_size=engine.native_size, validate=engine.validate)
    return SDBot(settings=settings, store=store, runners=runners, model=model, **options)


def run_bot(settings: Settings) -> int:
    """`sdbot run`: returns the process exit code."""
    try:
        log.info("loading %s on %s (first start downloads the weights)", settings.model_id, settings.device)
        engine = DiffusionEngine.load(settings)
    except GenerationError as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return 1
    try:
        asyncio.run(_serve(settings, engine))
    except MigrationError as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return 1
    return 0


async def _serve(settings: Settings, engine: DiffusionEngine) -> None:
    store = await Store.open(settings.database_path, default_daily_quota=settings.default_daily_quota)
    try:
        bot = build_bot(settings, store, engine)
        loop = asyncio.get_running_loop()
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            # A clean stop: the worker finishes or re-queues its batch before the bot disconnects.
            loop.add_signal_handler(stop_signal, lambda: asyncio.ensure_future(bot.close()))
        assert settings.discord_token is not None
        async with bot:
            await bot.start(settings.discord_token.get_secret_value())
    finally:
        await store.close()

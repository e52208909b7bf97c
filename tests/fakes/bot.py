"""The product bot, built by the production `build_bot` around tiny models and a temporary database,
running against the loopback fake Discord."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from bot.app import build_bot
from bot.client import SDBot
from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths
from sdbot.settings import Settings
from sdbot.store import Store
from tests.fakes.fake_discord.client_api import FakeDiscord
from tests.fakes.fake_discord.running import run_client


class SlowedEngine:
    """The real tiny engine, with each denoising step stretched, so tests can act mid-generation."""

    def __init__(self, engine: DiffusionEngine, step_s: float) -> None:
        self._engine, self.step_s = engine, step_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def run_batch(self, batch: Any, on_step: Any, should_stop: Any, on_preview: Any = None) -> Any:
        def slow_step(step: int, total: int) -> None:
            time.sleep(self.step_s)
            on_step(step, total)

        return self._engine.run_batch(batch, slow_step, should_stop, on_preview)


class BotHarness:
    """Starts, stops and restarts the bot; the fake Discord and the database outlive restarts."""

    def __init__(self, fake: FakeDiscord, settings: Settings, engine: DiffusionEngine) -> None:
        self.fake, self.settings, self.engine = fake, settings, engine
        self.store: Store | None = None
        self.bot: SDBot | None = None
        self._running: contextlib.AsyncExitStack | None = None

    async def start(self, engine: DiffusionEngine | SlowedEngine | None = None) -> SDBot:
        stack = contextlib.AsyncExitStack()
        self.store = await Store.open(
            self.settings.database_path, default_daily_quota=self.settings.default_daily_quota
        )
        stack.push_async_callback(self.store.close)
        self.bot = build_bot(self.settings, self.store, engine or self.engine)  # type: ignore[arg-type]
        await stack.enter_async_context(run_client(self.fake, self.bot))
        self._running = stack
        return self.bot

    async def stop(self) -> None:
        if self._running is not None:
            await self._running.aclose()
            self._running = None

    async def restart(self, engine: DiffusionEngine | SlowedEngine | None = None) -> SDBot:
        await self.stop()
        return await self.start(engine)


def bot_settings(models: TinyModelPaths, tmp_path: Path, fake: FakeDiscord, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_path": tmp_path / "data" / "sdbot.sqlite3",
        "output_dir": tmp_path / "data" / "images",
        "dev_guild_ids": [fake.guild.id],
        "default_steps": 2,
        "progress_interval_s": 0.2,
    }
    return models.settings(**(values | overrides))

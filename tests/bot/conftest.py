"""Fixtures of the bot tests: the product bot on tiny models, against the loopback fake Discord."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths
from tests.fakes.bot import BotHarness, bot_settings
from tests.fakes.fake_discord.client_api import FakeDiscord


@pytest.fixture
async def harness(
    fake_discord: FakeDiscord, tiny_models: TinyModelPaths, tiny_engine: DiffusionEngine, tmp_path: Path
) -> AsyncIterator[BotHarness]:
    running = BotHarness(fake_discord, bot_settings(tiny_models, tmp_path, fake_discord), tiny_engine)
    await running.start()
    yield running
    await running.stop()

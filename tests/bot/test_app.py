"""`sdbot run` start-up order: database, model folders and token are checked before any model loads."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bot.app import run_bot
from generation.engine.tiny_models import TinyModelPaths
from tests.fakes.fake_discord.client_api import FakeDiscord


async def test_a_refused_token_stops_the_start_before_any_model_loads(
    fake_discord: FakeDiscord, tiny_models: TinyModelPaths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_discord.expect_violations("unauthorized")  # the refused login itself
    settings = tiny_models.settings(
        discord_token="not-the-token", database_path=tmp_path / "db.sqlite3", dev_guild_ids=[fake_discord.guild.id]
    )
    with caplog.at_level(logging.INFO, logger="generation.engine.diffusion"):
        code = await asyncio.wait_for(asyncio.to_thread(run_bot, settings), timeout=60)
    assert code == 2  # "Discord refused SDBOT_DISCORD_TOKEN"
    assert len(fake_discord.violations_of("unauthorized")) == 1
    assert not [r for r in caplog.records if r.getMessage().startswith("loading")]


async def test_a_missing_model_folder_is_named_before_discord_is_asked(
    fake_discord: FakeDiscord, tiny_models: TinyModelPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tiny_models.settings(
        discord_token=fake_discord.token, database_path=tmp_path / "db.sqlite3", model_id=str(tmp_path / "nope")
    )
    assert await asyncio.wait_for(asyncio.to_thread(run_bot, settings), timeout=60) == 1
    assert "SDBOT_MODEL_ID" in capsys.readouterr().err
    assert fake_discord.requests == []  # nothing was asked of Discord

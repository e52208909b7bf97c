"""Shared fixtures. Tests never reach the network: models are tiny and local, Discord is a fake."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from collections.abc import AsyncIterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from sdbot.store import Store  # noqa: E402
from tests.bot_fixtures import harness  # noqa: E402, F401
from tests.engine_fixtures import flagging_engine, tiny_engine, tiny_models  # noqa: E402, F401
from tests.fake_discord.fixtures import fake_discord  # noqa: E402, F401


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run each test in a scratch folder so no developer .env or SDBOT_* variable leaks in."""
    for name in list(os.environ):
        if name.startswith("SDBOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "data" / "sdbot.sqlite3", default_daily_quota=10)
    yield opened
    await opened.close()

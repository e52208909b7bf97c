"""Fixtures every folder uses. Tests never reach the network: models are tiny random-weight ones
built once per session and loaded through the production code, Discord is a loopback fake."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub, which reads these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from collections.abc import AsyncIterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from generation.engine.diffusion import DiffusionEngine  # noqa: E402
from generation.engine.tiny_models import (  # noqa: E402
    TinyModelPaths,
    make_safety_checker,
    make_tiny_models,
)
from sdbot.store import Store  # noqa: E402
from tests.fakes.fake_discord.client_api import FakeDiscord  # noqa: E402
from tests.fakes.fake_discord.running import serve_fake_discord  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run each test in a scratch folder so no developer .env or SDBOT_* variable leaks in."""
    for name in list(os.environ):
        if name.startswith("SDBOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModelPaths:
    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_models: TinyModelPaths) -> DiffusionEngine:
    return DiffusionEngine.load(tiny_models.engine_config())


@pytest.fixture(scope="session")
def flagging_engine(tiny_models: TinyModelPaths, tmp_path_factory: pytest.TempPathFactory) -> DiffusionEngine:
    """The tiny model with a real StableDiffusionSafetyChecker whose thresholds flag every image."""
    checker = make_safety_checker(tmp_path_factory.mktemp("flagging") / "safety-checker", flag_everything=True)
    return DiffusionEngine.load(tiny_models.engine_config(safety_model_id=str(checker)))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "data" / "sdbot.sqlite3", default_daily_quota=10)
    yield opened
    await opened.close()


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A running fake Discord. Fails the test at teardown on any violation it did not declare with
    ``fake_discord.expect_violations(kind, ...)``."""
    async with serve_fake_discord() as fake:
        yield fake
        unexpected = fake.unexpected_violations()
    if unexpected:
        pytest.fail("fake Discord recorded violations:\n  " + "\n  ".join(map(str, unexpected)), pytrace=False)

"""`sdbot run` connects before the model has loaded: commands are queued meanwhile ("warming up")
and run once it is ready; a failed load keeps them queued. A compiled engine is warmed up off the
event loop, every batch bucket the settings allow."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import torch

from bot.app import _start_warm_up, build_bot, model_on_disk, serve_when_loaded
from bot.client import SDBot
from generation.engine.config import EngineConfig
from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths
from generation.errors import GenerationError
from sdbot.settings import Settings
from sdbot.store import Store
from sdbot.types import JobStatus
from tests.fakes.bot import bot_settings
from tests.fakes.fake_discord.client_api import FakeDiscord
from tests.fakes.fake_discord.running import run_client


@pytest.mark.timeout(170)
async def test_warm_up_covers_the_buckets_while_the_loop_runs(
    tiny_models: TinyModelPaths, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(max_batch=2, max_count=1)  # batches of 1 or 2 images: buckets 1 and 2
    config = tiny_models.engine_config(compile="on").model_copy(update={"compile_backend": "eager"})
    torch._dynamo.reset()
    try:
        engine = DiffusionEngine.load(config)
        with caplog.at_level(logging.INFO, logger="generation.engine.diffusion"):
            task = _start_warm_up(settings, engine)
            assert task is not None
            ticks = 0
            while not task.done():  # the loop keeps turning during the warm-up
                await asyncio.sleep(0.01)
                ticks += 1
            await task
        assert ticks > 1
        assert "warming up: 64x64, batch of 1" in caplog.text
        assert "warming up: 64x64, batch of 2" in caplog.text
        assert "batch of 4" not in caplog.text
    finally:
        torch._dynamo.reset()


async def test_no_warm_up_without_a_local_engine() -> None:
    assert _start_warm_up(Settings(), None) is None


# Connected before the model has loaded


@pytest.fixture
async def loading_bot(
    fake_discord: FakeDiscord, tiny_models: TinyModelPaths, tmp_path: Path
) -> AsyncIterator[tuple[SDBot, Store, Settings]]:
    """The bot as `sdbot run` builds it when the model is on disk but not loaded yet."""
    settings = bot_settings(tiny_models, tmp_path, fake_discord)
    model = model_on_disk(EngineConfig.from_settings(settings))
    assert model is not None
    store = await Store.open(settings.database_path, default_daily_quota=settings.default_daily_quota)
    bot = build_bot(settings, store, None, loading=model)
    try:
        async with run_client(fake_discord, bot):
            yield bot, store, settings
    finally:
        await store.close()


def gated_load(gate: threading.Event, load: Callable[[], DiffusionEngine]) -> Callable[[], DiffusionEngine]:
    """A deliberately slow engine load: it waits for the test to open the gate."""

    def slow() -> DiffusionEngine:
        assert gate.wait(60)
        return load()

    return slow


async def test_model_read_from_disk_matches_the_loaded_engine(tiny_models: TinyModelPaths, tiny_engine: DiffusionEngine) -> None:
    model = model_on_disk(tiny_models.engine_config())
    assert model is not None and model.model_id == tiny_engine.model_id
    assert model.native_size == tiny_engine.native_size
    assert model.count_tokens is not None and model.count_tokens("a lighthouse") == tiny_engine.token_counter()("a lighthouse")
    assert model_on_disk(tiny_models.engine_config().model_copy(update={"model_id": "/nonexistent/model"})) is None


async def test_commands_while_the_model_loads_are_queued_and_run_once_it_is_ready(
    loading_bot: tuple[SDBot, Store, Settings], fake_discord: FakeDiscord, tiny_engine: DiffusionEngine
) -> None:
    bot, store, settings = loading_bot
    gate = threading.Event()
    loading = asyncio.create_task(serve_when_loaded(bot, settings, gated_load(gate, lambda: tiny_engine)))
    handle = await fake_discord.slash(fake_discord.member, "imagine", prompt="a lighthouse", count=1, seed=3)
    assert await handle.wait_response() == 5  # acknowledged in time while the model loads
    queued = await handle.wait_original(lambda m: "warming up" in m.content, timeout=10)
    assert "ready in about" not in queued.content  # no ETA without a measured rate
    job = await store.get_job(1)
    assert job is not None and job.status == JobStatus.QUEUED  # stored before the acknowledgement
    status = await fake_discord.slash(fake_discord.member, "queue")
    await status.wait_response()
    assert "next in line, the model is warming up" in status.content and "done in about" not in status.content
    assert not gate.is_set() and (await store.get_job(1)).status == JobStatus.QUEUED  # type: ignore[union-attr]
    gate.set()
    result = await handle.wait_original(lambda m: bool(m.attachments), timeout=60)
    assert result.attachments[0].filename == "sdbot-1-1-3.png"
    await asyncio.wait_for(loading, 30)
    # Once loaded, a new command gets its ETA again.
    second = await fake_discord.slash(fake_discord.member, "imagine", prompt="a harbour", count=1)
    await second.wait_original(lambda m: bool(m.attachments) or "ready in about" in m.content, timeout=30)


async def test_a_failed_load_keeps_jobs_queued_and_says_so(
    loading_bot: tuple[SDBot, Store, Settings], fake_discord: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    bot, store, settings = loading_bot

    def broken() -> DiffusionEngine:
        raise GenerationError("SDBOT_MODEL_ID: the UNet weights are truncated")

    gate = threading.Event()
    with caplog.at_level(logging.INFO, logger="bot.app"):
        loading = asyncio.create_task(serve_when_loaded(bot, settings, gated_load(gate, broken)))
        handle = await fake_discord.slash(fake_discord.member, "imagine", prompt="a lighthouse", count=1)
        await handle.wait_original(lambda m: "warming up" in m.content, timeout=10)
        gate.set()
        await asyncio.wait_for(loading, 30)
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [
        "could not load the model (SDBOT_MODEL_ID: the UNet weights are truncated); "
        "queued jobs stay queued until a restart loads it"
    ]
    # The member is told why the job waits, and it is still queued for the next start.
    await handle.wait_original(lambda m: "could not be loaded" in m.content, timeout=10)
    assert (await store.get_job(1)).status == JobStatus.QUEUED  # type: ignore[union-attr]
    later = await fake_discord.slash(fake_discord.member, "imagine", prompt="a harbour", count=1)
    reply = await later.wait_original(lambda m: "queued" in m.content, timeout=10)
    assert "could not be loaded" in reply.content

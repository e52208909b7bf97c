"""`sdbot run` warms a compiled engine up off the event loop, every batch bucket the settings allow."""

from __future__ import annotations

import asyncio
import logging

import pytest
import torch

from bot.app import _start_warm_up
from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths
from sdbot.settings import Settings


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

"""Batch buckets: sizes, padding, and a compiled tiny engine that serves two batch sizes of one
bucket without recompiling (dynamo's `error_on_recompile`)."""

from __future__ import annotations

import logging
import time
from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image

from generation.engine.buckets import bucket_for, buckets_up_to, pad_per_image
from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths
from sdbot.types import GeneratedImage
from tests.fakes.params import ignore_steps, never, text2img


def pixels(image: GeneratedImage) -> np.ndarray:
    assert image.data is not None
    return np.asarray(Image.open(BytesIO(image.data)).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize(("count", "bucket"), [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8), (9, 16), (17, 24)])
def test_a_batch_goes_to_the_smallest_bucket_that_holds_it(count: int, bucket: int) -> None:
    assert bucket_for(count) == bucket


def test_no_bucket_for_an_empty_batch() -> None:
    with pytest.raises(ValueError, match="at least one"):
        bucket_for(0)


def test_the_buckets_a_warm_up_must_cover() -> None:
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(4) == (1, 2, 4)
    assert buckets_up_to(6) == (1, 2, 4, 8)


def test_padding_repeats_per_image_values_and_gives_padding_its_own_generators() -> None:
    real = [torch.Generator("cpu").manual_seed(seed) for seed in (5, 6, 7)]
    states = [generator.get_state() for generator in real]
    padded = pad_per_image({"prompt": ["a", "b", "c"], "generator": real, "width": 64, "sizes": [1]}, 3, 4)

    assert padded["prompt"] == ["a", "b", "c", "c"]
    assert padded["generator"][:3] == real and padded["generator"][3] not in real
    assert all(torch.equal(g.get_state(), s) for g, s in zip(real, states, strict=True))
    assert (padded["width"], padded["sizes"]) == (64, [1])  # not per-image: left alone
    assert pad_per_image({"prompt": ["a"]}, 1, 1) == {"prompt": ["a"]}


@pytest.mark.timeout(170)
def test_compiled_engine_serves_a_bucket_without_recompiling(
    tiny_models: TinyModelPaths,
    tiny_engine: DiffusionEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Dynamo's "eager" backend: the same graph capture and guards as inductor (recompiles are
    # decided there), without a C++ build that takes minutes per graph on a CPU.
    config = tiny_models.engine_config(compile="on").model_copy(update={"compile_backend": "eager"})
    torch._dynamo.reset()
    try:
        engine = DiffusionEngine.load(config)
        with caplog.at_level(logging.INFO, logger="generation.engine.diffusion"):
            engine.warm_up([64], [4])
        assert "warming up: 64x64, batch of 4" in caplog.text
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)

        started = time.perf_counter()
        (three,) = engine.run_batch([text2img(seeds=(1, 2, 3), steps=1)], ignore_steps, never)
        (four,) = engine.run_batch([text2img(seeds=(1, 2, 3, 4), steps=1)], ignore_steps, never)
        assert time.perf_counter() - started < 30  # served from the warmed graphs

        assert [image.seed for image in three.images] == [1, 2, 3]  # the padded image was dropped
        assert [image.seed for image in four.images] == [1, 2, 3, 4]
        (eager,) = tiny_engine.run_batch([text2img(seeds=(1, 2, 3), steps=1)], ignore_steps, never)
        for compiled_image, eager_image in zip(three.images, eager.images, strict=True):
            assert np.abs(pixels(compiled_image) - pixels(eager_image)).max() <= 2
    finally:
        torch._dynamo.reset()


def test_warm_up_is_a_no_op_without_compile(tiny_engine: DiffusionEngine, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="generation.engine.diffusion"):
        tiny_engine.warm_up([64], [1, 2])
    assert "warming up" not in caplog.text


def test_prompt_embeddings_are_padded_like_the_other_per_image_arguments() -> None:
    embeds = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 4)
    padded = pad_per_image({"prompt_embeds": embeds, "negative_prompt_embeds": None, "strength": 0.5}, 3, 4)
    assert padded["prompt_embeds"].shape == (4, 2, 4)
    assert torch.equal(padded["prompt_embeds"][:3], embeds) and torch.equal(padded["prompt_embeds"][3], embeds[2])
    assert padded["negative_prompt_embeds"] is None and padded["strength"] == 0.5

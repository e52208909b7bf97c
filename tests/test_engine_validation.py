"""Requests the engine refuses, with the message the user sees; nothing is generated for them."""

from __future__ import annotations

from io import BytesIO

import pytest
from PIL import Image

from generation.engine import DiffusionEngine
from generation.errors import BlockedPrompt, InvalidRequest
from generation.test_models import TestModelPaths
from generation.types import GenerationParams, PipelineKind
from tests.engine_fixtures import never, text2img


def png(width: int, height: int) -> bytes:
    buffer = BytesIO()
    Image.new("RGB", (width, height), "teal").save(buffer, "PNG")
    return buffer.getvalue()


def variation(**fields: object) -> GenerationParams:
    values: dict[str, object] = {"pipeline": PipelineKind.IMG2IMG, "strength": 0.6, "source_image": png(64, 64)}
    return text2img(**(values | fields))


def upscale(**fields: object) -> GenerationParams:
    values: dict[str, object] = {"pipeline": PipelineKind.UPSCALE, "source_image": png(64, 64)}
    return text2img(**(values | fields))


BAD_REQUESTS = [
    (text2img(width=100), "width and height must be multiples of 8 (got 100x64)"),
    (text2img(height=2048), "width and height must be between 64 and 1024 pixels (got 64x2048)"),
    (text2img(steps=0), "steps must be between 1 and 50 (got 0)"),
    (text2img(steps=51), "steps must be between 1 and 50 (got 51)"),
    (text2img(guidance=-1.0), "guidance must be between 0 and 30 (got -1)"),
    (text2img(seeds=(2**32,)), "seed must be between 0 and 4294967295 (got 4294967296)"),
    (text2img(seeds=(-1,)), "seed must be between 0 and 4294967295 (got -1)"),
    (text2img(seeds=(1, 2, 3, 4, 5)), "at most 4 images per request (got 5)"),
    (text2img("   "), "the prompt is empty: describe the image you want"),
    (text2img("x" * 2000), "the prompt is 2000 characters long; the limit is 1000"),
    (text2img(negative_prompt="x" * 1001), "the negative prompt is 1001 characters long; the limit is 1000"),
    (variation(strength=0.05), "strength must be between 0.1 and 1.0 for a variation (got 0.05)"),
    (variation(strength=1.5), "strength must be between 0.1 and 1.0 for a variation (got 1.5)"),
    (variation(strength=None), "strength must be between 0.1 and 1.0 for a variation (got None)"),
    (variation(source_image=None), "a variation needs a source image"),
    (variation(source_image=b"not an image"), "the source image could not be read as a PNG, JPEG or WebP file"),
    (upscale(source_image=png(1100, 64)), "the source image is 1100x64; only images up to 1024x1024 can be upscaled"),
]


@pytest.mark.parametrize(("params", "message"), BAD_REQUESTS, ids=[message[:40] for _, message in BAD_REQUESTS])
def test_bad_requests_are_refused_with_a_clear_message(
    tiny_engine: DiffusionEngine, params: GenerationParams, message: str
) -> None:
    with pytest.raises(InvalidRequest) as by_validate:
        tiny_engine.validate(params)
    assert str(by_validate.value).startswith(message)

    steps: list[int] = []
    with pytest.raises(InvalidRequest) as by_run:
        tiny_engine.run_batch([text2img(), params], lambda step, total: steps.append(step), never)
    assert str(by_run.value) == str(by_validate.value)
    assert steps == []  # refused before any denoising


def test_huge_source_images_are_refused_before_decoding(tiny_models: TestModelPaths) -> None:
    engine = DiffusionEngine(tiny_models.settings(max_upload_pixels=64 * 64))
    with pytest.raises(InvalidRequest, match=r"the source image is 128x128; images over 4,096 pixels are refused"):
        engine.validate(variation(source_image=png(128, 128)))


def test_blocked_words_are_refused_in_prompts_only(tiny_models: TestModelPaths) -> None:
    # Validation needs no model: the bot can check before queueing.
    engine = DiffusionEngine(tiny_models.settings(blocked_words=["gore", "bad word"]))
    with pytest.raises(BlockedPrompt, match="'bad word'"):
        engine.validate(text2img("A BAD, word! in a field"))
    engine.validate(text2img("a classic gorilla", negative_prompt="gore"))

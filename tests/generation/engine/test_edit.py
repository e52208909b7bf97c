"""Variations, x2 upscales and the upload-size fallback, through the real engine."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from generation.engine.diffusion import DiffusionEngine
from generation.engine.png_metadata import parse_parameters, read_record
from generation.engine.tiny_models import TinyModelPaths
from sdbot.types import GeneratedImage, GenerationParams, PipelineKind
from tests.fakes.params import ignore_steps, never, text2img


@pytest.fixture(scope="module")
def source(tiny_engine: DiffusionEngine) -> GeneratedImage:
    return tiny_engine.run_batch([text2img("a harbour", seeds=(3,))], ignore_steps, never)[0].images[0]


def edit(kind: PipelineKind, source: GeneratedImage, **fields: object) -> GenerationParams:
    values: dict[str, object] = {"pipeline": kind, "source_image": source.data, "seeds": (99,)}
    return text2img(source.record.prompt, **(values | fields))


def pixels(data: bytes | None) -> np.ndarray:
    assert data is not None
    return np.asarray(Image.open(BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_variations_keep_the_size_and_change_the_pixels(tiny_engine: DiffusionEngine, source: GeneratedImage) -> None:
    params = edit(PipelineKind.IMG2IMG, source, strength=0.6, steps=4, seeds=(5, 6))
    (output,) = tiny_engine.run_batch([params], ignore_steps, never)

    assert output.warnings == []
    for image in output.images:
        assert (image.width, image.height) == (64, 64)
        assert np.abs(pixels(image.data) - pixels(source.data)).mean() > 1
        assert image.record.pipeline is PipelineKind.IMG2IMG
        assert (image.record.strength, image.record.steps) == (0.6, 4)
        assert image.record.extra["source_sha256"]
    assert not np.array_equal(pixels(output.images[0].data), pixels(output.images[1].data))
    parameters = parse_parameters(Image.open(BytesIO(output.images[0].data or b"")).text["parameters"])
    assert parameters["denoising_strength"] == 0.6


def test_few_step_variations_raise_steps_to_denoise_at_least_once(
    tiny_engine: DiffusionEngine, source: GeneratedImage
) -> None:
    steps: list[tuple[int, int]] = []
    params = edit(PipelineKind.IMG2IMG, source, strength=0.3, steps=2)  # int(2 * 0.3) == 0 steps
    (output,) = tiny_engine.run_batch([params], lambda step, total: steps.append((step, total)), never)

    assert output.warnings == ["steps raised from 2 to 4 so that strength 0.3 leaves at least one denoising step"]
    assert output.images[0].record.steps == 4
    assert steps == [(1, 1)]
    assert np.abs(pixels(output.images[0].data) - pixels(source.data)).mean() > 0


def test_variation_of_another_size_is_resized_with_a_warning(
    tiny_engine: DiffusionEngine, source: GeneratedImage
) -> None:
    wide = BytesIO()
    Image.open(BytesIO(source.data or b"")).resize((96, 64)).save(wide, "JPEG")
    (output,) = tiny_engine.run_batch(
        [edit(PipelineKind.IMG2IMG, source, strength=0.5, source_image=wide.getvalue())], ignore_steps, never
    )
    assert output.warnings == ["the source image was 96x64; it was resized to 64x64"]
    assert (output.images[0].width, output.images[0].height) == (64, 64)


def test_latent_upscale_doubles_the_size(
    tiny_engine: DiffusionEngine, tiny_models: TinyModelPaths, source: GeneratedImage
) -> None:
    steps: list[tuple[int, int]] = []
    params = edit(PipelineKind.UPSCALE, source, steps=3)
    (output,) = tiny_engine.run_batch([params], lambda step, total: steps.append((step, total)), never)

    (image,) = output.images
    assert (image.width, image.height) == (128, 128)
    assert Image.open(BytesIO(image.data or b"")).size == (128, 128)
    assert output.warnings == []
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert image.record.extra["upscaler"] == "latent"
    assert image.record.model_id == str(tiny_models.upscaler)
    assert (image.record.width, image.record.height) == (128, 128)


def test_upscaler_none_resizes_with_lanczos_and_says_so(
    tiny_models: TinyModelPaths, source: GeneratedImage
) -> None:
    engine = DiffusionEngine.load(tiny_models.engine_config(upscaler_model_id="none"))
    (output,) = engine.run_batch([edit(PipelineKind.UPSCALE, source)], ignore_steps, never)

    (image,) = output.images
    assert (image.width, image.height) == (128, 128)
    assert image.record.extra["upscaler"] == "lanczos"
    (warning,) = output.warnings
    assert "Lanczos" in warning and "no new detail" in warning
    assert parse_parameters(Image.open(BytesIO(image.data or b"")).text["parameters"])["upscaler"] == "lanczos"


def test_over_the_upload_limit_falls_back_to_a_smaller_format(
    tiny_engine: DiffusionEngine, source: GeneratedImage
) -> None:
    limit = len(source.data or b"") - 1  # the PNG of these exact pixels does not fit
    (output,) = tiny_engine.run_batch([text2img("a harbour", seeds=(3,), max_file_bytes=limit)], ignore_steps, never)

    (image,) = output.images
    assert image.format in {"webp", "jpeg"}
    assert len(image.data or b"") <= limit
    assert Image.open(BytesIO(image.data or b"")).format == image.format.upper()
    (warning,) = output.warnings
    assert warning.startswith("image 1 (seed 3) is over the") and "so it is sent as" in warning
    assert read_record(image.data or b"") is None  # the full JSON record only travels in PNGs


def test_an_impossible_upload_limit_is_reported(tiny_engine: DiffusionEngine) -> None:
    (output,) = tiny_engine.run_batch([text2img(max_file_bytes=100)], ignore_steps, never)
    assert output.images[0].format == "jpeg"
    assert "even as JPEG quality 75, over the 0.1 kB upload limit" in output.warnings[0]

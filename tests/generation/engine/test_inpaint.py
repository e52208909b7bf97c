"""Edits through the real engine: the inpainting pipeline made from the loaded model's modules, or a
dedicated inpainting checkpoint (SDBOT_INPAINT_MODEL_ID), with the kept pixels pasted back."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from generation import edit_geometry
from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths
from generation.errors import ModelLoadError
from generation.requests import EditSource, RequestLimits, inpaint_region, pan, zoom_out
from sdbot.types import GenerationParams
from tests.fakes.params import ignore_steps, never, text2img
from tests.generation.engine.test_edit import pixels

LIMITS = RequestLimits(max_size=256)
BASE = EditSource(width=64, height=64, prompt="a harbour")


@pytest.fixture(scope="module")
def source_png(tiny_engine: DiffusionEngine) -> bytes:
    made = tiny_engine.run_batch([text2img("a harbour", seeds=(3,))], ignore_steps, never)[0].images[0]
    assert made.data is not None
    return made.data


@pytest.fixture(scope="module")
def dedicated_engine(tiny_models: TinyModelPaths) -> DiffusionEngine:
    return DiffusionEngine(tiny_models.engine_config(inpaint_model_id=str(tiny_models.inpaint)))


def _run(engine: DiffusionEngine, params: GenerationParams, source: bytes) -> list[np.ndarray]:
    (output,) = engine.run_batch([params.model_copy(update={"source_image": source, "steps": 2})], ignore_steps, never)
    return [pixels(image.data) for image in output.images]


@pytest.mark.parametrize("dedicated", [False, True])
def test_every_edit_keeps_the_pixels_outside_its_mask(
    tiny_engine: DiffusionEngine, dedicated_engine: DiffusionEngine, source_png: bytes, dedicated: bool
) -> None:
    engine = dedicated_engine if dedicated else tiny_engine
    for params in (zoom_out(LIMITS, BASE, "2x"), pan(LIMITS, BASE, "right"), inpaint_region(LIMITS, BASE, "center")):
        assert params.edit is not None
        canvas = edit_geometry.canvas_of(Image.open(BytesIO(source_png)), params.edit, params.width, params.height)
        kept = np.asarray(canvas, dtype=np.int16)
        outside = np.asarray(edit_geometry.mask_of(params.edit, params.width, params.height)) == 0
        images = _run(engine, params, source_png)
        assert len(images) == 4
        for image in images:
            assert image.shape == (params.height, params.width, 3)
            assert np.abs(image - kept)[outside].max() <= 2
            assert np.abs(image - kept)[~outside].mean() > 1
    # A pan keeps the source itself, unscaled, beside the new strip.
    assert np.abs(_run(engine, pan(LIMITS, BASE, "right"), source_png)[0][:, :64] - pixels(source_png)).max() <= 2


def test_edits_reuse_the_loaded_weights_or_load_the_dedicated_checkpoint(
    tiny_engine: DiffusionEngine, dedicated_engine: DiffusionEngine, tiny_models: TinyModelPaths, source_png: bytes
) -> None:
    params = zoom_out(LIMITS, BASE, "2x").model_copy(update={"source_image": source_png, "seeds": (1,)})
    (output,) = tiny_engine.run_batch([params], ignore_steps, never)
    record = output.images[0].record
    assert record.model_id == tiny_engine.model_id and record.extra["edit"]["op"] == "zoom_out"
    assert tiny_engine.inpaint_pipeline.unet is tiny_engine.text2img_pipeline.unet  # no second copy
    (output,) = dedicated_engine.run_batch([params], ignore_steps, never)
    assert output.images[0].record.model_id == str(tiny_models.inpaint)
    assert dedicated_engine.inpaint_pipeline.unet.config.in_channels == 9


def test_a_missing_inpainting_checkpoint_is_refused_at_load(tiny_models: TinyModelPaths) -> None:
    with pytest.raises(ModelLoadError, match="SDBOT_INPAINT_MODEL_ID"):
        DiffusionEngine.load(tiny_models.engine_config(inpaint_model_id="/no/such/folder"))


def test_different_edits_of_one_size_share_a_batch_and_keep_their_own_masks(
    tiny_engine: DiffusionEngine, source_png: bytes
) -> None:
    jobs = [
        params.model_copy(update={"source_image": source_png, "seeds": (5, 6), "steps": 2})
        for params in (zoom_out(LIMITS, BASE, "1.5x"), inpaint_region(LIMITS, BASE, "left"))
    ]
    assert jobs[0].batch_key == jobs[1].batch_key
    outputs = tiny_engine.run_batch(jobs, ignore_steps, never)
    for params, output in zip(jobs, outputs, strict=True):
        assert params.edit is not None
        canvas = edit_geometry.canvas_of(Image.open(BytesIO(source_png)), params.edit, 64, 64)
        outside = np.asarray(edit_geometry.mask_of(params.edit, 64, 64)) == 0
        for image in output.images:
            assert np.abs(pixels(image.data) - np.asarray(canvas, dtype=np.int16))[outside].max() <= 2

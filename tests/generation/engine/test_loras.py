"""LoRAs in the engine: they change the pixels, turn off again for the next job, and apply in full
on the GPU fast path too (fused QKV projections would bypass a LoRA on to_q/to_k/to_v)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths
from sdbot.types import GenerationParams, PipelineKind


def image(engine: DiffusionEngine, loras: tuple[tuple[str, float], ...] = (), model: str = "tiny") -> np.ndarray:
    params = GenerationParams(pipeline=PipelineKind.TEXT2IMG, prompt="a cat", seeds=(4,), steps=2, guidance=0.0,
                              width=64, height=64, model=model, loras=loras)
    (output,) = engine.run_batch([params], lambda step, total: None, lambda: False)
    return np.asarray(Image.open(io.BytesIO(output.images[0].data or b"")), dtype=np.int16)


@pytest.mark.parametrize("fast_path", ["off", "on"])
def test_a_lora_changes_the_pixels_and_turns_off_again(tiny_models: TinyModelPaths, fast_path: str) -> None:
    engine = DiffusionEngine.load(tiny_models.engine_config(models_file=tiny_models.models_file, fast_path=fast_path))
    plain = image(engine)
    styled = image(engine, (("tiny-ink", 1.0),))
    assert np.abs(plain - styled).max() > 2
    assert np.abs(image(engine) - plain).max() == 0
    reference = DiffusionEngine.load(tiny_models.engine_config(models_file=tiny_models.models_file))
    assert np.abs(image(reference, (("tiny-ink", 1.0),)) - styled).max() <= 2  # the whole LoRA, fused or not


@pytest.mark.parametrize(("model", "lora"), [("tiny-flux", "tiny-flux-ink"), ("tiny-sd3", "tiny-sd3-ink")])
def test_a_transformer_lora_changes_its_models_pixels_and_turns_off_again(
    tiny_models: TinyModelPaths, model: str, lora: str
) -> None:
    engine = DiffusionEngine.load(tiny_models.engine_config(models_file=tiny_models.models_file))
    plain = image(engine, model=model)
    assert np.abs(image(engine, ((lora, 0.8),), model=model) - plain).mean() > 0.2
    assert np.abs(image(engine, model=model) - plain).max() == 0

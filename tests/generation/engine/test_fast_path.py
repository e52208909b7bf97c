"""The fast path's switches: what `auto` means per device, what is applied, and that it keeps
pixels reproducible."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import torch
from PIL import Image

from generation.engine.diffusion import DiffusionEngine
from generation.engine.fast_path import wanted
from generation.engine.tiny_models import TinyModelPaths
from sdbot.types import GeneratedImage
from tests.fakes.params import ignore_steps, never, text2img


def pixels(image: GeneratedImage) -> np.ndarray:
    assert image.data is not None
    return np.asarray(Image.open(BytesIO(image.data)).convert("RGB"), dtype=np.int16)


def test_auto_means_on_with_cuda_only() -> None:
    assert wanted("auto", torch.device("cuda"))
    assert not wanted("auto", torch.device("cpu"))
    assert wanted("on", torch.device("cpu")) and not wanted("off", torch.device("cuda"))


def test_defaults_on_a_cpu_apply_nothing(tiny_engine: DiffusionEngine) -> None:
    pipe = tiny_engine.text2img_pipeline
    assert not getattr(pipe, "fusing_unet", False)
    assert not hasattr(pipe.unet, "_compiled_call_impl") or pipe.unet._compiled_call_impl is None


def test_fused_qkv_and_channels_last_keep_pixels_reproducible(
    tiny_models: TinyModelPaths, tiny_engine: DiffusionEngine
) -> None:
    fast = DiffusionEngine.load(tiny_models.engine_config(fast_path="on"))
    pipe = fast.text2img_pipeline
    assert pipe.fusing_unet and pipe.fusing_vae
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)

    first = fast.run_batch([text2img(seeds=(7, 8))], ignore_steps, never)[0].images
    again = fast.run_batch([text2img(seeds=(7, 8))], ignore_steps, never)[0].images
    plain = tiny_engine.run_batch([text2img(seeds=(7, 8))], ignore_steps, never)[0].images
    for index in range(2):
        assert np.array_equal(pixels(first[index]), pixels(again[index]))
        assert np.abs(pixels(first[index]) - pixels(plain[index])).max() <= 2  # float rounding only

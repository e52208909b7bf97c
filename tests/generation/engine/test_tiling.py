"""Seamless tiling on the tiny pipeline.

The random-weight model draws noise-like pictures in which neighbouring columns are as different as
any two columns, so "the edges look alike" cannot be measured on it. What tiling means can: with
circular padding the picture lives on a torus and has no edge at all, so starting from latents
rolled sideways gives the same picture rolled sideways. Zero padding breaks that near the borders.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiling import is_seamless, set_seamless

# Latents are 32x32 for a 64x64 picture; the UNet halves them once, so shifts must be even.
LATENT_SHIFT = (4, 8)
PIXEL_SHIFT = (8, 16)


@pytest.fixture
def pipe(tiny_engine: DiffusionEngine) -> Iterator[Any]:
    pipe = tiny_engine.text2img_pipeline
    try:
        yield pipe
    finally:
        set_seamless(pipe, False)  # the pipeline is shared by the whole session


def draw(pipe: Any, latents: torch.Tensor, guidance: float = 0.0) -> np.ndarray:
    return pipe(  # type: ignore[no-any-return]
        prompt=["a brick wall"],
        num_inference_steps=1,  # one step is enough: each step is the same network
        guidance_scale=guidance,
        width=64,
        height=64,
        latents=latents.clone(),
        output_type="np",
    ).images[0]


def latents(seed: int) -> torch.Tensor:
    return torch.randn((1, 4, 32, 32), generator=torch.Generator("cpu").manual_seed(seed))


def wrap_error(pipe: Any, seed: int, guidance: float) -> float:
    """How far the picture from rolled latents is from the rolled picture (mean, 0-1 scale)."""
    start = latents(seed)
    picture = draw(pipe, start, guidance)
    rolled = draw(pipe, torch.roll(start, LATENT_SHIFT, dims=(2, 3)), guidance)
    return float(np.abs(np.roll(picture, PIXEL_SHIFT, axis=(0, 1)) - rolled).mean())


def test_tiled_pictures_have_no_edges(pipe: Any) -> None:
    # Guidance 5 runs the UNet on the prompt and on the empty negative, so both paths are checked.
    plain = wrap_error(pipe, 3, 5.0)
    set_seamless(pipe, True)
    tiled = wrap_error(pipe, 3, 5.0)
    # Measured on the tiny model: a few hundredths with zero padding, about 1e-7 (float rounding)
    # with tiling.
    assert plain > 0.01
    assert tiled < plain / 1000


def test_the_seam_across_the_edge_is_like_any_other_seam(pipe: Any) -> None:
    set_seamless(pipe, True)
    picture = draw(pipe, latents(5))
    rolled = draw(pipe, torch.roll(latents(5), 16, dims=3))  # half the width, in latent pixels
    # The old left and right edges are now the two columns either side of the centre of `rolled`,
    # side by side like any pair of neighbours: nothing in the picture marks where the edge was.
    np.testing.assert_allclose(rolled[:, 31], picture[:, -1], atol=1e-5)
    np.testing.assert_allclose(rolled[:, 32], picture[:, 0], atol=1e-5)
    np.testing.assert_allclose(rolled[:, :32], picture[:, 32:], atol=1e-5)


def test_switching_off_restores_the_exact_pictures(pipe: Any) -> None:
    before = draw(pipe, latents(1), guidance=5.0)
    set_seamless(pipe, True)
    set_seamless(pipe, True)  # twice must not lose the remembered modes
    assert is_seamless(pipe)
    assert not np.array_equal(draw(pipe, latents(1), guidance=5.0), before)
    set_seamless(pipe, False)
    assert not is_seamless(pipe)
    assert np.array_equal(draw(pipe, latents(1), guidance=5.0), before)


def test_original_padding_modes_are_remembered(pipe: Any) -> None:
    conv = pipe.vae.decoder.conv_out
    assert conv.padding_mode == "zeros"
    conv.padding_mode = "reflect"
    try:
        set_seamless(pipe, True)
        assert conv.padding_mode == "circular" and pipe.unet.conv_in.padding_mode == "circular"
        set_seamless(pipe, False)
        assert conv.padding_mode == "reflect" and pipe.unet.conv_in.padding_mode == "zeros"
    finally:
        conv.padding_mode = "zeros"

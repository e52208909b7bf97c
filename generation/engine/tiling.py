"""Seamless tiling (`--tile`): make a pipeline draw images whose left edge continues its right edge
and whose top continues its bottom, so they can be repeated as wallpaper or textures.

Every 2-D convolution of the UNet and VAE pads circularly (wrapping around the opposite edge)
instead of with zeros, so the network sees the image as a torus. The original padding mode of each
layer is remembered on the layer, so switching off restores the pipeline exactly.
"""

from __future__ import annotations

from typing import Any

import torch

# Attribute set on each Conv2d while tiling is on: its padding mode from before.
_ORIGINAL = "_sdbot_padding_mode"


def _convolutions(pipe: Any) -> list[torch.nn.Conv2d]:
    return [
        module
        for model in (getattr(pipe, "unet", None), pipe.vae)  # a transformer (FLUX) has no UNet
        if model is not None
        for module in model.modules()
        if isinstance(module, torch.nn.Conv2d)
    ]


def set_seamless(pipe: Any, enabled: bool) -> None:
    """Switch seamless tiling on or off for `pipe` (idempotent). Pipelines that share modules (an
    image-to-image pipeline made from a text-to-image one) switch together."""
    for conv in _convolutions(pipe):
        if enabled:
            if not hasattr(conv, _ORIGINAL):
                setattr(conv, _ORIGINAL, conv.padding_mode)
            conv.padding_mode = "circular"
        elif hasattr(conv, _ORIGINAL):
            conv.padding_mode = getattr(conv, _ORIGINAL)
            delattr(conv, _ORIGINAL)


def is_seamless(pipe: Any) -> bool:
    """Whether `set_seamless(pipe, True)` is in effect."""
    return any(hasattr(conv, _ORIGINAL) for conv in _convolutions(pipe))

"""Live previews: the latents of a running batch decoded with a tiny VAE (TAESD, diffusers'
`AutoencoderTiny`) into one small JPEG per job, a grid of its images.

Cost bound: a preview is made at most once per `interval_s` of generation, and never before the
first interval has passed, so a batch that ends within it pays nothing and a long one pays at most
one decode (plus its safety check) per interval.

Safety: every preview image passes the same safety checker as the final images before its pixels
leave the engine; a job whose preview has a flagged image gets no preview for that step. With the
safety checker off (SDBOT_SAFETY_CHECKER=false) final images are not checked either, and neither
are previews. A preview never changes the final pixels: it reads the latents, draws no random
numbers and hands nothing back to the pipeline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from io import BytesIO
from typing import Any

import torch
from PIL import Image

from generation.engine.safety import SafetyChecker

# The longest side of a preview (the grid of a job's images), and its JPEG quality.
PREVIEW_SIDE = 256
_JPEG_QUALITY = 70


class PreviewMaker:
    """Decodes and encodes previews for one engine; used under the engine's lock."""

    def __init__(self, decoder: Any, safety: SafetyChecker | None, interval_s: float) -> None:
        self._decoder = decoder
        self._safety = safety
        self._interval_s = interval_s
        self._last = 0.0

    def start(self) -> None:
        """A new pipeline call begins: its first preview is one interval away."""
        self._last = time.monotonic()

    def due(self, step: int, total: int) -> bool:
        """Whether this step gets a preview (never the last: the final images follow at once)."""
        return step < total and time.monotonic() - self._last >= self._interval_s

    def make(self, latents: torch.Tensor, counts: Sequence[int]) -> list[bytes | None]:
        """One JPEG per job; `counts` is each job's number of images, in batch order (padding
        rows beyond them are ignored)."""
        try:
            images = self._decode(latents[: sum(counts)])
            verdicts = self._safety.check(images) if self._safety is not None else []
        finally:  # a failed preview waits its interval too, so it cannot cost every step
            self._last = time.monotonic()
        flagged = [verdict.flagged for verdict in verdicts] or [False] * len(images)
        previews: list[bytes | None] = []
        start = 0
        for count in counts:
            own = slice(start, start + count)
            previews.append(None if any(flagged[own]) else encode_grid(images[own]))
            start += count
        return previews

    def _decode(self, latents: torch.Tensor) -> list[Image.Image]:
        # As a pipeline whose VAE is this tiny one would decode its latents.
        config = self._decoder.config
        scaled = latents / config.scaling_factor + (config.shift_factor or 0.0)
        pixels = self._decoder.decode(scaled.to(self._decoder.dtype)).sample
        pixels = (pixels.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
        return [Image.fromarray(array) for array in pixels.permute(0, 2, 3, 1).cpu().numpy()]


def encode_grid(images: Sequence[Image.Image]) -> bytes:
    """A JPEG of the images in a near-square grid (2x2 for four) no wider or taller than
    PREVIEW_SIDE, each image shrunk to its cell (never enlarged)."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell = PREVIEW_SIDE // max(columns, rows)
    thumbs = []
    for image in images:
        thumb = image.copy()
        thumb.thumbnail((cell, cell), Image.Resampling.BILINEAR)
        thumbs.append(thumb)
    width, height = max(t.width for t in thumbs), max(t.height for t in thumbs)
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, thumb in enumerate(thumbs):
        grid.paste(thumb, ((index % columns) * width, (index // columns) * height))
    buffer = BytesIO()
    grid.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()

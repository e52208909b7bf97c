"""How one batch of edits (zoom out, pan, vary region) goes through the inpainting pipeline: each
source placed on its canvas with its mask before the call, the repainted pixels pasted back over
the canvas after it, so nothing outside the mask changes (no VAE drift). Loading is in
`generation.engine.pipelines` (`inpaint_from`, `load_inpainter`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from generation import edit_geometry
from sdbot.types import Edit


@dataclass(frozen=True)
class Prepared:
    """One image's inputs: the canvas (the source placed), the mask the pipeline repaints, and the
    paste-back weights."""

    canvas: Image.Image
    mask: Image.Image
    alpha: np.ndarray

    def finish(self, repainted: Image.Image) -> Image.Image:
        return edit_geometry.paste_back(repainted, self.canvas, self.alpha)


def prepare(source: Image.Image, edit: Edit, width: int, height: int) -> Prepared:
    mask = edit_geometry.mask_of(edit, width, height)
    return Prepared(
        canvas=edit_geometry.canvas_of(source, edit, width, height),
        mask=edit_geometry.pipeline_mask(mask, edit.feather),
        alpha=edit_geometry.paste_alpha(mask, edit.feather),
    )

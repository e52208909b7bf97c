"""Where things sit in an edit (issue 12): the canvas of a zoom out or pan, the box of a vary
region, and the masks the inpainting pipeline and the paste-back use. Pure PIL and numpy.

Boxes are (x, y, width, height) in canvas pixels. The paste-back alpha is zero outside the mask, so
every pixel the edit keeps is copied from the canvas exactly (no VAE drift); the feather ramps up
inside the mask, so the seam blends into repainted pixels rather than into kept ones.
"""

from __future__ import annotations

import re
from enum import StrEnum
from io import BytesIO

import numpy as np
from PIL import Image, ImageFilter

from sdbot.types import Edit, EditOp

Box = tuple[int, int, int, int]
CANVAS_MULTIPLE = 8  # the VAE works on multiples of 8 pixels
ZOOM_FACTORS = {"2x": 2.0, "1.5x": 1.5}
# The feather is this share of the canvas's shorter side (16 px at 512, 2 px at 64).
FEATHER_SHARE = 1 / 32
# The colour hint under an outpainted border: the source stretched over the canvas, this blurred.
_HINT_BLUR_SHARE = 1 / 8
_PERCENT_BOX = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*$")


class Direction(StrEnum):
    LEFT = "left"
    RIGHT = "right"
    UP = "up"
    DOWN = "down"


# Named regions, as fractions of the image: (x, y, width, height).
NAMED_REGIONS: dict[str, tuple[float, float, float, float]] = {
    "left": (0.0, 0.0, 0.5, 1.0),
    "right": (0.5, 0.0, 0.5, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 0.5),
    "center": (0.25, 0.25, 0.5, 0.5),
}


class GeometryError(ValueError):
    """An edit that does not fit the picture; the message is fit to show the member."""


def feather_for(width: int, height: int) -> int:
    return max(1, round(min(width, height) * FEATHER_SHARE))


def zoom_out(width: int, height: int, factor: float, label: str = "") -> Edit:
    """The source shrunk by `factor` in the middle of a canvas of its own size."""
    if factor <= 1:
        raise GeometryError(f"zoom out needs a factor above 1 (got {factor:g})")
    inner_w, inner_h = round(width / factor), round(height / factor)
    place = ((width - inner_w) // 2, (height - inner_h) // 2, inner_w, inner_h)
    return Edit(op=EditOp.ZOOM_OUT, place=place, feather=feather_for(width, height), label=label or f"{factor:g}x")


def pan(width: int, height: int, direction: Direction, max_size: int) -> tuple[int, int, Edit]:
    """The canvas grown by half the picture towards `direction` (a multiple of 8, at most
    `max_size` a side), the source kept unscaled: (canvas width, canvas height, edit)."""
    horizontal = direction in (Direction.LEFT, Direction.RIGHT)
    side = width if horizontal else height
    grow = min(_round_to(side / 2), (max_size - side) // CANVAS_MULTIPLE * CANVAS_MULTIPLE)
    if grow < CANVAS_MULTIPLE:
        raise GeometryError(
            f"the picture is already {width}x{height}; panning {direction.value} would pass the largest side "
            f"allowed ({max_size} pixels)"
        )
    canvas_w, canvas_h = (width + grow, height) if horizontal else (width, height + grow)
    x = grow if direction is Direction.LEFT else 0
    y = grow if direction is Direction.UP else 0
    edit = Edit(
        op=EditOp.PAN, place=(x, y, width, height), feather=feather_for(canvas_w, canvas_h), label=direction.value
    )
    return canvas_w, canvas_h, edit


def region(width: int, height: int, text: str) -> Edit:
    """The picture kept as it is, the box `text` names repainted: one of NAMED_REGIONS or
    `x,y,w,h` in percent of the picture."""
    box = parse_region(text, width, height)
    return Edit(op=EditOp.REGION, place=(0, 0, width, height), mask=box, feather=feather_for(width, height),
                label=text.strip().lower())


def parse_region(text: str, width: int, height: int) -> Box:
    named = NAMED_REGIONS.get(text.strip().lower())
    if named is None:
        match = _PERCENT_BOX.match(text)
        if match is None:
            raise GeometryError(
                f"“{text.strip()}” is not a region: write one of {', '.join(NAMED_REGIONS)}, "
                "or x,y,w,h in percent of the picture (for example 25,25,50,50)"
            )
        x, y, w, h = (float(value) / 100 for value in match.groups())
        if x + w > 1.0 or y + h > 1.0:
            raise GeometryError(
                f"the region {text.strip()} reaches past the picture: x + w and y + h must be at most 100 (percent)"
            )
        named = (x, y, w, h)
    x, y, w, h = named
    box = (round(x * width), round(y * height), round(w * width), round(h * height))
    check_box(box, width, height, "region")
    return box


def mask_upload(width: int, height: int, data: bytes, picture: tuple[int, int]) -> Edit:
    """The picture kept as it is, the white of an uploaded black-and-white mask repainted. The mask
    must have the picture's size (`picture`, as uploaded); it is scaled to the width x height canvas
    and stored as a 1-bit PNG."""
    try:
        with Image.open(BytesIO(data)) as opened:
            size = opened.size
            mask = opened.convert("L")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise GeometryError("the mask could not be read as a picture; upload a black and white PNG") from None
    if size != picture:
        raise GeometryError(
            f"the mask is {size[0]}x{size[1]} but the picture is {picture[0]}x{picture[1]}; they must be the same size"
        )
    binary = mask.resize((width, height), Image.Resampling.NEAREST).point(lambda value: 255 if value >= 128 else 0)
    if binary.getbbox() is None:
        raise GeometryError("the mask is all black: paint white where the picture should be repainted")
    buffer = BytesIO()
    binary.convert("1").save(buffer, format="PNG", optimize=True)
    return Edit(op=EditOp.REGION, place=(0, 0, width, height), mask_image=buffer.getvalue(),
                feather=feather_for(width, height), label="mask")


def check_box(box: Box, width: int, height: int, what: str) -> None:
    x, y, w, h = box
    if w < 1 or h < 1:
        raise GeometryError(f"the {what} has no area ({w}x{h} pixels); make it larger")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise GeometryError(f"the {what} {box} reaches past the {width}x{height} picture")


def check_edit(edit: Edit, width: int, height: int) -> None:
    """The edit's boxes lie on its width x height canvas and something is left to repaint."""
    check_box(edit.place, width, height, "placed picture")
    if edit.mask is not None:
        check_box(edit.mask, width, height, "region")
    elif edit.mask_image is not None:
        if mask_of(edit, width, height).getbbox() is None:
            raise GeometryError("the mask is all black: paint white where the picture should be repainted")
    elif edit.place == (0, 0, width, height):
        raise GeometryError("this edit leaves nothing to repaint")


def mask_of(edit: Edit, width: int, height: int) -> Image.Image:
    """"L" image, 255 where the edit repaints."""
    if edit.mask_image is not None:
        with Image.open(BytesIO(edit.mask_image)) as opened:
            uploaded = opened.convert("L").resize((width, height), Image.Resampling.NEAREST)
        return uploaded.point(lambda value: 255 if value >= 128 else 0)
    mask = np.zeros((height, width), dtype=np.uint8)
    if edit.mask is None:
        mask[:] = 255
        x, y, w, h = edit.place
        mask[y : y + h, x : x + w] = 0
    else:
        x, y, w, h = edit.mask
        mask[y : y + h, x : x + w] = 255
    return Image.fromarray(mask, mode="L")


def canvas_of(source: Image.Image, edit: Edit, width: int, height: int) -> Image.Image:
    """The source resized into `place`; outside it a blurred stretch of the source, so the border
    to outpaint starts from the picture's colours."""
    source = source.convert("RGB")
    radius = max(1, round(min(width, height) * _HINT_BLUR_SHARE))
    canvas = source.resize((width, height), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(radius))
    x, y, w, h = edit.place
    placed = source if source.size == (w, h) else source.resize((w, h), Image.Resampling.LANCZOS)
    canvas.paste(placed, (x, y))
    return canvas


def pipeline_mask(mask: Image.Image, feather: int) -> Image.Image:
    """What the inpainting pipeline repaints: the mask grown by the feather, so the model paints a
    little past the seam and the paste-back blends over its own pixels."""
    return mask.filter(ImageFilter.MaxFilter(2 * feather + 1)) if feather else mask


def paste_alpha(mask: Image.Image, feather: int) -> np.ndarray:
    """Per-pixel weight of the repainted image, 0..1: exactly 0 outside the mask, ramping up to 1
    over `feather` pixels inside it."""
    hard = np.asarray(mask, dtype=np.float32) / 255.0
    if not feather:
        return hard
    eroded = mask.filter(ImageFilter.MinFilter(2 * feather + 1)).filter(ImageFilter.GaussianBlur(feather / 2))
    if eroded.getbbox() is None:  # a box thinner than two feathers: no ramp fits, a hard edge
        return hard
    return np.minimum(np.asarray(eroded, dtype=np.float32) / 255.0, hard)


def paste_back(repainted: Image.Image, canvas: Image.Image, alpha: np.ndarray) -> Image.Image:
    """The repainted image where the mask says, the canvas's own pixels everywhere else."""
    new = np.asarray(repainted.convert("RGB").resize(canvas.size), dtype=np.float32)
    old = np.asarray(canvas, dtype=np.float32)
    weight = alpha[..., None]
    mixed = new * weight + old * (1.0 - weight)
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), mode="RGB")


def _round_to(value: float) -> int:
    return max(CANVAS_MULTIPLE, round(value / CANVAS_MULTIPLE) * CANVAS_MULTIPLE)

"""Where an edit puts the source and what it repaints: canvases, regions, masks and paste-back."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from generation import edit_geometry as geometry
from generation.edit_geometry import Direction, GeometryError
from sdbot.types import EditOp


def test_zoom_out_centres_the_shrunk_picture_on_a_canvas_of_its_size() -> None:
    assert geometry.zoom_out(512, 512, 2.0).place == (128, 128, 256, 256)
    edit = geometry.zoom_out(512, 768, 1.5)
    assert edit.place == (85, 128, 341, 512) and edit.op is EditOp.ZOOM_OUT and edit.mask is None


@pytest.mark.parametrize(("direction", "canvas", "place"), [
    (Direction.RIGHT, (768, 512), (0, 0, 512, 512)),
    (Direction.LEFT, (768, 512), (256, 0, 512, 512)),
    (Direction.DOWN, (512, 768), (0, 0, 512, 512)),
    (Direction.UP, (512, 768), (0, 256, 512, 512)),
])
def test_pan_grows_by_half_the_picture_towards_the_direction(
    direction: Direction, canvas: tuple[int, int], place: tuple[int, int, int, int]
) -> None:
    width, height, edit = geometry.pan(512, 512, direction, max_size=1024)
    assert (width, height) == canvas and edit.place == place


def test_pan_rounds_to_multiples_of_8_and_stops_at_the_size_cap() -> None:
    assert geometry.pan(216, 64, Direction.RIGHT, max_size=1024)[:2] == (328, 64)  # 108 rounds to 112
    assert geometry.pan(960, 512, Direction.LEFT, max_size=1024)[:2] == (1024, 512)  # capped, not refused
    with pytest.raises(GeometryError, match="largest side allowed"):
        geometry.pan(1024, 512, Direction.RIGHT, max_size=1024)


def test_regions_by_name_and_in_percent() -> None:
    assert geometry.parse_region("center", 512, 256) == (128, 64, 256, 128)
    assert geometry.parse_region(" Left ", 512, 256) == (0, 0, 256, 256)
    assert geometry.parse_region("10, 20, 30, 40", 100, 200) == (10, 40, 30, 80)
    for text, says in (("sky", "is not a region"), ("80,0,30,10", "reaches past"), ("0,0,0.1,50", "no area")):
        with pytest.raises(GeometryError, match=says):
            geometry.parse_region(text, 64, 64)


def test_check_edit_refuses_boxes_off_the_canvas_and_edits_with_nothing_to_repaint() -> None:
    edit = geometry.region(64, 64, "center")
    geometry.check_edit(edit, 64, 64)
    with pytest.raises(GeometryError, match="reaches past"):
        geometry.check_edit(edit, 32, 32)
    with pytest.raises(GeometryError, match="nothing to repaint"):
        geometry.check_edit(edit.model_copy(update={"mask": None}), 64, 64)


def test_paste_back_keeps_every_pixel_outside_the_mask_and_feathers_inside() -> None:
    edit = geometry.region(64, 64, "center")
    mask = geometry.mask_of(edit, 64, 64)
    alpha = geometry.paste_alpha(mask, edit.feather)
    hard = np.asarray(mask) > 0
    assert (alpha[~hard] == 0).all()
    assert alpha[32, 32] == pytest.approx(1.0, abs=0.01) and 0 < alpha[16, 32] < 0.5  # the ramp at the edge
    canvas = Image.new("RGB", (64, 64), (10, 200, 30))
    mixed = np.asarray(geometry.paste_back(Image.new("RGB", (64, 64), (250, 0, 0)), canvas, alpha))
    assert (mixed[~hard] == (10, 200, 30)).all() and tuple(mixed[32, 32]) == (250, 0, 0)
    assert np.asarray(geometry.pipeline_mask(mask, edit.feather)).astype(bool).sum() > hard.sum()


def test_the_outpaint_canvas_holds_the_picture_and_a_hint_of_its_colours() -> None:
    source = Image.new("RGB", (64, 64), (0, 0, 255))
    width, height, edit = geometry.pan(64, 64, Direction.LEFT, max_size=256)
    canvas = np.asarray(geometry.canvas_of(source, edit, width, height))
    assert canvas.shape == (64, 96, 3) and (canvas[:, 32:] == (0, 0, 255)).all()
    assert canvas[:, :32, 2].mean() > 200  # the border starts blue, not grey
    assert (np.asarray(geometry.mask_of(edit, width, height))[:, :32] == 255).all()


def _png(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_uploaded_mask_is_scaled_to_the_canvas_and_kept_as_one_bit() -> None:
    painted = Image.new("L", (100, 50), 0)
    painted.paste(255, (50, 0, 100, 50))  # the right half
    edit = geometry.mask_upload(64, 32, _png(painted), (100, 50))
    mask = np.asarray(geometry.mask_of(edit, 64, 32))
    assert (mask[:, 32:] == 255).all() and (mask[:, :32] == 0).all()
    assert edit.mask_image is not None and Image.open(BytesIO(edit.mask_image)).mode == "1"
    geometry.check_edit(edit, 64, 32)
    for data, picture, says in (
        (_png(painted), (64, 64), "the mask is 100x50 but the picture is 64x64"),
        (_png(Image.new("L", (100, 50), 0)), (100, 50), "all black"),
        (b"%PDF-1.4", (100, 50), "could not be read"),
    ):
        with pytest.raises(GeometryError, match=says):
            geometry.mask_upload(64, 32, data, picture)

"""Uploaded pictures: verified from their bytes, bounded in pixels, stored as PNG."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from bot.attachments import normalise_upload
from bot.errors import UserError


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_accepted_formats_are_stored_as_rgb_png(tmp_path: Path, fmt: str) -> None:
    path, width, height = normalise_upload(encoded(Image.new("RGB", (40, 30), "red"), fmt), "x", 10_000, tmp_path)
    assert (width, height) == (40, 30)
    with Image.open(path) as stored:
        assert (stored.format, stored.mode, stored.size) == ("PNG", "RGB", (40, 30))


def test_transparent_pictures_become_rgb(tmp_path: Path) -> None:
    path, *_ = normalise_upload(encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"), "x.png", 100, tmp_path)
    assert Image.open(path).mode == "RGB"


def test_too_many_pixels_are_refused_with_the_limit(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"`big.png` is 200×100 pixels; the limit is 10,000 pixels"):
        normalise_upload(encoded(Image.new("RGB", (200, 100)), "PNG"), "big.png", 10_000, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing stored


@pytest.mark.parametrize("data", [b"", b"hello", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_unreadable_bytes_are_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(UserError, match="could not be read as a picture"):
        normalise_upload(data, "x.png", 10_000, tmp_path)


def test_other_image_formats_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a TIFF file; upload a PNG, JPEG or WebP image"):
        normalise_upload(encoded(Image.new("RGB", (8, 8)), "TIFF"), "x.tif", 10_000, tmp_path)

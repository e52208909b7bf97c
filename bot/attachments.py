"""Pictures members upload for /variations and /upscale: checked, normalised and kept on disk."""

from __future__ import annotations

import asyncio
import io
import uuid
from dataclasses import dataclass
from pathlib import Path

import discord
from PIL import Image, UnidentifiedImageError

from bot.errors import UserError
from generation.requests import SOURCE_FORMATS

MAX_DOWNLOAD_BYTES = 25 * 1024 * 1024
ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}
# The file name endings of those formats (".png", ".jpg", ".jpeg"...), as Pillow registers them.
ACCEPTED_SUFFIXES = tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in ACCEPTED_FORMATS))


async def save_upload(
    attachment: discord.Attachment, *, max_pixels: int, folder: Path
) -> tuple[Path, int, int]:
    """Download, verify and store an uploaded picture as PNG; return its path and size.

    The pixel count is checked from the header before decoding, so a decompression bomb (a tiny
    file that expands to gigapixels) is refused without being unpacked.
    """
    data = await download_upload(attachment)
    return await asyncio.to_thread(normalise_upload, data, attachment.filename, max_pixels, folder)


async def download_upload(attachment: discord.Attachment) -> bytes:
    """The bytes of an uploaded picture, refused by its announced type and size before downloading."""
    if attachment.content_type is not None and not attachment.content_type.startswith("image/"):
        raise UserError(
            f"`{attachment.filename}` is not a picture ({attachment.content_type}); "
            "upload a PNG, JPEG or WebP image."
        )
    if attachment.size > MAX_DOWNLOAD_BYTES:
        raise UserError(
            f"`{attachment.filename}` is {attachment.size / 2**20:.1f} MiB; "
            f"pictures up to {MAX_DOWNLOAD_BYTES // 2**20} MiB are accepted."
        )
    try:
        return await attachment.read()
    except discord.HTTPException as error:
        raise UserError(f"Could not download `{attachment.filename}` ({error.status}); try again.") from error


@dataclass(frozen=True)
class CheckedUpload:
    """An accepted picture: its first frame, and whether it had more."""

    format: str
    first_frame: Image.Image
    animated: bool


def check_upload(data: bytes, filename: str, max_pixels: int) -> CheckedUpload:
    """Verify the bytes are one accepted picture within the pixel limit, and decode its first frame."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ACCEPTED_FORMATS:
                raise UserError(f"`{filename}` is a {image.format} file; upload a PNG, JPEG or WebP image.")
            width, height = image.size
            if width * height > max_pixels:
                raise UserError(
                    f"`{filename}` is {width}×{height} pixels; the limit is {max_pixels:,} pixels. "
                    "Scale it down and try again."
                )
            image.load()
            return CheckedUpload(image.format, image.convert("RGB"), bool(getattr(image, "is_animated", False)))
    except Image.DecompressionBombError as error:
        raise UserError(
            f"`{filename}` has far more pixels than the limit of {max_pixels:,}; scale it down and try again."
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise UserError(f"`{filename}` could not be read as a picture; upload a PNG, JPEG or WebP image.") from error


def normalise_upload(data: bytes, filename: str, max_pixels: int, folder: Path) -> tuple[Path, int, int]:
    """Verify the bytes are one accepted picture within the pixel limit and store it as PNG."""
    picture = check_upload(data, filename, max_pixels).first_frame
    path = new_upload_path(folder, "png")
    picture.save(path, format="PNG")
    return path, picture.width, picture.height


def keep_upload(data: bytes, filename: str, max_pixels: int, folder: Path) -> tuple[Path, CheckedUpload]:
    """Verify and store an upload as it came when the engine reads its format (PNG, JPEG, WebP),
    so its metadata stays readable; other formats are stored as a PNG of their first frame."""
    checked = check_upload(data, filename, max_pixels)
    if checked.format in SOURCE_FORMATS:
        path = new_upload_path(folder, checked.format.lower())
        path.write_bytes(data)
    else:
        path = new_upload_path(folder, "png")
        checked.first_frame.save(path, format="PNG")
    return path, checked


def new_upload_path(folder: Path, extension: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{uuid.uuid4().hex}.{extension}"

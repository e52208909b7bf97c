"""Pictures members upload for /variations and /upscale: checked, normalised and kept on disk."""

from __future__ import annotations

import asyncio
import io
import uuid
from pathlib import Path

import discord
from PIL import Image, UnidentifiedImageError

from bot.errors import UserError

MAX_DOWNLOAD_BYTES = 25 * 1024 * 1024
ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}


async def save_upload(
    attachment: discord.Attachment, *, max_pixels: int, folder: Path
) -> tuple[Path, int, int]:
    """Download, verify and store an uploaded picture as PNG; return its path and size.

    The pixel count is checked from the header before decoding, so a decompression bomb (a tiny
    file that expands to gigapixels) is refused without being unpacked.
    """
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
        data = await attachment.read()
    except discord.HTTPException as error:
        raise UserError(f"Could not download `{attachment.filename}` ({error.status}); try again.") from error
    return await asyncio.to_thread(normalise_upload, data, attachment.filename, max_pixels, folder)


def normalise_upload(data: bytes, filename: str, max_pixels: int, folder: Path) -> tuple[Path, int, int]:
    """Verify the bytes are one accepted picture within the pixel limit and store it as PNG."""
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
            picture = image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise UserError(
            f"`{filename}` has far more pixels than the limit of {max_pixels:,}; scale it down and try again."
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise UserError(f"`{filename}` could not be read as a picture; upload a PNG, JPEG or WebP image.") from error
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.png"
    picture.save(path, format="PNG")
    return path, picture.width, picture.height

"""The image files the engine hands out, with the generation record inside them.

A PNG carries the record twice: an AUTOMATIC1111-style `parameters` text chunk, which PNG-info
tools (A1111, ComfyUI, Civitai, exiftool) show as prompt, seed and settings, and an `sdbot` chunk
with the full record as JSON. When a PNG is over the caller's upload limit, `encode_for_upload`
falls back to lossless WebP, then lossy WebP/JPEG; those carry the `parameters` text as an EXIF
UserComment (where A1111 puts it), but not the JSON record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from PIL import ExifTags, Image, PngImagePlugin
from pydantic import ValidationError

from sdbot.types import GenerationRecord

PARAMETERS_KEY = "parameters"
RECORD_KEY = "sdbot"

_NEGATIVE_PREFIX = "Negative prompt:"
# One `Key: value` pair of the settings line; values with commas or colons are JSON-quoted.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_INT_KEYS = frozenset({"steps", "seed"})
# The sampler names A1111 readers expect, by diffusers scheduler class (the JSON keeps the class).
_A1111_SAMPLERS = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DPMSolverSinglestepScheduler": "DPM++ SDE",
    "KDPM2DiscreteScheduler": "DPM2",
    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "HeunDiscreteScheduler": "Heun",
    "LMSDiscreteScheduler": "LMS",
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
    "DDPMScheduler": "DDPM",
    "FlowMatchEulerDiscreteScheduler": "Euler",  # FLUX and SD3: Forge and ComfyUI call it Euler too
}
_FLOAT_KEYS = frozenset({"cfg_scale", "denoising_strength"})


def a1111_sampler(scheduler: str, config: Mapping[str, Any]) -> str:
    """`Euler a`, `DPM++ 2M Karras`...: the A1111 name of a diffusers scheduler and its config
    (an unknown class keeps its own name)."""
    name = _A1111_SAMPLERS.get(scheduler, scheduler)
    if scheduler == "DPMSolverMultistepScheduler" and config.get("algorithm_type") == "sde-dpmsolver++":
        name += " SDE"
    if config.get("use_karras_sigmas"):
        name += " Karras"
    return name


def sampler_of(record: GenerationRecord) -> str:
    """The record's sampler as A1111 names it (the engine stores the name with the scheduler's
    config when it knows it)."""
    return record.extra.get("sampler") or a1111_sampler(record.scheduler, {})


def model_name_of(record: GenerationRecord) -> str:
    """The catalogue name the job ran on, as A1111 names a checkpoint; the model id without one."""
    return str(record.extra.get("model", record.model_id))


def format_parameters(record: GenerationRecord) -> str:
    """The A1111 text: prompt, `Negative prompt: ...` line, then one line of settings."""
    settings = {
        "Steps": record.steps,
        "Sampler": sampler_of(record),
        "CFG scale": record.guidance,
        "Seed": record.seed,
        "Size": f"{record.width}x{record.height}",
        "Model": model_name_of(record),
        "Model hash": record.model_revision[:10],
    }
    if loras := record.extra.get("loras"):
        settings["Lora hashes"] = ", ".join(f"{lora['name']}: {lora['revision'][:12]}" for lora in loras)
    if record.strength is not None:
        settings["Denoising strength"] = record.strength
    if "upscaler" in record.extra:
        settings["Upscaler"] = record.extra["upscaler"]
    if record.extra.get("tile"):
        settings["Tiling"] = "True"  # A1111's own key
    lines = [record.prompt]
    if record.negative_prompt:
        lines.append(f"{_NEGATIVE_PREFIX} {record.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(str(value))}" for key, value in settings.items()))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict[str, Any]:
    """Read A1111 `parameters` text back: `prompt`, `negative_prompt` and each setting under a
    snake_case key (`steps`, `sampler`, `cfg_scale`, `seed`, `size`, `model`, `model_hash`...);
    numbers come back as int/float and `size` is also split into `width` and `height`."""
    lines = text.strip().split("\n")
    settings_line = ""
    if len(_PARAM.findall(lines[-1])) >= 3:  # the last line is settings only if it looks like them
        settings_line = lines.pop()
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if line.startswith(_NEGATIVE_PREFIX) and not negative:
            negative.append(line.removeprefix(_NEGATIVE_PREFIX).strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    result: dict[str, Any] = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    for key, raw in _PARAM.findall(settings_line):
        name = key.strip().lower().replace(" ", "_")
        value = json.loads(raw) if raw.startswith('"') else raw.strip()
        result[name] = _typed(name, value)
    width, _, height = str(result.get("size", "")).partition("x")
    if width.isdigit() and height.isdigit():
        result["width"], result["height"] = int(width), int(height)
    return result


def encode_png(image: Image.Image, record: GenerationRecord) -> bytes:
    info = PngImagePlugin.PngInfo()
    # add_text writes tEXt, or iTXt when the text is not Latin-1 (emoji, CJK prompts).
    info.add_text(PARAMETERS_KEY, format_parameters(record))
    info.add_text(RECORD_KEY, record.model_dump_json(), zip=True)
    buffer = BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def read_record(png_bytes: bytes) -> GenerationRecord | None:
    """The `sdbot` record of a PNG, or None for other files and PNGs without (or with a broken) one."""
    try:
        with Image.open(BytesIO(png_bytes)) as image:
            text = getattr(image, "text", {}).get(RECORD_KEY)  # only PNGs have .text
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if text is None:
        return None
    try:
        return GenerationRecord.model_validate_json(text)
    except ValidationError:
        return None


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    format: str  # file extension: png, webp or jpeg
    description: str  # for warnings: "PNG", "lossless WebP", "JPEG quality 90"...


# Tried in order when the PNG is too big: lossless first, then high-quality lossy.
_FALLBACKS: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("webp", {"lossless": True, "quality": 100, "method": 4}, "lossless WebP"),
    ("webp", {"quality": 90}, "WebP quality 90"),
    ("jpeg", {"quality": 90}, "JPEG quality 90"),
    ("webp", {"quality": 75}, "WebP quality 75"),
    ("jpeg", {"quality": 75}, "JPEG quality 75"),
)


def encode_for_upload(image: Image.Image, record: GenerationRecord, max_bytes: int | None) -> EncodedImage:
    """The PNG if it fits `max_bytes`, else the first fallback that fits, else the most compressed
    attempt (the caller checks `len(data)` and says it is still too big)."""
    encoded = EncodedImage(encode_png(image, record), "png", "PNG")
    if max_bytes is None or len(encoded.data) <= max_bytes:
        return encoded
    exif = _parameters_exif(record)
    for file_format, options, description in _FALLBACKS:
        buffer = BytesIO()
        image.save(buffer, file_format.upper(), exif=exif, **options)
        encoded = EncodedImage(buffer.getvalue(), file_format, description)
        if len(encoded.data) <= max_bytes:
            break
    return encoded


def _parameters_exif(record: GenerationRecord) -> Image.Exif:
    exif = Image.Exif()
    # EXIF UserComment: an 8-byte charset marker, then the text (UTF-16BE, as piexif/A1111 write it).
    comment = b"UNICODE\0" + format_parameters(record).encode("utf-16-be")
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = comment
    return exif


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n') else value


def _typed(name: str, value: str) -> Any:
    try:
        if name in _INT_KEYS:
            return int(value)
        if name in _FLOAT_KEYS:
            return float(value)
    except ValueError:
        pass
    return value

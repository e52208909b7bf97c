"""PNG info: the generation parameters an uploaded picture carries, for /describe.

sdbot's own JSON record is read first (exact values); otherwise `sd-parsers` reads AUTOMATIC1111
`parameters`, ComfyUI, NovelAI, InvokeAI and Fooocus metadata. What comes out is untrusted text:
the bot shows it as data, never as markup.
"""

from __future__ import annotations

import logging
from io import BytesIO
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict
from sd_parsers import ParserManager

from generation.engine.png_metadata import model_name_of, read_record, sampler_of

log = logging.getLogger(__name__)

_PARSERS = ParserManager()


class MadeWith(BaseModel):
    """How a picture says it was made. Any field may be missing."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    generator: str
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None


def read_made_with(data: bytes) -> MadeWith | None:
    """The parameters in the picture's metadata, or None when it carries none (or not readably)."""
    record = read_record(data)
    if record is not None:
        return MadeWith(
            generator="sdbot", prompt=record.prompt, negative_prompt=record.negative_prompt, seed=record.seed,
            steps=record.steps, guidance=record.guidance, sampler=sampler_of(record), width=record.width,
            height=record.height, model=model_name_of(record),
        )
    try:
        with Image.open(BytesIO(data)) as image:
            info = _PARSERS.parse(image)
    except Exception:  # noqa: BLE001 - a third-party parser on uploaded bytes: no metadata, not a failure
        log.debug("sd-parsers could not read an upload's metadata", exc_info=True)
        return None
    if info is None or not info.samplers:
        return None
    sampler = info.samplers[0]
    # Generators file a setting under the sampler or the image (NovelAI's steps): look in both.
    parameters: dict[str, Any] = {**info.metadata, **sampler.parameters}
    width, height = _size(parameters)
    return MadeWith(
        generator=str(info.generator.value),
        prompt=info.full_prompt,
        negative_prompt=info.full_negative_prompt,
        seed=_number(parameters.get("seed"), int),
        steps=_number(parameters.get("steps"), int),
        guidance=_number(parameters.get("cfg_scale", parameters.get("cfg")), float),
        sampler=sampler.name or None,
        width=width,
        height=height,
        model=sampler.model.name if sampler.model is not None and sampler.model.name else None,
    )


def _number(value: object, kind: type[int] | type[float]) -> Any:
    try:
        return None if value is None else kind(float(str(value)) if kind is int else str(value))
    except ValueError:
        return None


def _size(parameters: dict[str, Any]) -> tuple[int | None, int | None]:
    """`Size: 512x768` (A1111) or separate width and height entries (ComfyUI, NovelAI)."""
    size = str(parameters.get("Size") or parameters.get("size") or "")
    width, _, height = size.partition("x")
    if width.strip().isdigit() and height.strip().isdigit():
        return int(width), int(height)
    return _number(parameters.get("width"), int), _number(parameters.get("height"), int)

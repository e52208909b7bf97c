"""The one place that turns what a member or operator typed into `GenerationParams` and validates
them, before anything slow happens (a Discord acknowledgement, a model load).

Slash commands, buttons and `sdbot imagine` all build their parameters here and call `validate`:
text is normalised first (so invisible characters count as empty), then every limit is checked and
a refusal is an `InvalidRequest` whose message is fit to show the member. Pure Python and Pillow.
"""

from __future__ import annotations

import math
import re
import secrets
import unicodedata
from io import BytesIO

from PIL import Image
from pydantic import BaseModel, ConfigDict

from generation.errors import InvalidRequest
from generation.prompt_check import check_prompt
from sdbot.settings import Settings
from sdbot.types import MAX_SEED, GenerationParams, ImageRow, JobRow, PipelineKind

ASPECTS = {"1:1": (1, 1), "2:3": (2, 3), "3:2": (3, 2), "16:9": (16, 9), "9:16": (9, 16)}
MAX_GUIDANCE = 30.0  # the same bound as SDBOT_DEFAULT_GUIDANCE
MIN_STRENGTH, MAX_STRENGTH = 0.1, 1.0
DEFAULT_STRENGTH = 0.6
UPSCALE_STEPS = 20  # what the x2 latent upscaler is tuned for
SIZE_MULTIPLE = 64
RANDOM_SEED = -1  # the seed that asks for a random one, as in AUTOMATIC1111
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP")
_SPACES = re.compile(r"\s+")


class RequestLimits(BaseModel):
    """The operator's limits and defaults, as the request checks need them."""

    model_config = ConfigDict(frozen=True)

    min_size: int = 64
    max_size: int = 1024
    max_steps: int = 50
    max_count: int = 4
    max_prompt_chars: int = 1000
    max_upload_pixels: int = 4096 * 4096
    blocked_words: tuple[str, ...] = ()
    default_steps: int = 4
    default_guidance: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(**settings.model_dump(include=set(cls.model_fields)))


def normalise_text(text: str) -> str:
    """NFKC, control and format characters (zero-width spaces, joiners, BOMs) dropped, whitespace
    collapsed: what a prompt means, without what a paste smuggled in."""
    folded = unicodedata.normalize("NFKC", text)
    visible = "".join(
        " " if char.isspace() else char
        for char in folded
        if char.isspace() or unicodedata.category(char) not in {"Cc", "Cf"}
    )
    return _SPACES.sub(" ", visible).strip()


def chosen_seed(seed: int | None) -> int | None:
    """The seed a member or operator asked for, or None for random: -1 (and no seed) mean random,
    as in AUTOMATIC1111. Anything else outside 0..4294967295 is refused, never wrapped."""
    if seed is None or seed == RANDOM_SEED:
        return None
    if not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"seed must be between 0 and {MAX_SEED}, or -1 for a random one (got {seed})")
    return seed


def seeds(count: int, first: int | None = None) -> tuple[int, ...]:
    """`first`, `first + 1`, ... (so one seed names a whole job, wrapping past 4294967295 to 0),
    or independent random seeds (`first` None or -1)."""
    first = chosen_seed(first)
    if first is None:
        return tuple(secrets.randbelow(MAX_SEED + 1) for _ in range(count))
    return tuple((first + offset) % (MAX_SEED + 1) for offset in range(count))


def fit(area: float, ratio: float, limits: RequestLimits) -> tuple[int, int]:
    """Width and height of about `area` pixels at `ratio`, in multiples of 64, within the limits."""
    width, height = math.sqrt(area * ratio), math.sqrt(area / ratio)

    def snap(side: float) -> int:
        snapped = max(SIZE_MULTIPLE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE)
        return min(max(snapped, limits.min_size), limits.max_size)

    return snap(width), snap(height)


def size_for(aspect: str, native_size: int, limits: RequestLimits) -> tuple[int, int]:
    """The size of an `aspect` image with about the model's native pixel count."""
    if aspect not in ASPECTS:
        raise InvalidRequest(f"`{aspect}` is not an aspect ratio I know; choose one of {', '.join(ASPECTS)}")
    ratio_w, ratio_h = ASPECTS[aspect]
    return fit(native_size * native_size, ratio_w / ratio_h, limits)


# Builders: one per kind of job, shared by the slash commands, the buttons and the CLI.


def imagine(
    limits: RequestLimits,
    *,
    prompt: str,
    negative: str = "",
    seed: int | None = None,
    count: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    width: int,
    height: int,
) -> GenerationParams:
    return GenerationParams(
        pipeline=PipelineKind.TEXT2IMG,
        prompt=normalise_text(prompt),
        negative_prompt=normalise_text(negative),
        seeds=seeds(count or limits.max_count, seed),
        steps=limits.default_steps if steps is None else steps,
        guidance=limits.default_guidance if guidance is None else guidance,
        width=width,
        height=height,
    )


def variation(
    limits: RequestLimits,
    *,
    prompt: str,
    negative: str,
    width: int,
    height: int,
    steps: int | None = None,
    guidance: float | None = None,
    strength: float | None = None,
    count: int | None = None,
) -> GenerationParams:
    return GenerationParams(
        pipeline=PipelineKind.IMG2IMG,
        prompt=normalise_text(prompt),
        negative_prompt=normalise_text(negative),
        seeds=seeds(count or limits.max_count),
        steps=limits.default_steps if steps is None else steps,
        guidance=limits.default_guidance if guidance is None else guidance,
        width=width,
        height=height,
        strength=DEFAULT_STRENGTH if strength is None else strength,
    )


def variation_of(
    limits: RequestLimits,
    job: JobRow,
    image: ImageRow,
    *,
    prompt: str | None = None,
    strength: float | None = None,
    count: int | None = None,
) -> GenerationParams:
    """Variations of a posted image: its job's prompt, steps and guidance unless changed."""
    return variation(
        limits,
        prompt=job.prompt if prompt is None else prompt,
        negative=job.negative_prompt,
        width=image.width,
        height=image.height,
        steps=job.steps,
        guidance=job.guidance,
        strength=strength,
        count=count,
    )


def variation_of_upload(
    limits: RequestLimits, native_size: int, width: int, height: int, *, prompt: str,
    strength: float | None = None, count: int | None = None,
) -> GenerationParams:
    """Variations of an uploaded picture, made at the model's native pixel count in its shape."""
    target_w, target_h = fit(native_size * native_size, width / height, limits)
    return variation(limits, prompt=prompt, negative="", width=target_w, height=target_h,
                     strength=strength, count=count)


def upscale(width: int, height: int, *, prompt: str = "", negative: str = "") -> GenerationParams:
    """x2 of a `width` x `height` picture; sizes go down to a multiple of 64 (the engine resizes the
    source and says so), as the upscaler's UNet needs."""
    return GenerationParams(
        pipeline=PipelineKind.UPSCALE,
        prompt=normalise_text(prompt),
        negative_prompt=normalise_text(negative),
        seeds=seeds(1),
        steps=UPSCALE_STEPS,
        guidance=0.0,
        width=max(SIZE_MULTIPLE, width // SIZE_MULTIPLE * SIZE_MULTIPLE),
        height=max(SIZE_MULTIPLE, height // SIZE_MULTIPLE * SIZE_MULTIPLE),
    )


def upscale_of(job: JobRow, image: ImageRow) -> GenerationParams:
    return upscale(image.width, image.height, prompt=job.prompt, negative=job.negative_prompt)


def reroll(job: JobRow, seed: int | None = None) -> GenerationParams:
    """The job's parameters again: new seeds, or with `seed` the one image that seed made."""
    seed = chosen_seed(seed)
    return job.params().model_copy(update={"seeds": (seed,) if seed is not None else seeds(job.image_count)})


# Validation


def validate(params: GenerationParams, limits: RequestLimits) -> None:
    """Raise InvalidRequest (or BlockedPrompt) with a message fit for the member; runs nothing."""
    if params.width % 8 or params.height % 8:
        raise InvalidRequest(f"width and height must be multiples of 8 (got {params.width}x{params.height})")
    if not (
        limits.min_size <= params.width <= limits.max_size and limits.min_size <= params.height <= limits.max_size
    ):
        raise InvalidRequest(
            f"width and height must be between {limits.min_size} and {limits.max_size} pixels "
            f"(got {params.width}x{params.height})"
        )
    if not 1 <= params.steps <= limits.max_steps:
        raise InvalidRequest(f"steps must be between 1 and {limits.max_steps} (got {params.steps})")
    if not 0.0 <= params.guidance <= MAX_GUIDANCE:
        raise InvalidRequest(f"guidance must be between 0 and {MAX_GUIDANCE:g} (got {params.guidance:g})")
    if len(params.seeds) > limits.max_count:
        raise InvalidRequest(f"at most {limits.max_count} images per request (got {len(params.seeds)})")
    for seed in params.seeds:
        if not 0 <= seed <= MAX_SEED:
            raise InvalidRequest(f"seed must be between 0 and {MAX_SEED} (got {seed})")
    if params.pipeline is PipelineKind.IMG2IMG and not (
        params.strength is not None and MIN_STRENGTH <= params.strength <= MAX_STRENGTH
    ):
        raise InvalidRequest(
            f"strength must be between {MIN_STRENGTH} and {MAX_STRENGTH} for a variation (got {params.strength})"
        )
    if params.pipeline is PipelineKind.TEXT2IMG and not normalise_text(params.prompt):
        raise InvalidRequest("the prompt is empty: describe the image you want")
    for label, text in (("prompt", params.prompt), ("negative prompt", params.negative_prompt)):
        if len(text) > limits.max_prompt_chars:
            raise InvalidRequest(f"the {label} is {len(text)} characters long; the limit is {limits.max_prompt_chars}")
    check_prompt(params.prompt, limits.blocked_words)
    if params.pipeline is PipelineKind.UPSCALE and (params.width % 64 or params.height % 64):
        # The upscaler's UNet halves its latents three times: odd latent sizes do not fit.
        raise InvalidRequest(f"an upscale works on sizes in multiples of 64 pixels (got {params.width}x{params.height})")
    if params.source_image is not None:
        check_source(params, params.source_image, limits)


def check_source(params: GenerationParams, data: bytes, limits: RequestLimits) -> None:
    """Refuse a source picture that cannot be read or is too big, from its header alone (a
    decompression bomb is never unpacked)."""
    try:
        with Image.open(BytesIO(data), formats=SOURCE_FORMATS) as opened:
            width, height = opened.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InvalidRequest("the source image could not be read as a PNG, JPEG or WebP file") from None
    if width * height > limits.max_upload_pixels:
        raise InvalidRequest(
            f"the source image is {width}x{height}; images over {limits.max_upload_pixels:,} pixels are refused"
        )
    limit = limits.max_size
    if params.pipeline is PipelineKind.UPSCALE and max(width, height) > limit:
        raise InvalidRequest(
            f"the source image is {width}x{height}; only images up to {limit}x{limit} can be "
            f"upscaled (to at most {2 * limit}x{2 * limit})"
        )


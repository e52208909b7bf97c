"""The one place that turns what a member or operator typed into `GenerationParams` and validates
them, before anything slow happens (a Discord acknowledgement, a model load).

Slash commands, buttons and `sdbot imagine` all build their parameters here and call `validate`:
text is normalised first (so invisible characters count as empty), then every limit is checked and
a refusal is an `InvalidRequest` whose message is fit to show the member. Pure Python and Pillow.

`imagine` also reads the prompt language (`generation.prompt_syntax`): Midjourney flags typed in
the prompt (`--ar 16:9 --no text --seed 5 --tile --repeat 2`), `{a, b}` permutations and styles;
one request can become several jobs. A1111 weights are checked here and applied by the engine.
"""

from __future__ import annotations

import math
import re
import secrets
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO

from PIL import Image
from pydantic import BaseModel, ConfigDict

from generation.errors import InvalidRequest
from generation.prompt_check import check_prompt
from generation.prompt_syntax import (
    PromptSyntaxError,
    expand_permutations,
    parse_inline_parameters,
    parse_weights,
)
from generation.styles import Style, apply_styles
from sdbot.settings import Settings
from sdbot.types import MAX_SEED, GenerationParams, ImageRow, JobRow, PipelineKind

ASPECTS = {"1:1": (1, 1), "2:3": (2, 3), "3:2": (3, 2), "16:9": (16, 9), "9:16": (9, 16)}
MAX_GUIDANCE = 30.0  # the same bound as SDBOT_DEFAULT_GUIDANCE
MIN_STRENGTH, MAX_STRENGTH = 0.1, 1.0
DEFAULT_STRENGTH = 0.6
UPSCALE_STEPS = 20  # what the x2 latent upscaler is tuned for
SIZE_MULTIPLE = 64
RANDOM_SEED = -1  # the seed that asks for a random one, as in AUTOMATIC1111
MAX_STYLES = 3
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP")
_SPACES = re.compile(r"\s+")
# A1111's LoRA tag, `<lora:name:0.8>`; no LoRA catalogue exists yet (issue 13), so each is refused.
_LORA_TAG = re.compile(r"<lora:([^:>]*)[^>]*>", re.IGNORECASE)


class RequestLimits(BaseModel):
    """The operator's limits and defaults, as the request checks need them."""

    model_config = ConfigDict(frozen=True)

    min_size: int = 64
    max_size: int = 1024
    max_steps: int = 50
    max_count: int = 4
    max_prompt_chars: int = 1000
    max_prompt_tokens: int = 450
    max_expansion: int = 4
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


def _snap(side: float) -> int:
    return max(SIZE_MULTIPLE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def fit(area: float, ratio: float, limits: RequestLimits) -> tuple[int, int]:
    """Width and height of about `area` pixels at `ratio`, in multiples of 64, within the limits."""
    width, height = math.sqrt(area * ratio), math.sqrt(area / ratio)

    def clamp(side: float) -> int:
        return min(max(_snap(side), limits.min_size), limits.max_size)

    return clamp(width), clamp(height)


def inline_aspect_size(ratio: tuple[int, int], native_size: int, limits: RequestLimits) -> tuple[int, int]:
    """The size for `--ar W:H`: about the model's native pixel count, in multiples of 64, the short
    side at least SDBOT_MIN_SIZE (so a small model still gets a wider image). A shape whose long side
    would pass SDBOT_MAX_SIZE is refused rather than squashed into another shape."""
    width, height = ratio
    stretch = max(width, height) / min(width, height)
    short = max(math.sqrt(native_size * native_size / stretch), limits.min_size)
    short_px, long_px = _snap(short), _snap(short * stretch)
    if long_px > limits.max_size:
        raise InvalidRequest(
            f"--ar {width}:{height} would need {long_px}x{short_px} pixels; the longest side allowed is "
            f"{limits.max_size}, so choose a less stretched shape"
        )
    return (long_px, short_px) if width >= height else (short_px, long_px)


def size_for(aspect: str, native_size: int, limits: RequestLimits) -> tuple[int, int]:
    """The size of an `aspect` image with about the model's native pixel count."""
    if aspect not in ASPECTS:
        raise InvalidRequest(f"`{aspect}` is not an aspect ratio I know; choose one of {', '.join(ASPECTS)}")
    ratio_w, ratio_h = ASPECTS[aspect]
    return fit(native_size * native_size, ratio_w / ratio_h, limits)


# Builders: one per kind of job, shared by the slash commands, the buttons and the CLI.


class Imagined(BaseModel):
    """What one /imagine asks for: a job per `{a, b}` combination and `--repeat`, each charged,
    and notes for the reply (an option that won over a flag typed in the prompt)."""

    model_config = ConfigDict(frozen=True)

    jobs: tuple[GenerationParams, ...]
    notes: tuple[str, ...] = ()


def imagine(
    limits: RequestLimits,
    *,
    prompt: str,
    native_size: int,
    negative: str = "",
    seed: int | None = None,
    count: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    aspect: str | None = None,
    size: tuple[int, int] | None = None,
    styles: Sequence[Style] = (),
) -> Imagined:
    """Text-to-image jobs for a prompt in the prompt language. Options given explicitly (`aspect`,
    `size`, `seed`, `steps`) win over the same flags typed in the prompt, and a note says so.
    With a seed, every combination gets the same seeds (to compare them) and each `--repeat`
    continues the sequence. Raises InvalidRequest for bad flags, braces or too many jobs."""
    typed = normalise_text(prompt)
    try:
        text, inline = parse_inline_parameters(typed)
        prompts = expand_permutations(text, limits.max_expansion)
    except PromptSyntaxError as error:
        raise InvalidRequest(str(error)) from None
    total = len(prompts) * inline.repeat
    if total > limits.max_expansion:
        raise InvalidRequest(
            f"this prompt makes {total} jobs ({len(prompts)} prompt(s) x --repeat {inline.repeat}); "
            f"the limit is {limits.max_expansion}"
        )
    explicit = (("seed", seed, ("seed",)), ("steps", steps, ("steps",)),
                ("size" if size else "aspect", size or aspect, ("ar", "aspect")))
    notes = tuple(
        f"the `{option}` option was used instead of `--{flag} {inline.found[flag]}` in the prompt"
        for option, given, flags in explicit
        if given is not None
        for flag in flags
        if flag in inline.found
    )
    seed = chosen_seed(inline.seed if seed is None else seed)
    steps = inline.steps if steps is None else steps
    if size is None and aspect is None and inline.aspect is not None:
        size = inline_aspect_size(inline.aspect, native_size, limits)
    width, height = size or size_for(aspect or "1:1", native_size, limits)
    negative = ", ".join(part for part in (normalise_text(negative), inline.no or "") if part)
    count = count or limits.max_count
    jobs = []
    for repeat in range(inline.repeat):
        first = None if seed is None else seed + repeat * count
        for text in prompts:
            styled, styled_negative = apply_styles(text, negative, styles)
            jobs.append(GenerationParams(
                pipeline=PipelineKind.TEXT2IMG,
                prompt=normalise_text(styled),
                negative_prompt=normalise_text(styled_negative),
                seeds=seeds(count, first),
                steps=limits.default_steps if steps is None else steps,
                guidance=limits.default_guidance if guidance is None else guidance,
                width=width,
                height=height,
                tile=inline.tile,
                typed_prompt=typed,
                styles=tuple(style.name for style in styles),
            ))
    return Imagined(jobs=tuple(jobs), notes=notes)


def pick_styles(catalogue: Mapping[str, Style], typed: str | None) -> tuple[Style, ...]:
    """The styles named in `typed` (comma-separated, any case), in order; at most MAX_STYLES."""
    names = [name.strip() for name in (typed or "").split(",") if name.strip()]
    if not names:
        return ()
    if not catalogue:
        raise InvalidRequest("this bot has no styles set up (SDBOT_STYLES_FILE)")
    if len(names) > MAX_STYLES:
        raise InvalidRequest(f"at most {MAX_STYLES} styles at once (got {len(names)})")
    by_key = {name.casefold(): style for name, style in catalogue.items()}
    picked = []
    for name in names:
        if name.casefold() not in by_key:
            raise InvalidRequest(f"there is no style called “{name}”; start typing in `style` to see the list")
        picked.append(by_key[name.casefold()])
    return tuple(picked)


# Prompt flags that make no sense for a variation: its size is the source's, and it is one job.
_NOT_FOR_VARIATIONS = frozenset({"ar", "aspect", "repeat", "tile"})


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
    """Image-to-image params. The prompt may carry `--seed`, `--steps` and `--no` as in /imagine;
    flags that change the size or the number of jobs are refused (variations keep the source's)."""
    try:
        text, inline = parse_inline_parameters(normalise_text(prompt))
    except PromptSyntaxError as error:
        raise InvalidRequest(str(error)) from None
    if unusable := [f"--{flag}" for flag in inline.found if flag in _NOT_FOR_VARIATIONS]:
        raise InvalidRequest(
            f"{', '.join(unusable)} cannot be used for variations: they keep the source image's size, "
            "one job at a time"
        )
    return GenerationParams(
        pipeline=PipelineKind.IMG2IMG,
        prompt=normalise_text(text),
        negative_prompt=", ".join(part for part in (normalise_text(negative), inline.no or "") if part),
        seeds=seeds(count or limits.max_count, inline.seed),
        steps=inline.steps if inline.steps is not None else limits.default_steps if steps is None else steps,
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


def validate(
    params: GenerationParams, limits: RequestLimits, count_tokens: Callable[[str], int] | None = None
) -> None:
    """Raise InvalidRequest (or BlockedPrompt) with a message fit for the member; runs nothing.
    `count_tokens` (the model's tokenizer, see DiffusionEngine.token_counter) enables the token
    cap; without it the engine refuses an over-long prompt when the job runs."""
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
    if params.pipeline is not PipelineKind.UPSCALE:  # the upscaler reads its prompt as plain text
        for label, text in (("prompt", params.prompt), ("negative prompt", params.negative_prompt)):
            _check_prompt_language(label, text, limits, count_tokens)
    if params.pipeline is PipelineKind.UPSCALE and (params.width % 64 or params.height % 64):
        # The upscaler's UNet halves its latents three times: odd latent sizes do not fit.
        raise InvalidRequest(f"an upscale works on sizes in multiples of 64 pixels (got {params.width}x{params.height})")
    if params.source_image is not None:
        check_source(params, params.source_image, limits)


def _check_prompt_language(
    label: str, text: str, limits: RequestLimits, count_tokens: Callable[[str], int] | None
) -> None:
    if lora := _LORA_TAG.search(text):
        raise InvalidRequest(f"in the {label}, there is no LoRA called “{lora[1].strip()}”; this bot has no LoRAs")
    try:
        parse_weights(text)
        tokens = count_tokens(text) if count_tokens is not None and text else 0
    except PromptSyntaxError as error:
        raise InvalidRequest(f"in the {label}, {error}") from None
    if tokens > limits.max_prompt_tokens:
        raise InvalidRequest(f"the {label} is {tokens} tokens long; the limit is {limits.max_prompt_tokens}")


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


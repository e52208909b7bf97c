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
from typing import TypeVar

from PIL import Image
from pydantic import BaseModel, ConfigDict

from generation import edit_geometry
from generation.catalogue import Catalogue, ModelEntry
from generation.edit_geometry import Direction, GeometryError
from generation.errors import InvalidRequest
from generation.family_limits import family_notes
from generation.png_info import MadeWith
from generation.prompt_check import check_prompt
from generation.prompt_syntax import (
    PromptSyntaxError,
    expand_permutations,
    parse_inline_parameters,
    parse_weights,
)
from generation.styles import Style, apply_styles
from sdbot.settings import Settings
from sdbot.types import MAX_SEED, Edit, GenerationParams, ImageRow, JobRow, PipelineKind

T = TypeVar("T")

ASPECTS = {"1:1": (1, 1), "2:3": (2, 3), "3:2": (3, 2), "16:9": (16, 9), "9:16": (9, 16)}
MAX_GUIDANCE = 30.0  # the same bound as SDBOT_DEFAULT_GUIDANCE
MIN_STRENGTH, MAX_STRENGTH = 0.1, 1.0
DEFAULT_STRENGTH = 0.6
UPSCALE_STEPS = 20  # what the x2 latent upscaler is tuned for
# Zoom out, pan and vary region repaint their mask from pure noise (the pixels kept are pasted back).
EDIT_STRENGTH = 1.0
SIZE_MULTIPLE = 64
RANDOM_SEED = -1  # the seed that asks for a random one, as in AUTOMATIC1111
MAX_STYLES = 3
MAX_LORAS = 3
MIN_LORA_WEIGHT, MAX_LORA_WEIGHT = -2.0, 2.0
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP")
DESCRIBE_SUGGESTIONS = 4  # as Midjourney's /describe
_SPACES = re.compile(r"\s+")
# A1111's LoRA tag, `<lora:name:0.8>`: refused, as LoRAs are chosen with the `lora` option (from the
# models file), not read from the prompt.
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
    vary_subtle_strength: float = 0.35
    vary_strong_strength: float = 0.75
    # Set by `for_model`: the catalogue model these limits are for, its family and the multiple its
    # sides need.
    model: str | None = None
    family: str | None = None
    size_step: int = 8

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(**settings.model_dump(include=set(cls.model_fields)))

    def for_model(self, entry: ModelEntry, named: bool = True) -> RequestLimits:
        """These limits with a catalogue model's own defaults and limits where it sets them."""
        own = {"default_steps": entry.steps, "default_guidance": entry.guidance, "max_steps": entry.max_steps,
               "max_size": entry.max_size, "model": entry.name if named else None, "family": entry.family,
               "size_step": entry.size_step}
        return self.model_copy(update={key: value for key, value in own.items() if value is not None})


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
    and notes for the reply (an option that won over a flag typed in the prompt, what an SD3 or FLUX
    model leaves out)."""

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
    loras: tuple[tuple[str, float], ...] = (),
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
                model=limits.model,
                loras=loras,
            ))
    told = (note for job in jobs for note in family_notes(limits.family, job.prompt, job.negative_prompt, job.tile))
    notes += tuple(dict.fromkeys(told))
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


def pick_model(catalogue: Catalogue, typed: str | None, server_default: str | None = None) -> ModelEntry:
    """The model named in `typed` (any case), else the server's default, else the catalogue's."""
    name = (typed or "").strip()
    if name and not catalogue.named:
        raise InvalidRequest("this bot serves one model; there is no model list (SDBOT_MODELS_FILE)")
    if not name:
        return catalogue.lookup(server_default or "") or catalogue.entry(None)
    entry = catalogue.lookup(name)
    if entry is None:
        raise InvalidRequest(f"there is no model called “{name}”; start typing in `model` to see the list")
    return entry


def pick_loras(catalogue: Catalogue, model: ModelEntry, typed: str | None) -> tuple[tuple[str, float], ...]:
    """The LoRAs in `typed`: `name` or `name:weight`, comma-separated, at most MAX_LORAS, each of
    the model's family (a name alone takes the LoRA's default weight)."""
    items = [item.strip() for item in (typed or "").split(",") if item.strip()]
    if not items:
        return ()
    if not catalogue.loras:
        raise InvalidRequest("this bot has no LoRAs set up (see SDBOT_MODELS_FILE)")
    if len(items) > MAX_LORAS:
        raise InvalidRequest(f"at most {MAX_LORAS} LoRAs at once (got {len(items)})")
    picked: list[tuple[str, float]] = []
    for item in items:
        name, _, weight_text = item.partition(":")
        lora = catalogue.lookup_lora(name)
        if lora is None:
            raise InvalidRequest(
                f"there is no LoRA called “{name.strip()}”; start typing in `lora` to see the list"
            )
        try:
            weight = float(weight_text) if weight_text.strip() else lora.weight
        except ValueError:
            raise InvalidRequest(
                f"“{item}”: the weight after `:` must be a number, like `{lora.name}:0.8`"
            ) from None
        if not (math.isfinite(weight) and MIN_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT):
            raise InvalidRequest(
                f"the weight of LoRA {lora.name} must be between {MIN_LORA_WEIGHT:g} and "
                f"{MAX_LORA_WEIGHT:g} (got {weight_text.strip()})"
            )
        if model.family != lora.family:
            family = (f"{'a' if model.family == 'flux' else 'an'} {model.family.upper()} model" if model.family
                      else "a model of unknown family (set `family` in the models file)")
            raise InvalidRequest(
                f"LoRA {lora.name} is made for {lora.family.upper()} models; {model.name} is {family}"
            )
        if any(lora.name == earlier for earlier, _ in picked):
            raise InvalidRequest(f"LoRA {lora.name} is named twice")
        picked.append((lora.name, weight))
    return tuple(picked)


def lora_text(loras: Sequence[tuple[str, float]]) -> str:
    """`pixel:0.8, ink:1`: how LoRAs are written in the `lora` option, the reply and the record."""
    return ", ".join(f"{name}:{weight:g}" for name, weight in loras)


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
    loras: tuple[tuple[str, float], ...] = (),
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
        model=limits.model,
        loras=loras,
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
    """Variations of a posted image: its job's LoRAs, prompt, steps and guidance unless changed; its
    model is the one `limits` are for (`RequestLimits.for_model`)."""
    return variation(
        limits,
        loras=tuple(job.loras),
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


def vary(limits: RequestLimits, job: JobRow, image: ImageRow, *, strong: bool, prompt: str | None = None
         ) -> GenerationParams:
    """Vary (Subtle) or Vary (Strong) of a posted image: a variation at the configured strength, on
    the model `limits` are for."""
    base = EditSource.of_image(job, image, prompt)
    return variation(
        limits, loras=base.loras, prompt=base.prompt, negative=base.negative, width=image.width, height=image.height, steps=base.steps, guidance=base.guidance,
        strength=limits.vary_strong_strength if strong else limits.vary_subtle_strength,
    )


class EditSource(BaseModel):
    """The picture an edit starts from and the text it keeps: a posted image with its job's prompt,
    or an upload (fitted to the model's native pixel count, in its shape)."""

    model_config = ConfigDict(frozen=True)

    width: int
    height: int
    prompt: str = ""
    negative: str = ""
    steps: int | None = None
    guidance: float | None = None
    loras: tuple[tuple[str, float], ...] = ()  # a posted image's, kept by its edits

    @classmethod
    def of_image(cls, job: JobRow, image: ImageRow, prompt: str | None = None) -> EditSource:
        """An upscale's steps and guidance are the upscaler's: its edits take the defaults."""
        diffused = job.pipeline is not PipelineKind.UPSCALE
        return cls(width=image.width, height=image.height, prompt=job.prompt if prompt is None else prompt,
                   negative=job.negative_prompt, steps=job.steps if diffused else None,
                   guidance=job.guidance if diffused else None, loras=tuple(job.loras))

    @classmethod
    def of_upload(cls, limits: RequestLimits, native_size: int, width: int, height: int, prompt: str = ""
                  ) -> EditSource:
        target_w, target_h = fit(native_size * native_size, width / height, limits)
        return cls(width=target_w, height=target_h, prompt=prompt)

    @property
    def canvas(self) -> tuple[int, int]:
        """The size edits work at: the VAE needs multiples of 8 (the source is resized to fit)."""
        multiple = edit_geometry.CANVAS_MULTIPLE
        return max(multiple, self.width // multiple * multiple), max(multiple, self.height // multiple * multiple)


def zoom_out(limits: RequestLimits, source: EditSource, factor: str) -> GenerationParams:
    """Zoom Out 2x / 1.5x: the picture shrunk in the middle of a canvas of its size, the border new."""
    if factor not in edit_geometry.ZOOM_FACTORS:
        raise InvalidRequest(f"zoom out by {', '.join(edit_geometry.ZOOM_FACTORS)}, not “{factor}”")
    width, height = source.canvas
    return _edit(limits, source, width, height,
                 lambda: edit_geometry.zoom_out(width, height, edit_geometry.ZOOM_FACTORS[factor], factor))


def pan(limits: RequestLimits, source: EditSource, direction: str) -> GenerationParams:
    """Pan: the canvas grown by half the picture towards `direction`, the new strip painted."""
    try:
        towards = Direction(direction.strip().lower())
    except ValueError:
        raise InvalidRequest(f"pan {', '.join(Direction)}, not “{direction}”") from None
    width, height = source.canvas
    canvas_w, canvas_h, edit = _geometry(lambda: edit_geometry.pan(width, height, towards, limits.max_size))
    return _edit(limits, source, canvas_w, canvas_h, lambda: edit)


def inpaint_region(limits: RequestLimits, source: EditSource, region: str) -> GenerationParams:
    """Vary (Region): the picture kept, the named or `x,y,w,h` percent box repainted."""
    width, height = source.canvas
    return _edit(limits, source, width, height, lambda: edit_geometry.region(width, height, region))


def inpaint_mask(limits: RequestLimits, source: EditSource, mask: bytes, picture: tuple[int, int]) -> GenerationParams:
    """/inpaint with an uploaded mask: white is repainted; it must have the picture's size."""
    width, height = source.canvas
    return _edit(limits, source, width, height, lambda: edit_geometry.mask_upload(width, height, mask, picture))


def _edit(
    limits: RequestLimits, source: EditSource, width: int, height: int, make: Callable[[], Edit]
) -> GenerationParams:
    return GenerationParams(
        pipeline=PipelineKind.IMG2IMG,
        prompt=normalise_text(source.prompt),
        negative_prompt=normalise_text(source.negative),
        seeds=seeds(limits.max_count),
        steps=limits.default_steps if source.steps is None else source.steps,
        guidance=limits.default_guidance if source.guidance is None else source.guidance,
        width=width,
        height=height,
        strength=EDIT_STRENGTH,
        edit=_geometry(make),
        model=limits.model,
        loras=source.loras,
    )


def _geometry(make: Callable[[], T]) -> T:
    """Run a geometry step; a picture the edit does not fit is the member's to fix."""
    try:
        return make()
    except GeometryError as error:
        raise InvalidRequest(str(error)) from None


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
    """x2 of a posted image; its job's model and LoRAs are kept for the edits of the result (the
    upscaler itself is one model for all)."""
    params = upscale(image.width, image.height, prompt=job.prompt, negative=job.negative_prompt)
    return params.model_copy(update={"model": job.model, "loras": tuple(job.loras)})


def describe(
    limits: RequestLimits, native_size: int, width: int, height: int, *, more: bool = False
) -> GenerationParams:
    """/describe of a `width` x `height` picture: a caption job. Its size is the size an /imagine of
    a suggestion gets (the picture's shape at the model's pixel count); `steps` counts the sampled
    suggestions: one for a first /describe, all four for 🔄 (the others are the caption tasks' best)."""
    target_w, target_h = fit(native_size * native_size, width / height, limits)
    return GenerationParams(
        pipeline=PipelineKind.CAPTION,
        seeds=seeds(1),
        steps=DESCRIBE_SUGGESTIONS if more else 1,
        guidance=0.0,
        width=target_w,
        height=target_h,
    )


def describe_more(job: JobRow) -> GenerationParams:
    """🔄 on a /describe answer: four sampled suggestions of the same picture, from a new seed."""
    return job.params().model_copy(update={"seeds": seeds(1), "steps": DESCRIBE_SUGGESTIONS})


def from_suggestion(limits: RequestLimits, describe_job: JobRow, prompt: str, native_size: int) -> Imagined:
    """An /imagine of one /describe suggestion, in the described picture's shape."""
    return imagine(limits, prompt=prompt, native_size=native_size, size=(describe_job.width, describe_job.height))


def reuse(limits: RequestLimits, made_with: MadeWith, native_size: int) -> GenerationParams:
    """The job an uploaded picture's metadata describes, run on this bot's model: its prompt,
    negative prompt, seed, steps, guidance and size (defaults where the metadata says nothing; a
    size outside the limits becomes its shape at the model's pixel count)."""
    if not normalise_text(made_with.prompt):
        raise InvalidRequest("the picture's settings have no prompt to reuse")
    width, height = made_with.width, made_with.height
    if not (width and height):
        width = height = native_size
    if not (limits.min_size <= width <= limits.max_size and limits.min_size <= height <= limits.max_size) or (
        width % 8 or height % 8
    ):
        width, height = fit(native_size * native_size, width / height, limits)
    return GenerationParams(
        pipeline=PipelineKind.TEXT2IMG,
        prompt=normalise_text(made_with.prompt),
        negative_prompt=normalise_text(made_with.negative_prompt),
        seeds=seeds(1, made_with.seed),
        steps=limits.default_steps if made_with.steps is None else min(max(made_with.steps, 1), limits.max_steps),
        guidance=limits.default_guidance if made_with.guidance is None else made_with.guidance,
        width=width,
        height=height,
    )


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
    which = f" for model {limits.model}" if limits.model else ""
    step = limits.size_step
    if params.width % step or params.height % step:
        raise InvalidRequest(
            f"width and height must be multiples of {step}{which} (got {params.width}x{params.height})"
        )
    if not (
        limits.min_size <= params.width <= limits.max_size and limits.min_size <= params.height <= limits.max_size
    ):
        raise InvalidRequest(
            f"width and height must be between {limits.min_size} and {limits.max_size} pixels{which} "
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
    if (edit := params.edit) is not None:
        _geometry(lambda: edit_geometry.check_edit(edit, params.width, params.height))
    if params.source_image is not None:
        check_source(params, params.source_image, limits)


def _check_prompt_language(
    label: str, text: str, limits: RequestLimits, count_tokens: Callable[[str], int] | None
) -> None:
    if lora := _LORA_TAG.search(text):
        raise InvalidRequest(
            f"in the {label}, there is no LoRA called “{lora[1].strip()}”: LoRAs are chosen with the "
            "`lora` option, not in the prompt"
        )
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


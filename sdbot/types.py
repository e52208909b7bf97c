"""The shared types: what to generate, what came out, and the job and image records the store keeps.

Plain values (no tensors, no Discord objects) so they can be queued, stored in SQLite and, for
remote workers, pickled across processes. Imports nothing of this project.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**32 - 1

# Live previews as the engine hands them out: (step, total, one small JPEG per job of the batch, in
# order; None for a job whose preview the safety checker flagged).
PreviewCallback = Callable[[int, int, Sequence[bytes | None]], None]


class JobKind(StrEnum):
    """What the user asked for; stored with the job."""

    IMAGINE = "imagine"
    VARIATION = "variation"
    UPSCALE = "upscale"
    REROLL = "reroll"
    DESCRIBE = "describe"


class PipelineKind(StrEnum):
    """Which diffusers pipeline serves a job; jobs of one kind and shape can share a batch."""

    TEXT2IMG = "text2img"
    IMG2IMG = "img2img"
    UPSCALE = "upscale"
    # /describe: the source picture in, prompt suggestions out (no images).
    CAPTION = "caption"


class EditOp(StrEnum):
    """Which inpainting edit a job is (issue 12); its jobs are image-to-image jobs with a mask."""

    ZOOM_OUT = "zoom_out"
    PAN = "pan"
    REGION = "region"


class Edit(BaseModel):
    """An inpainting edit: the source picture resized into `place` on a canvas of the job's width x
    height, then the `mask` box, or the white of `mask_image`, repainted (neither: everything outside
    `place`, i.e. outpainting). Boxes are (x, y, width, height) in canvas pixels; `feather` is the
    blend width in pixels."""

    # The uploaded mask is kept with the job (a 1-bit PNG: a few kB) so a reroll needs no file.
    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    op: EditOp
    place: tuple[int, int, int, int]
    mask: tuple[int, int, int, int] | None = None
    mask_image: bytes | None = Field(default=None, repr=False)
    feather: int = 0
    label: str = ""  # what the member chose, for messages: "2x", "right", "center"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class GenerationParams(BaseModel):
    """Everything the engine needs to produce one job's images, one image per seed."""

    model_config = ConfigDict(frozen=True)

    pipeline: PipelineKind
    prompt: str = ""
    negative_prompt: str = ""
    seeds: tuple[int, ...] = Field(min_length=1)
    steps: int
    guidance: float
    width: int
    height: int
    # Image-to-image only: how far the result may move away from the source (0.1-1.0).
    strength: float | None = None
    # Image-to-image and upscale: the source picture as encoded bytes (PNG, JPEG or WebP).
    source_image: bytes | None = Field(default=None, repr=False)
    # Largest encoded file the caller can deliver (Discord's upload limit); None means no limit.
    max_file_bytes: int | None = None
    # Only callers that may show flagged images (as spoilers) get their pixels back.
    return_flagged: bool = False
    # Seamless tiling (`--tile`): the left edge continues the right, the top the bottom.
    tile: bool = False
    # Kept for the record only: the text as typed (inline flags, {a, b} choices, before styles) and
    # the styles applied. `prompt` and `negative_prompt` are what runs, styles included.
    typed_prompt: str | None = None
    styles: tuple[str, ...] = ()
    # Inpainting edits (zoom out, pan, vary region): run by the inpainting pipeline.
    edit: Edit | None = None
    # The catalogue model (its name in the models file); None: the only model, SDBOT_MODEL_ID.
    model: str | None = None
    # LoRAs by catalogue name, with their weights, in the order given.
    loras: tuple[tuple[str, float], ...] = ()

    @property
    def image_count(self) -> int:
        return len(self.seeds)

    @property
    def charged_images(self) -> int:
        """Images charged to the daily quota: a caption job makes none (its fair-share cost stays)."""
        return 0 if self.pipeline is PipelineKind.CAPTION else self.image_count

    @property
    def batch_key(self) -> tuple[object, ...]:
        """Jobs with equal keys can share one pipeline call (prompts and seeds may differ)."""
        return (self.pipeline, self.width, self.height, self.steps, self.guidance, self.strength, self.tile,
                self.edit is not None, self.model, self.loras)


class GenerationRecord(BaseModel):
    """How one image was made: enough to reproduce it, and written into its PNG."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    strength: float | None
    pipeline: PipelineKind
    scheduler: str
    model_id: str
    model_revision: str
    dtype: str
    device: str
    versions: dict[str, str]
    extra: dict[str, Any] = Field(default_factory=dict)


class GeneratedImage(BaseModel):
    """One output image. `data` is None when the safety checker flagged it and the caller
    did not ask for flagged pixels."""

    index: int
    seed: int
    width: int
    height: int
    data: bytes | None = Field(repr=False)
    format: str  # file extension without dot: "png", "webp" or "jpeg"
    flagged: bool
    nsfw_score: float | None = None
    record: GenerationRecord


class JobOutput(BaseModel):
    """The engine's answer for one job of a batch."""

    images: list[GeneratedImage]
    warnings: list[str] = Field(default_factory=list)
    # Wall time of the batch this job ran in, split by the batch size (for ETA and cost correction).
    elapsed_s: float = 0.0
    batch_size: int = 1  # jobs in the engine call that made it (set by the worker)
    # A caption job's prompt suggestions, in order (no images).
    captions: list[str] = Field(default_factory=list)


class NewJob(BaseModel):
    """A job as the bot submits it, before it has an id."""

    kind: JobKind
    guild_id: int
    channel_id: int
    user_id: int
    params: GenerationParams
    model_id: str
    source_job_id: int | None = None
    source_index: int | None = None
    source_path: str | None = None
    application_id: int | None = None
    interaction_token: str | None = None


class JobRow(BaseModel):
    id: int
    kind: JobKind
    guild_id: int
    channel_id: int
    user_id: int
    pipeline: PipelineKind
    prompt: str
    negative_prompt: str
    seeds: list[int]
    steps: int
    guidance: float
    width: int
    height: int
    strength: float | None
    scheduler: str | None
    model_id: str
    model_revision: str | None
    source_job_id: int | None
    source_index: int | None
    source_path: str | None
    return_flagged: bool
    tile: bool = False
    typed_prompt: str | None = None
    styles: list[str] = Field(default_factory=list)
    edit: Edit | None = None
    model: str | None = None  # the catalogue name (None: the only model)
    loras: list[tuple[str, float]] = Field(default_factory=list)
    status: JobStatus
    status_reason: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    application_id: int | None
    interaction_token: str | None
    response_message_id: int | None
    result_message_id: int | None
    # When the job's end (result, failure or cancellation) reached Discord; None until then.
    delivered_at: float | None = None

    @property
    def image_count(self) -> int:
        return len(self.seeds)

    def params(self, source_image: bytes | None = None) -> GenerationParams:
        """The engine parameters (every field the two share); the source picture is read from disk
        by the caller."""
        shared = self.model_dump(include=set(GenerationParams.model_fields))
        return GenerationParams(**shared, source_image=source_image)


class ImageRow(BaseModel):
    job_id: int
    idx: int
    seed: int
    width: int
    height: int
    path: str | None
    format: str | None
    flagged: bool
    nsfw_score: float | None
    record: dict[str, Any]
    pruned_at: float | None = None  # retention deleted its file then (it is made again on demand)

"""The data that crosses the engine boundary: what to generate and what came out.

These are plain values (no tensors, no Discord objects) so they can be queued, stored in SQLite and,
for remote workers, pickled across processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**32 - 1


class JobKind(StrEnum):
    """What the user asked for; stored with the job."""

    IMAGINE = "imagine"
    VARIATION = "variation"
    UPSCALE = "upscale"
    REROLL = "reroll"


class PipelineKind(StrEnum):
    """Which diffusers pipeline serves a job; jobs of one kind and shape can share a batch."""

    TEXT2IMG = "text2img"
    IMG2IMG = "img2img"
    UPSCALE = "upscale"


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

    @property
    def image_count(self) -> int:
        return len(self.seeds)

    @property
    def batch_key(self) -> tuple[PipelineKind, int, int, int, float, float | None]:
        """Jobs with equal keys can share one pipeline call (prompts and seeds may differ)."""
        return (self.pipeline, self.width, self.height, self.steps, self.guidance, self.strength)


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


class Engine(Protocol):
    """What the worker needs from an engine; the real one is `generation.engine.DiffusionEngine`.

    `run_batch` is blocking (it runs on a worker thread or a remote process). All params in one
    call share a batch key. `on_step(step, total)` is called after each denoising step;
    when `should_stop()` turns true the engine stops between steps and raises `Cancelled`.
    It returns one `JobOutput` per params, in order, and raises `OutOfMemory` when the batch
    does not fit on the device.
    """

    def run_batch(
        self,
        batch: Sequence[GenerationParams],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
    ) -> list[JobOutput]: ...

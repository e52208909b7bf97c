"""What a job costs on the GPU: an a-priori estimate in work units, and the measured seconds per unit.

The fair queue charges users in work units, so a 4-image 1024x1024 job weighs sixteen times a
1-image 512x512 one with the same steps. The estimate only has to be right relative to other jobs;
the queue corrects each charge with the time the job really took.
"""

from __future__ import annotations

from typing import Protocol

from sdbot.types import PipelineKind

# One work unit: one denoising step of one 512x512 image.
_UNIT_PIXELS = 512 * 512

# Relative cost of a step per output pixel. The x2 latent upscaler runs a heavier UNet than SD on
# latents of the output size and decodes a 4x larger image; measurements correct the rest.
_KIND_FACTOR: dict[PipelineKind, float] = {
    PipelineKind.TEXT2IMG: 1.0,
    PipelineKind.IMG2IMG: 1.0,
    PipelineKind.UPSCALE: 2.0,
    # A caption job (steps = its sampled suggestions) decodes a few short texts from one picture.
    PipelineKind.CAPTION: 0.25,
}

# Until a job has been measured: roughly SD-Turbo at 512x512 on a current GPU. Only ETAs use it.
DEFAULT_SECONDS_PER_UNIT = 0.05


class JobShape(Protocol):
    """The fields cost depends on; both GenerationParams and the store's JobRow have them."""

    @property
    def pipeline(self) -> PipelineKind: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def steps(self) -> int: ...
    @property
    def strength(self) -> float | None: ...
    @property
    def image_count(self) -> int: ...


def work_units(job: JobShape) -> float:
    """Estimated GPU work: images x pixels x effective steps x a per-kind factor."""
    steps: float = job.steps
    if job.pipeline == PipelineKind.IMG2IMG and job.strength is not None:
        # img2img skips the first (1 - strength) of the schedule.
        steps = max(1.0, steps * job.strength)
    pixels = job.width * job.height / _UNIT_PIXELS
    return job.image_count * pixels * steps * _KIND_FACTOR[job.pipeline]


class SecondsPerUnit:
    """An exponential moving average of measured seconds per work unit, over finished batches."""

    def __init__(self, *, alpha: float = 0.2, prior: float = DEFAULT_SECONDS_PER_UNIT) -> None:
        self._alpha = alpha
        self.value = prior
        self.measured = False

    def observe(self, seconds: float, units: float) -> None:
        if units <= 0 or seconds < 0:
            return
        sample = seconds / units
        # The first measurement replaces the prior outright: the prior can be off by 100x (CPU).
        self.value = sample if not self.measured else self.value + self._alpha * (sample - self.value)
        self.measured = True

"""A fake Engine, a recording JobListener and a scheduler harness for queue and worker tests.

The fake engine honours the Engine contract (per-step callbacks, stopping between steps, one
JobOutput per params) and can be told to sleep per step, wait at a gate, fail on a prompt or run
out of memory above a batch size. Its "images" are bytes derived from the parameters and seed, so
the same request always gives the same bytes (as the real engine does with a fixed seed).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from generation.errors import Cancelled, OutOfMemory, WorkerLost
from generation.jobs.runners import Engine, LocalRunner
from generation.jobs.scheduler import JobScheduler
from sdbot.settings import Settings
from sdbot.store import Store
from sdbot.types import (
    GeneratedImage,
    GenerationParams,
    GenerationRecord,
    ImageRow,
    JobKind,
    JobOutput,
    JobRow,
    NewJob,
    PipelineKind,
    PreviewCallback,
)

FAIL_MARKER = "explode"  # a prompt containing this makes the engine raise
FLAG_MARKER = "flagme"  # a prompt containing this makes its images flagged
LOSE_MARKER = "unplug"  # a prompt containing this loses the runner (once), as a killed Ray actor does


class FakeEngine:
    def __init__(
        self,
        *,
        step_s: float = 0.0,
        oom_above_images: int | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.step_s = step_s
        self.oom_above_images = oom_above_images
        self.gate = gate
        self.lost_once = False
        self.calls: list[list[GenerationParams]] = []
        self.steps_run: list[int] = []  # per call: steps completed before returning or stopping

    def run_batch(
        self,
        batch: Sequence[GenerationParams],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> list[JobOutput]:
        if not batch:  # a liveness probe, as the worker sends after losing its runner
            return []
        self.calls.append(list(batch))
        self.steps_run.append(0)
        while self.gate is not None and not self.gate.wait(0.005):
            if should_stop():
                raise Cancelled("stopped while waiting at the gate")
        images = sum(params.image_count for params in batch)
        if self.oom_above_images is not None and images > self.oom_above_images:
            raise OutOfMemory(f"{images} images do not fit")
        if not self.lost_once and any(LOSE_MARKER in params.prompt for params in batch):
            self.lost_once = True
            raise WorkerLost("the fake runner was unplugged")
        if any(FAIL_MARKER in params.prompt for params in batch):
            raise RuntimeError("the fake engine broke on purpose")
        started = time.monotonic()
        total = batch[0].steps
        for step in range(1, total + 1):
            if should_stop():
                raise Cancelled("stopped between steps")
            time.sleep(self.step_s)
            self.steps_run[-1] = step
            on_step(step, total)
            if on_preview is not None and step < total:
                on_preview(step, total, [fake_preview(params, step) for params in batch])
        elapsed = (time.monotonic() - started) / len(batch)
        return [_output(params, elapsed) for params in batch]


def fake_preview(params: GenerationParams, step: int) -> bytes | None:
    """What the fake engine hands out as a job's preview at a step: none for a flagged job."""
    return None if FLAG_MARKER in params.prompt else f"preview|{params.prompt}|{step}".encode()


def fake_pixels(params: GenerationParams, seed: int) -> bytes:
    source = hashlib.sha256(params.source_image or b"").hexdigest()[:12]
    return f"{params.pipeline}|{params.prompt}|{seed}|{params.width}x{params.height}|{source}".encode()


def _output(params: GenerationParams, elapsed_s: float) -> JobOutput:
    flagged = FLAG_MARKER in params.prompt
    images = [
        GeneratedImage(
            index=index,
            seed=seed,
            width=params.width,
            height=params.height,
            data=None if flagged and not params.return_flagged else fake_pixels(params, seed),
            format="png",
            flagged=flagged,
            nsfw_score=0.9 if flagged else 0.01,
            record=GenerationRecord(
                prompt=params.prompt,
                negative_prompt=params.negative_prompt,
                seed=seed,
                steps=params.steps,
                guidance=params.guidance,
                width=params.width,
                height=params.height,
                strength=params.strength,
                pipeline=params.pipeline,
                scheduler="FakeScheduler",
                model_id="fake/model",
                model_revision="fake-revision",
                dtype="float32",
                device="cpu",
                versions={"fake": "1"},
            ),
        )
        for index, seed in enumerate(params.seeds)
    ]
    return JobOutput(images=images, elapsed_s=elapsed_s)


class RecordingListener:
    """Records what the worker reports; `wait_finished` blocks until given jobs ended."""

    def __init__(self) -> None:
        self.started: list[JobRow] = []
        self.progress: dict[int, list[tuple[int, int]]] = {}
        self.previews: dict[int, list[bytes]] = {}
        self.finished: dict[int, tuple[JobRow, list[ImageRow], JobOutput | None]] = {}
        self.finish_order: list[int] = []

    async def job_started(self, job: JobRow) -> None:
        self.started.append(job)

    def job_progress(self, job_id: int, step: int, total: int) -> None:
        self.progress.setdefault(job_id, []).append((step, total))

    def job_preview(self, job_id: int, step: int, total: int, image: bytes) -> None:
        self.previews.setdefault(job_id, []).append(image)

    async def job_finished(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> None:
        self.finished[job.id] = (job, images, output)
        self.finish_order.append(job.id)

    async def wait_finished(self, *job_ids: int, timeout: float = 10.0) -> None:
        await wait_until(lambda: all(job_id in self.finished for job_id in job_ids), timeout)

    def status(self, job_id: int) -> str:
        return self.finished[job_id][0].status.value


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.005)


def new_job(
    user_id: int = 1,
    *,
    prompt: str = "a lighthouse",
    seeds: tuple[int, ...] = (7,),
    size: int = 64,
    steps: int = 4,
    pipeline: PipelineKind = PipelineKind.TEXT2IMG,
    guild_id: int = 100,
    **extra: Any,
) -> NewJob:
    params = GenerationParams(
        pipeline=pipeline,
        prompt=prompt,
        seeds=seeds,
        steps=steps,
        guidance=0.0,
        width=size,
        height=size,
        strength=0.5 if pipeline == PipelineKind.IMG2IMG else None,
    )
    kind = {PipelineKind.TEXT2IMG: JobKind.IMAGINE, PipelineKind.CAPTION: JobKind.DESCRIBE}.get(pipeline, JobKind.VARIATION)
    return NewJob(kind=kind, guild_id=guild_id, channel_id=5, user_id=user_id, params=params,
                  model_id="fake/model", **extra)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"output_dir": tmp_path / "images", "max_batch": 4, "job_timeout_s": 10.0}
    return Settings(**(values | overrides))


@asynccontextmanager
async def running_scheduler(
    store: Store,
    settings: Settings,
    *engines: Engine,
    listener: RecordingListener | None = None,
    start: bool = True,
) -> AsyncIterator[tuple[JobScheduler, RecordingListener]]:
    """A scheduler with one LocalRunner per engine, stopped (1 s grace) on exit."""
    runners = [LocalRunner(engine) for engine in engines]
    listener = listener or RecordingListener()
    scheduler = JobScheduler(settings, store, runners, listener)
    if start:
        await scheduler.start()
    try:
        yield scheduler, listener
    finally:
        await scheduler.stop(grace_s=1.0)
        for runner in runners:
            runner.close()

"""What the bot measures: Prometheus metrics in a per-bot registry, and `JobObserver`, the job
listener that counts each job and writes its one log line when it ends."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from generation.engine.devices import gpu_memory_bytes
from sdbot.logs import FIELDS
from sdbot.types import ImageRow, JobOutput, JobRow

log = logging.getLogger(__name__)

_WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
_RUN_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16)


class Metrics:
    """One registry per bot, so several bots (tests) can run in one process."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.jobs = Counter("sdbot_jobs", "Jobs ended, by kind and final status", ["kind", "status"],
                            registry=registry)
        self.images = Counter("sdbot_images", "Images generated (withheld ones included)", registry=registry)
        self.nsfw_withheld = Counter("sdbot_nsfw_withheld", "Images withheld because the safety checker "
                                     "flagged them", registry=registry)
        self.queue_depth = Gauge("sdbot_queue_depth", "Jobs waiting in the queue", registry=registry)
        self.queue_wait = Histogram("sdbot_queue_wait_seconds", "Time from queueing to the start of a job",
                                    buckets=_WAIT_BUCKETS, registry=registry)
        self.job_duration = Histogram("sdbot_job_duration_seconds", "Time from the start to the end of a "
                                      "job that ran", buckets=_RUN_BUCKETS, registry=registry)
        self.batch_size = Histogram("sdbot_batch_size", "Jobs in the engine call each finished job ran in",
                                    buckets=_BATCH_BUCKETS, registry=registry)
        self.gpu_memory = Gauge("sdbot_gpu_memory_bytes", "CUDA memory allocated by this process's engine",
                                registry=registry)
        self.gateway_latency = Gauge("sdbot_gateway_latency_seconds", "Discord gateway heartbeat latency",
                                     registry=registry)
        self.command_errors = Counter("sdbot_command_errors", "Commands and buttons answered with an "
                                      "error, by command", ["command"], registry=registry)
        self.gpu_memory.set_function(gpu_memory_bytes)

    def watch(self, queue_length: Callable[[], int], gateway_latency: Callable[[], float]) -> None:
        """Gauges read at scrape time from the running bot."""
        self.queue_depth.set_function(queue_length)
        self.gateway_latency.set_function(lambda: _finite_or_nan(gateway_latency()))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class JobObserver:
    """A `JobListener`: measures every job and logs one line when it ends."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def job_started(self, job: JobRow) -> None:
        if job.started_at is not None:
            self._metrics.queue_wait.observe(max(0.0, job.started_at - job.created_at))

    def job_progress(self, job_id: int, step: int, total: int) -> None:
        pass

    async def job_finished(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> None:
        metrics = self._metrics
        metrics.jobs.labels(kind=job.kind.value, status=job.status.value).inc()
        metrics.images.inc(len(images))
        metrics.nsfw_withheld.inc(sum(image.flagged and image.path is None for image in images))
        wait = run = None
        if job.started_at is not None:
            wait = job.started_at - job.created_at
            if job.finished_at is not None:
                run = job.finished_at - job.started_at
                metrics.job_duration.observe(max(0.0, run))
        batch = output.batch_size if output is not None else None
        if batch is not None:
            metrics.batch_size.observe(batch)
        model = job.model or job.model_id  # the catalogue name when there is a models file
        fields = {
            "job_id": job.id, "user_id": job.user_id, "guild_id": job.guild_id, "kind": job.kind.value,
            "status": job.status.value, "images": len(images), "wait_s": _rounded(wait), "run_s": _rounded(run),
            "batch_size": batch, "model": model, "reason": job.status_reason,
        }
        log.info(
            "job %s %s: user=%s kind=%s images=%d wait=%s run=%s batch=%s model=%s%s",
            job.id, job.status.value, job.user_id, job.kind.value, len(images), _seconds(wait), _seconds(run),
            batch if batch is not None else "-", model,
            f" reason={job.status_reason!r}" if job.status_reason else "",
            extra={FIELDS: fields},
        )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}s"


def _finite_or_nan(value: float) -> float:
    return value if math.isfinite(value) else math.nan

"""The facade the bot uses: admission (queue limits, then quota), the fair queue, one worker per
runner, cancellation and recovery of unfinished jobs after a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from generation.jobs.cost import work_units
from generation.jobs.fair_queue import FairQueue, Flow, QueuedJob
from generation.jobs.runners import BatchRunner
from generation.jobs.worker import JobListener, Listeners, Worker
from sdbot.settings import Settings
from sdbot.store import Store
from sdbot.types import JobRow, JobStatus, NewJob, PipelineKind

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 30.0


@dataclass(frozen=True)
class SubmitReceipt:
    job: JobRow
    position: int  # queued jobs that will be served before this one
    eta_s: float  # seconds until its images should be ready


def batch_key(job: JobRow) -> Hashable:
    """Jobs with equal keys can share one engine call: the same model and pipeline shape."""
    return (job.model_id, *job.params().batch_key)


class JobScheduler:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        runners: Sequence[BatchRunner],
        *listeners: JobListener,
    ) -> None:
        self._store = store
        self._runners: list[BatchRunner] = []
        self._queue: FairQueue[JobRow] = FairQueue(
            max_per_flow=settings.max_queued_per_user, capacity=settings.queue_capacity
        )
        self._settings = settings
        self._wakeup = asyncio.Event()
        self._listener = Listeners(*listeners)
        self._workers: list[Worker] = []
        self._started = False
        self.add_runners(runners)
        # Check-then-create must not interleave between two submits of one user.
        self._submit_lock = asyncio.Lock()

    async def start(self) -> None:
        """Queue again, in their original order, the jobs the last process left queued or running,
        then start the workers."""
        for flow, weight in (await self._store.queue_shares()).items():
            self._queue.set_weight(flow, weight)
        unfinished = await self._store.jobs_with_status(JobStatus.QUEUED, JobStatus.RUNNING)
        await self._store.requeue([job.id for job in unfinished if job.status == JobStatus.RUNNING])
        recovered = [job for job in unfinished if job.id not in self._queue]
        for job in recovered:
            # They were accepted before: the limits do not apply again.
            self._enqueue(job.model_copy(update={"status": JobStatus.QUEUED, "started_at": None}),
                          bypass_limits=True)
        if recovered:
            log.info("recovered %d unfinished job(s) from the last run", len(recovered))
        self._started = True
        for worker in self._workers:
            worker.start()

    def add_runners(self, runners: Sequence[BatchRunner]) -> None:
        """Serve the queue with more runners, e.g. an engine that finished loading after the bot
        connected: until then jobs are accepted and wait in the queue."""
        for runner in runners:
            worker = Worker(f"worker-{len(self._workers)}", runner, self._queue, self._wakeup, self._store,
                            self._settings, self._listener)
            self._runners.append(runner)
            self._workers.append(worker)
            if self._started:
                worker.start()
        self._wakeup.set()

    async def stop(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Stop the workers; batches still running after `grace_s` go back to queued in the store."""
        await asyncio.gather(*(worker.stop(grace_s) for worker in self._workers))
        for runner in self._runners:
            runner.close()

    def check_can_submit(self, flow: Flow, count: int = 1) -> None:
        """Raise QueueRefused if the member may not queue `count` jobs now (check before charging)."""
        self._queue.check_can_submit(flow, count)

    async def submit(self, new_job: NewJob) -> SubmitReceipt:
        """Store, charge and queue a job. Raises QueueRefused or QuotaExceeded with nothing
        stored or charged."""
        async with self._submit_lock:
            self._queue.check_can_submit((new_job.guild_id, new_job.user_id))
            job = await self._store.create_job(new_job)
            self._enqueue(job)
            # No await since the enqueue: the job is still queued.
            placed = self._queue.position(job.id, workers=self._parallelism)
        assert placed is not None
        return SubmitReceipt(job, *placed)

    async def cancel(self, job_id: int, reason: str = "cancelled") -> bool:
        """Cancel a queued job at once, or flag a running one (it ends as cancelled when its batch
        stops). False if the job is neither queued nor running here."""
        if self._queue.cancel(job_id):
            if ended := await self._store.cancel_job(job_id, reason):
                await self._listener.job_finished(ended, [], None)
            return True
        return any(worker.cancel(job_id, reason) for worker in self._workers)

    def position(self, job_id: int) -> tuple[int, float] | None:
        """(queued jobs served before it, seconds until done) for a queued job, else None."""
        return self._queue.position(job_id, workers=self._parallelism)

    def queued_jobs(self, guild_id: int, user_id: int) -> list[JobRow]:
        """The member's queued jobs, in the order they will run."""
        return [queued.payload for queued in self._queue.jobs_of((guild_id, user_id))]

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def workers_up(self) -> int:
        return sum(worker.is_up for worker in self._workers)

    @property
    def worker_count(self) -> int:
        return len(self._workers)

    async def set_weight(self, flow: Flow, weight: float, *, moderator_id: int) -> None:
        """Change a member's share of the queue, kept in the store (audited) across restarts."""
        guild_id, user_id = flow
        await self._store.set_queue_share(guild_id, moderator_id, user_id, weight)
        self._queue.set_weight(flow, weight)

    def weight(self, flow: Flow) -> float:
        return self._queue.weight(flow)

    def is_running(self, job_id: int) -> bool:
        return any(worker.is_running(job_id) for worker in self._workers)

    @property
    def _parallelism(self) -> int:
        return max(1, self.workers_up)

    def _enqueue(self, job: JobRow, *, bypass_limits: bool = False) -> None:
        queued = QueuedJob(
            job.id, (job.guild_id, job.user_id), work_units(job), job.image_count, batch_key(job), job,
            model=None if job.pipeline is PipelineKind.UPSCALE else (job.model_id, job.model),
        )
        self._queue.submit(queued, bypass_limits=bypass_limits)
        self._wakeup.set()

"""The generation worker: one asyncio task per runner, pulling batches from the fair queue.

For each batch it marks the jobs running, reads (or regenerates) source pictures off the loop, runs
the batch on its runner, writes the images, ends every job in the store as done, failed or
cancelled, and tells the listener. A failing batch is retried in smaller pieces so one bad job
cannot take others down, and the worker keeps serving the queue whatever a batch does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Hashable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from generation.errors import Cancelled, GenerationError, OutOfMemory, WorkerLost
from generation.jobs.fair_queue import FairQueue, QueuedJob
from generation.jobs.image_files import image_path, write_file
from generation.jobs.runners import BatchRunner
from sdbot.settings import Settings
from sdbot.store import Store
from sdbot.types import (
    GeneratedImage,
    GenerationParams,
    ImageRow,
    JobOutput,
    JobRow,
    PipelineKind,
)

log = logging.getLogger(__name__)

OUT_OF_MEMORY_REASON = "not enough GPU memory for this size; try a smaller size or fewer images"
DESCRIBE_OUT_OF_MEMORY_REASON = "not enough GPU memory to describe it right now; try again in a while"
_MAX_REASON_CHARS = 300
# A lost runner is probed this often at first, backing off to the maximum.
_PROBE_FIRST_S, _PROBE_MAX_S = 0.5, 30.0


class JobListener(Protocol):
    """What the bot hears about jobs (the Discord layer's `Delivery`). Each event carries the row
    the store returned for it, with the final status and reason once a job ended."""

    async def job_started(self, job: JobRow) -> None: ...

    def job_progress(self, job_id: int, step: int, total: int) -> None:
        """Called on the event loop after every denoising step: must be cheap (throttle there)."""
        ...

    async def job_finished(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> None: ...


@runtime_checkable
class PreviewListener(Protocol):
    """A listener that also shows live previews (the bot's `Delivery`); others need not implement it."""

    def job_preview(self, job_id: int, step: int, total: int, image: bytes) -> None:
        """Called on the event loop with a small JPEG of the job's images: must be cheap."""
        ...


class Listeners:
    """Several listeners heard as one, in order: the bot's replies and its metrics. A listener's
    error is logged and never reaches the worker or the scheduler, nor keeps an event from the
    other listeners."""

    def __init__(self, *listeners: JobListener) -> None:
        self._listeners = listeners

    async def job_started(self, job: JobRow) -> None:
        for listener in self._listeners:
            try:
                await listener.job_started(job)
            except Exception:
                log.exception("job %s: listener failed on job_started", job.id)

    def job_progress(self, job_id: int, step: int, total: int) -> None:
        for listener in self._listeners:
            try:
                listener.job_progress(job_id, step, total)
            except Exception:
                log.exception("job %s: listener failed on job_progress", job_id)

    def job_preview(self, job_id: int, step: int, total: int, image: bytes) -> None:
        for listener in self._listeners:
            if not isinstance(listener, PreviewListener):
                continue
            try:
                listener.job_preview(job_id, step, total, image)
            except Exception:
                log.exception("job %s: listener failed on job_preview", job_id)

    async def job_finished(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> None:
        for listener in self._listeners:
            try:
                await listener.job_finished(job, images, output)
            except Exception:
                log.exception("job %s: listener failed on job_finished", job.id)


class SourceUnavailable(GenerationError):
    """A variation or upscale whose source picture is gone and cannot be made again."""


@dataclass(frozen=True)
class _Task:
    job: JobRow
    params: GenerationParams


@dataclass(frozen=True)
class _Encoding:
    """A job's output while its engine call's images are still being encoded (the device already
    runs the next batch)."""

    outputs: Awaitable[list[JobOutput]]  # the whole call's, shared by its jobs
    index: int
    batch_size: int

    async def output(self) -> JobOutput:
        outputs = await self.outputs
        if len(outputs) != self.batch_size:
            raise RuntimeError(f"the engine returned {len(outputs)} results for {self.batch_size} jobs")
        return outputs[self.index].model_copy(update={"batch_size": self.batch_size})


# What became of a job run: its output (maybe still being encoded), or why it failed.
# Cancellation is tracked separately.
_Result = _Encoding | str


def short_reason(error: BaseException) -> str:
    """What a user is told about an unexpected error: its class and message, no traceback."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 1] + "…"


class Worker:
    def __init__(
        self,
        name: str,
        runner: BatchRunner,
        queue: FairQueue[JobRow],
        wakeup: asyncio.Event,
        store: Store,
        settings: Settings,
        listener: Listeners,
    ) -> None:
        self.name = name
        self._runner = runner
        self._queue = queue
        self._wakeup = wakeup
        self._store = store
        self._settings = settings
        self._listener = listener
        self._task: asyncio.Task[None] | None = None
        self._batch: dict[int, QueuedJob[JobRow]] = {}  # taken from the queue, not yet ended
        self._cancelled: dict[int, str] = {}  # job id -> reason, for jobs of the batch
        self._stopping = False
        self._abandoned = False  # shutdown gave up on the batch: tell the engine to stop
        self._runner_lost = False  # its runner died under a batch and has not answered since
        self._settled: dict[int, _Result] = {}  # jobs of the running batch whose piece has ended
        self._model: Hashable = None  # the model of the last batch: its runner has it loaded
        # The last batch's ending (encoding, files, store, listener), which runs while the next
        # batch uses the device; at most one at a time.
        self._finishing: asyncio.Task[None] | None = None

    @property
    def is_up(self) -> bool:
        return self._task is not None and not self._task.done() and not self._runner_lost

    def start(self) -> None:
        self._task = asyncio.create_task(self._serve(), name=f"sdbot-{self.name}")

    def is_running(self, job_id: int) -> bool:
        return job_id in self._batch

    def cancel(self, job_id: int, reason: str) -> bool:
        """Flag a job of the running batch: its result is discarded and it ends as cancelled. The
        engine stops early once every job of the call is flagged."""
        if job_id not in self._batch:
            return False
        self._cancelled.setdefault(job_id, reason)
        return True

    async def stop(self, grace_s: float) -> None:
        """Stop taking work; give the running batch `grace_s` to finish, else stop it and put its
        jobs back to queued in the store so the next start runs them."""
        self._stopping = True
        try:
            task = self._task
            if task is None or task.done():
                return
            if self._batch and (await asyncio.wait({task}, timeout=grace_s))[0]:
                return
            self._abandoned = True
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            await self._give_back()
        finally:
            if self._finishing is not None:
                # Images already made are written and recorded; jobs it has not ended within the
                # grace stay running in the store and run again on the next start.
                await asyncio.wait({self._finishing}, timeout=grace_s)

    # The loop

    async def _serve(self) -> None:
        while not self._stopping:
            if self._runner_lost:
                await self._wait_for_runner()
                continue
            batch = await self._next_batch()
            try:
                await self._run_batch(batch)
            except Exception as error:
                log.exception("%s: batch %s broke the worker's own code", self.name, list(self._batch))
                await self._end_leftovers(f"internal error ({short_reason(error)})")

    async def _next_batch(self) -> list[QueuedJob[JobRow]]:
        while True:
            batch = self._queue.take_batch(self._settings.max_batch, prefer=self._model)
            if batch:
                if batch[0].model is not None:  # an upscale leaves the loaded model as it was
                    self._model = batch[0].model
                # Registered before any await, so a cancel can never miss a job in flight.
                self._batch = {job.id: job for job in batch}
                return batch
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _run_batch(self, batch: list[QueuedJob[JobRow]]) -> None:
        jobs = [queued.payload for queued in batch]
        for running in await self._store.mark_running([job.id for job in jobs]):
            await self._listener.job_started(running)
        tasks: list[_Task] = []
        results: dict[int, _Result] = {}
        try:
            for job in jobs:
                if job.id in self._cancelled:
                    continue
                try:
                    tasks.append(_Task(job, job.params(await self._source_image(job))))
                except SourceUnavailable as error:
                    results[job.id] = str(error)
            results |= await self._attempt(tasks)
        except WorkerLost as error:
            # Pieces of a split batch that ended before the runner died keep their images: only
            # the unfinished jobs run again.
            settled = {job.id: results.get(job.id, self._settled.get(job.id)) for job in jobs}
            await self._requeue_lost(error, keep=[job_id for job_id, result in settled.items() if result is not None])
            for job in jobs:
                if settled[job.id] is not None:
                    await self._end(job, settled[job.id])
            return
        finally:
            self._settled.clear()
        # The device is free: the next batch starts while this one is encoded, written and
        # recorded, after the batch before it (in order, and never more than one behind).
        if self._finishing is not None:
            await asyncio.shield(self._finishing)  # a cancelled worker must not cut it short
        ending = [(job, self._settle(job), results.get(job.id)) for job in jobs]
        self._finishing = asyncio.create_task(self._finish_all(ending), name=f"sdbot-{self.name}-finish")

    async def _finish_all(self, ending: list[tuple[JobRow, str | None, _Result | None]]) -> None:
        for job, cancel_reason, result in ending:
            try:
                await self._finish(job, cancel_reason, result)
            except Exception:  # the store is gone: the job stays running there and runs again on restart
                log.exception("%s: could not end job %s", self.name, job.id)

    async def _attempt(self, tasks: Sequence[_Task]) -> dict[int, _Result]:
        """Run jobs in one engine call; on failure, retry in smaller pieces. Jobs cancelled
        meanwhile have no entry. Each piece's results are also kept in `_settled` as it ends."""
        results = await self._attempt_once(tasks)
        self._settled |= results
        return results

    async def _attempt_once(self, tasks: Sequence[_Task]) -> dict[int, _Result]:
        live = [task for task in tasks if task.job.id not in self._cancelled]
        if not live:
            return {}
        ids = tuple(task.job.id for task in live)
        timeout = self._settings.job_timeout_s
        deadline = time.monotonic() + timeout

        def all_cancelled() -> bool:
            return all(job_id in self._cancelled for job_id in ids)

        def should_stop() -> bool:  # called from the engine's thread: reads flags only
            return self._abandoned or time.monotonic() > deadline or all_cancelled()

        def on_step(step: int, total: int) -> None:
            for job_id in ids:
                if job_id in self._batch and job_id not in self._cancelled:
                    self._listener.job_progress(job_id, step, total)

        def on_preview(step: int, total: int, previews: Sequence[bytes | None]) -> None:
            for job_id, preview in zip(ids, previews, strict=True):
                if preview is not None and job_id in self._batch and job_id not in self._cancelled:
                    self._listener.job_preview(job_id, step, total, preview)

        started = time.monotonic()
        try:
            outputs = await asyncio.wait_for(
                self._runner.start([task.params for task in live], on_step, should_stop, on_preview), timeout
            )
        except OutOfMemory:
            if len(live) == 1:
                describing = live[0].params.pipeline is PipelineKind.CAPTION
                return {ids[0]: DESCRIBE_OUT_OF_MEMORY_REASON if describing else OUT_OF_MEMORY_REASON}
            log.warning("%s: jobs %s do not fit together; splitting the batch", self.name, ids)
            half = len(live) // 2
            return await self._attempt(live[:half]) | await self._attempt(live[half:])
        except (TimeoutError, Cancelled) as error:
            if all_cancelled():
                return {}
            if time.monotonic() > deadline:
                # Retrying alone would take as long: every job of a batch has the same size and steps.
                log.warning("%s: jobs %s timed out after %g s", self.name, ids, timeout)
                return dict.fromkeys(ids, f"it took longer than {timeout:g} s and was stopped")
            return await self._isolate(live, error)
        except WorkerLost:
            raise  # not the jobs' fault: the whole batch is queued again
        except Exception as error:
            return await self._isolate(live, error)
        self._queue.complete(ids, time.monotonic() - started)
        return {job_id: _Encoding(outputs, index, len(live)) for index, job_id in enumerate(ids)}

    async def _isolate(self, live: list[_Task], error: Exception) -> dict[int, _Result]:
        """A batch failed: run its jobs one by one so only the bad one fails."""
        if len(live) > 1:
            log.warning("%s: batch %s failed (%s); retrying its jobs one by one",
                        self.name, [task.job.id for task in live], short_reason(error))
            results: dict[int, _Result] = {}
            for task in live:
                results |= await self._attempt([task])
            return results
        log.error("%s: job %s failed", self.name, live[0].job.id, exc_info=error)
        return {live[0].job.id: short_reason(error)}

    async def _end(self, job: JobRow, result: _Result | None) -> None:
        """Record how the job ended and tell the listener. `result` is None only for a job
        cancelled before it ran."""
        await self._finish(job, self._settle(job), result)

    def _settle(self, job: JobRow) -> str | None:
        """Take the job out of the batch, with no await: a cancel arriving from now on finds nothing
        to cancel rather than being promised and then ignored. Returns its cancel reason, if any."""
        self._batch.pop(job.id, None)
        self._queue.release([job.id])
        return self._cancelled.pop(job.id, None)

    async def _finish(self, job: JobRow, reason: str | None, result: _Result | None) -> None:
        try:
            ended, images, output = await self._record(job, reason, result)
        except Exception as error:  # e.g. the disk is full: the job still has to end
            log.exception("%s: could not record the end of job %s", self.name, job.id)
            images, output = [], None
            ended = await self._store.fail_job(job.id, f"internal error ({short_reason(error)})")
        # None: it was ended meanwhile by someone else; the stored row tells the listener how.
        ended = ended or await self._store.get_job(job.id)
        if ended is not None:
            await self._listener.job_finished(ended, images, output)

    async def _record(
        self, job: JobRow, cancel_reason: str | None, result: _Result | None
    ) -> tuple[JobRow | None, list[ImageRow], JobOutput | None]:
        if cancel_reason is not None:
            return await self._store.cancel_job(job.id, cancel_reason), [], None
        if not isinstance(result, _Encoding):
            return await self._store.fail_job(job.id, result or "it was never run"), [], None
        output = await result.output()
        images = await asyncio.to_thread(self._write_images, job, output)
        if output.captions:
            await self._store.save_suggestions(job.id, output.captions)
        first = output.images[0].record if output.images else None
        finished = await self._store.finish_job(
            job.id,
            images,
            scheduler=first.scheduler if first else None,
            model_revision=first.model_revision if first else None,
        )
        return (finished, images, output) if finished else (None, [], None)

    async def _requeue_lost(self, error: WorkerLost, keep: Sequence[int] = ()) -> None:
        """The runner died under the batch: its unfinished jobs (all but `keep`) go back to
        queued, each ahead of its user's other jobs, for the other workers; jobs flagged as
        cancelled end so. This worker counts as down until its runner answers again."""
        self._runner_lost = True
        lost = [job_id for job_id in self._batch if job_id not in self._cancelled and job_id not in keep]
        # The store first: another worker may take a job the moment it is back in the queue.
        await self._store.requeue(lost)
        for queued in reversed(list(self._batch.values())):  # front of the queue, batch order kept
            if queued.id in lost and queued.id not in self._cancelled:  # a cancel may have arrived meanwhile
                del self._batch[queued.id]
                self._queue.requeue_front(queued)
        self._wakeup.set()
        log.warning("%s is down (%s); jobs %s are queued again for the workers still up",
                    self.name, error, lost)
        for queued in list(self._batch.values()):
            if queued.id not in keep:  # cancelled meanwhile; the kept ones end with their results
                await self._end(queued.payload, None)

    async def _wait_for_runner(self) -> None:
        """Probe the lost runner with an empty batch until it answers (a restarted remote worker
        answers once it has loaded its model again)."""
        delay = _PROBE_FIRST_S
        while True:
            try:
                await self._runner.run([], _no_progress, _never_stop)
                break
            except WorkerLost:
                await asyncio.sleep(delay)
                delay = min(2 * delay, _PROBE_MAX_S)
        self._runner_lost = False
        log.warning("%s is up again", self.name)

    async def _end_leftovers(self, reason: str) -> None:
        """Fail the jobs a broken batch did not end. If even that fails (the database is gone),
        they stay running in the store and the next start runs them again."""
        for queued in list(self._batch.values()):
            try:
                await self._end(queued.payload, reason)
            except Exception:
                log.exception("%s: could not end job %s", self.name, queued.id)

    async def _give_back(self) -> None:
        """After an abandoned batch: flagged jobs end cancelled, the others go back to queued."""
        for job_id, reason in list(self._cancelled.items()):
            if job_id in self._batch and (ended := await self._store.cancel_job(job_id, reason)):
                await self._listener.job_finished(ended, [], None)
        requeued = [job_id for job_id in self._batch if job_id not in self._cancelled]
        await self._store.requeue(requeued)
        if requeued:
            log.warning("%s: shutdown stopped jobs %s; they run again on the next start",
                        self.name, requeued)
        self._queue.release(self._batch)
        self._batch.clear()
        self._cancelled.clear()

    # Files

    def _write_images(self, job: JobRow, output: JobOutput) -> list[ImageRow]:
        """Write each image that has pixels (runs on a thread); withheld ones get no file."""
        rows = []
        for image in output.images:
            path = None
            if image.data is not None:
                path = self._image_path(job, image.index, image)
                write_file(path, image.data)
            rows.append(
                ImageRow(
                    job_id=job.id,
                    idx=image.index,
                    seed=image.seed,
                    width=image.width,
                    height=image.height,
                    path=None if path is None else str(path),
                    format=image.format,
                    flagged=image.flagged,
                    nsfw_score=image.nsfw_score,
                    record=image.record.model_dump(mode="json"),
                )
            )
        return rows

    def _image_path(self, job: JobRow, index: int, image: GeneratedImage) -> Path:
        return image_path(self._settings.output_dir, job.guild_id, job.id, index, image.seed, image.format)

    async def _source_image(self, job: JobRow) -> bytes | None:
        if job.source_path is None:
            return None
        try:
            return await asyncio.to_thread(Path(job.source_path).read_bytes)
        except FileNotFoundError:
            if job.source_job_id is None or job.source_index is None:
                raise SourceUnavailable("the source image is no longer available") from None
            log.info("job %s: source image %s is missing; regenerating it from job %s",
                     job.id, job.source_path, job.source_job_id)
            return await self._regenerate(job.source_job_id, job.source_index)
        except OSError as error:
            raise SourceUnavailable(f"the source image could not be read ({short_reason(error)})") from None

    async def _regenerate(self, job_id: int, index: int) -> bytes:
        """Make image `index` of job `job_id` again from its logged seed and parameters, and save
        it where the job's image was (the same engine and seed give the same picture)."""
        source = await self._store.get_job(job_id)
        if source is None or not 0 <= index < source.image_count:
            raise SourceUnavailable("the source image is no longer available")
        recorded = {image.idx: image for image in await self._store.images(job_id)}
        seed = recorded[index].seed if index in recorded else source.seeds[index]
        params = source.params(await self._source_image(source)).model_copy(update={"seeds": (seed,)})
        result = (await self._attempt([_Task(source, params)])).get(source.id)
        output = await result.output() if isinstance(result, _Encoding) else None
        image = output.images[0] if output is not None and output.images else None
        if image is None or image.data is None:
            why = result if isinstance(result, str) else "the safety checker withheld it"
            raise SourceUnavailable(f"the source image is missing and could not be made again ({why})")
        old = recorded.get(index)
        path = Path(old.path) if old and old.path else self._image_path(source, index, image)
        await asyncio.to_thread(write_file, path, image.data)
        await self._store.set_image_path(job_id, index, str(path))
        return image.data


def _no_progress(step: int, total: int) -> None:
    pass


def _never_stop() -> bool:
    return False

"""How a batch is executed. The worker only sees `BatchRunner`; each runner is one device's worth of
execution (the in-process engine thread here; a remote worker process can implement the same).
`Engine` is what a runner needs from the engine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sdbot.types import GenerationParams, JobOutput, StepCallback


class Engine(Protocol):
    """What the worker needs from an engine; the real one is `generation.engine.diffusion.DiffusionEngine`.

    `run_batch` is blocking (it runs on a worker thread or a remote process). All params in one
    call share a batch key. `on_step(step, total)` is called after each denoising step, with a
    third argument on the steps that have live previews (see `StepCallback`);
    when `should_stop()` turns true the engine stops between steps and raises `Cancelled`.
    It returns one `JobOutput` per params, in order, and raises `OutOfMemory` when the batch
    does not fit on the device.
    """

    def run_batch(
        self,
        batch: Sequence[GenerationParams],
        on_step: StepCallback,
        should_stop: Callable[[], bool],
    ) -> list[JobOutput]: ...


class BatchRunner(Protocol):
    async def run(
        self,
        batch: Sequence[GenerationParams],
        on_step: StepCallback,
        should_stop: Callable[[], bool],
    ) -> list[JobOutput]:
        """Run one engine call. `on_step(step, total[, previews])` is called on the event loop;
        `should_stop` may be called from any thread. Raises what the engine raises."""
        ...

    def close(self) -> None:
        """Release the runner's thread or process once no more batches will come."""
        ...


class LocalRunner:
    """Runs the blocking engine on one dedicated thread, so the event loop stays responsive and
    batches never overlap on the device (a call that outlives its caller's timeout delays the next
    one rather than running beside it)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdbot-engine")

    async def run(
        self,
        batch: Sequence[GenerationParams],
        on_step: StepCallback,
        should_stop: Callable[[], bool],
    ) -> list[JobOutput]:
        loop = asyncio.get_running_loop()

        def step_from_thread(step: int, total: int, previews: Sequence[bytes | None] | None = None) -> None:
            args = (step, total) if previews is None else (step, total, previews)
            try:
                loop.call_soon_threadsafe(on_step, *args)
            except RuntimeError:  # the loop closed under a call that outlived it: nobody listens
                pass

        return await loop.run_in_executor(
            self._executor, self._engine.run_batch, batch, step_from_thread, should_stop
        )

    def close(self) -> None:
        """Drop calls not yet started; one in progress finishes (or stops) on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)

"""How a batch is executed. The worker only sees `BatchRunner`; each runner is one device's worth of
execution (the in-process engine thread here; a remote worker process can implement the same).
`Engine` is what a runner needs from the engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol

from sdbot.types import GenerationParams, JobOutput, PreviewCallback


class Engine(Protocol):
    """What the worker needs from an engine; the real one is `generation.engine.diffusion.DiffusionEngine`.

    `run_batch` is blocking (it runs on a worker thread or a remote process). All params in one
    call share a batch key. `on_step(step, total)` is called after each denoising step;
    `on_preview(step, total, previews)`, when given, on the steps that have live previews;
    when `should_stop()` turns true the engine stops between steps and raises `Cancelled`.
    It returns one `JobOutput` per params, in order, and raises `OutOfMemory` when the batch
    does not fit on the device.
    """

    def run_batch(
        self,
        batch: Sequence[GenerationParams],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> list[JobOutput]: ...


class BatchRunner(Protocol):
    async def run(
        self,
        batch: Sequence[GenerationParams],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> list[JobOutput]:
        """Run one engine call. `on_step` and `on_preview` are called on the event loop;
        `should_stop` may be called from any thread. Raises what the engine raises."""
        ...

    async def start(
        self,
        batch: Sequence[GenerationParams],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> Awaitable[list[JobOutput]]:
        """Like `run`, but returns as soon as the device is free for the next call; the awaitable
        gives the outputs once what is left (encoding the images) is done. Raises what the engine
        raises on the device; the awaitable raises what encoding raises."""
        ...

    def close(self) -> None:
        """Release the runner's thread or process once no more batches will come."""
        ...


def finished(outputs: list[JobOutput]) -> Awaitable[list[JobOutput]]:
    """`BatchRunner.start`'s answer when nothing is left to do after the device."""
    done: asyncio.Future[list[JobOutput]] = asyncio.get_running_loop().create_future()
    done.set_result(outputs)
    return done


class LocalRunner:
    """Runs the blocking engine on one dedicated thread, so the event loop stays responsive and
    batches never overlap on the device (a call that outlives its caller's timeout delays the next
    one rather than running beside it). An engine whose class has `generate` (the real one) hands
    its PNG encoding to a second thread, so the next batch denoises meanwhile."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdbot-engine")
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdbot-encode")

    async def run(
        self,
        batch: Sequence[GenerationParams],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> list[JobOutput]:
        return await (await self.start(batch, on_step, should_stop, on_preview))

    async def start(
        self,
        batch: Sequence[GenerationParams],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> Awaitable[list[JobOutput]]:
        loop = asyncio.get_running_loop()

        def on_loop(callback: Callable[..., None]) -> Callable[..., None]:
            def from_thread(*args: Any) -> None:
                try:
                    loop.call_soon_threadsafe(callback, *args)
                except RuntimeError:  # the loop closed under a call that outlived it: nobody listens
                    pass

            return from_thread

        arguments = (batch, on_loop(on_step), should_stop, None if on_preview is None else on_loop(on_preview))
        # Looked up on the class: a wrapper forwarding attributes (a test's slowed engine) keeps
        # its own run_batch.
        if getattr(type(self._engine), "generate", None) is None:
            return finished(await loop.run_in_executor(self._executor, partial(self._engine.run_batch, *arguments)))
        generate = self._engine.generate  # type: ignore[attr-defined]
        encode = await loop.run_in_executor(self._executor, partial(generate, *arguments))
        return loop.run_in_executor(self._encoder, encode)

    def close(self) -> None:
        """Drop calls not yet started; one in progress finishes (or stops) on its own, and so does
        encoding already handed over."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._encoder.shutdown(wait=False)

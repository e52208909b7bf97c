"""Generation workers as Ray actors (`SDBOT_WORKERS=ray`; README: "Scaling past one GPU").

Each `EngineActor` is a process that loads the engine once and serves batches; Ray places one per
GPU, across hosts. The bot process keeps the single fair-share queue and runs one `RayRunner` (a
`BatchRunner`) per actor, so the scheduler's one-worker-per-runner design spreads it over the
cluster unchanged.

Across the process boundary:
- Progress: `EngineActor.run` is a streaming generator. It yields a `Step` after each denoising
  step and finally the batch's `JobOutput`s (encoded images and records, never tensors); the
  runner calls `on_step` on the event loop for each `Step`. Live previews are off on Ray workers.
- Cancellation: the actor is async, so a second call, `stop(call)`, runs while `run` waits on the
  engine thread; it raises a number that the engine's `should_stop` reads between steps. The runner
  numbers its calls, and "stop every call up to n" needs no cleanup and cannot reach a later batch.
  The runner polls the worker's `should_stop` every STOP_POLL_S while a batch runs, and also sends
  a stop when its own call is cancelled (job timeout, shutdown).
- Failure: an actor that dies (killed, out of memory, host lost) shows up as `RayActorError`
  (`ActorDiedError`, `ActorUnavailableError`); the runner raises `WorkerLost`, the worker keeps
  what pieces of a split batch already made and puts the unfinished jobs back at the front of their
  users' queues and probes the runner with an empty batch
  until Ray has restarted the actor (`max_restarts=-1`) and it answers with its model loaded. Ray
  never retries a batch by itself (`max_task_retries=0`): the queue decides where it runs again.

Ray is an optional extra: only this module imports it, and the bot imports this module only when
SDBOT_WORKERS=ray.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import ray
import torch
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from generation.engine.config import EngineConfig
from generation.engine.diffusion import DiffusionEngine
from generation.errors import ModelLoadError, WorkerLost
from generation.jobs.runners import LocalRunner, finished
from sdbot.settings import Settings
from sdbot.types import GenerationParams, JobOutput, PreviewCallback

log = logging.getLogger(__name__)

STOP_POLL_S = 0.05  # how soon a cancel reaches the actor; reading the flag costs nothing


@dataclass(frozen=True)
class Step:
    """Progress event: `step` of `total` denoising steps done."""

    step: int
    total: int


@dataclass(frozen=True)
class WorkerInfo:
    """What an actor reports once its model is loaded."""

    model_id: str
    model_revision: str
    native_size: int
    device: str
    host: str
    pid: int


@ray.remote
class EngineActor:
    """One engine in its own process. Async, so `stop` runs beside a `run` in progress; the engine
    itself runs batches one at a time on its own thread (a `LocalRunner`)."""

    def __init__(self, config: EngineConfig, torch_threads: int) -> None:
        # CPU workers share a host: each uses the cores Ray reserved for it, not all of them.
        torch.set_num_threads(torch_threads)
        # Live previews stay in-process: a `Step` carries no picture, so the actor makes none.
        self._engine = DiffusionEngine.load(config.model_copy(update={"previews": False}))
        self._runner = LocalRunner(self._engine)
        self._stop_through = 0  # calls numbered up to this are to stop

    async def describe(self) -> WorkerInfo:
        engine = self._engine
        return WorkerInfo(
            engine.model_id, engine.model_revision, engine.native_size, engine.device,
            socket.gethostname(), os.getpid(),
        )

    @ray.method(num_returns="streaming")
    async def run(self, call: int, batch: list[GenerationParams]) -> AsyncIterator[Step | list[JobOutput]]:
        """Yield a `Step` per denoising step, then the outputs; the engine's errors are raised
        (the caller gets them wrapped in `RayTaskError`)."""
        events: asyncio.Queue[Step | None] = asyncio.Queue()
        generating = asyncio.ensure_future(
            self._runner.run(
                batch, lambda step, total: events.put_nowait(Step(step, total)), lambda: call <= self._stop_through
            )
        )
        # Steps reach the loop before the batch's end does, so the None comes after the last one.
        generating.add_done_callback(lambda _: events.put_nowait(None))
        while (event := await events.get()) is not None:
            yield event
        yield generating.result()

    async def stop(self, call: int) -> None:
        self._stop_through = max(self._stop_through, call)


class RayRunner:
    """A `BatchRunner` on one `EngineActor`."""

    def __init__(self, actor: ActorHandle, info: WorkerInfo, name: str) -> None:
        self.actor = actor
        self.info = info
        self.name = name
        self.batches = 0  # batches served, for tests and benchmarks
        self._calls = itertools.count(1)

    async def run(
        self,
        batch: Sequence[GenerationParams],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> list[JobOutput]:
        """Run one engine call on the actor (`on_preview` is never called: no previews on Ray); raises what the engine raises, or `WorkerLost` if the
        actor died. An empty batch is a liveness probe: it returns [] once the actor answers."""
        call = next(self._calls)
        watcher = asyncio.create_task(self._stop_when(should_stop, call))
        outputs: list[JobOutput] = []
        try:
            async for ref in self.actor.run.remote(call, list(batch)):
                event = await ref
                if isinstance(event, Step):
                    on_step(event.step, event.total)
                else:
                    outputs = event
        except RayTaskError as error:  # the engine raised: hand on its own error, as in-process
            raise error.cause if isinstance(error.cause, Exception) else error from None
        except RayActorError as error:
            raise WorkerLost(f"{self.name} ({self.info.host}) was lost: {_summary(error)}") from error
        except asyncio.CancelledError:
            self.actor.stop.remote(call)  # the worker gave up on the batch: free the engine
            raise
        finally:
            watcher.cancel()
        if batch:
            self.batches += 1
        return outputs

    async def start(
        self,
        batch: Sequence[GenerationParams],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> Awaitable[list[JobOutput]]:
        """The actor encodes before it answers: nothing is left to do here (and makes no previews)."""
        return finished(await self.run(batch, on_step, should_stop))

    def close(self) -> None:
        """End the actor for good (no restart); a batch in progress is lost with it."""
        ray.kill(self.actor, no_restart=True)

    async def _stop_when(self, should_stop: Callable[[], bool], call: int) -> None:
        while not should_stop():
            await asyncio.sleep(STOP_POLL_S)
        self.actor.stop.remote(call)


def worker_plan(settings: Settings, cluster_gpus: float) -> tuple[int, float]:
    """(actors to start, GPUs each reserves). By default one actor per SDBOT_RAY_GPUS_PER_WORKER
    GPUs the cluster offers; on a cluster without GPUs, SDBOT_RAY_NUM_WORKERS CPU actors (default 1)."""
    gpus = settings.ray_gpus_per_worker if cluster_gpus > 0 else 0.0
    if settings.ray_num_workers is not None:
        return settings.ray_num_workers, gpus
    if gpus == 0:
        return 1, 0.0
    workers = math.floor(cluster_gpus / gpus + 1e-9)  # 0.3 / 0.1 is 2.999...: still 3 workers
    if workers < 1:
        raise ModelLoadError(
            f"the Ray cluster offers {cluster_gpus:g} GPU(s), fewer than one worker needs "
            f"(SDBOT_RAY_GPUS_PER_WORKER={gpus:g})"
        )
    return workers, gpus


def start_ray_runners(settings: Settings) -> list[RayRunner]:
    """Join the Ray cluster at SDBOT_RAY_ADDRESS (unset: start a local one) unless already
    connected, start the engine actors and wait until each has loaded its model. Each actor
    reserves SDBOT_RAY_CPUS_PER_WORKER CPUs and runs torch on that many threads. Raises
    ModelLoadError when an actor cannot load the model, or when the actors have not started within
    SDBOT_RAY_START_TIMEOUT_S (the cluster lacks the resources they ask for, say)."""
    if not ray.is_initialized():
        _join_cluster(settings)
    workers, gpus = worker_plan(settings, ray.cluster_resources().get("GPU", 0.0))
    cpus = settings.ray_cpus_per_worker
    log.info("starting %d Ray worker(s), %g GPU(s) and %d CPU(s) each", workers, gpus, cpus)
    # Only the engine's settings travel: the Discord token stays in the bot process.
    config = EngineConfig.from_settings(settings)
    actors = [
        EngineActor.options(  # type: ignore[attr-defined]
            num_gpus=gpus, num_cpus=cpus, max_restarts=-1, max_task_retries=0
        ).remote(config, cpus)
        for _ in range(workers)
    ]
    try:
        infos: list[WorkerInfo] = ray.get(
            [actor.describe.remote() for actor in actors], timeout=settings.ray_start_timeout_s
        )
    except (RayActorError, GetTimeoutError) as error:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if isinstance(error, GetTimeoutError):
            raise ModelLoadError(
                f"the Ray workers had not started after {settings.ray_start_timeout_s:g} s "
                f"(SDBOT_RAY_START_TIMEOUT_S): the cluster has {_resources()}, and {workers} worker(s) "
                f"need {gpus:g} GPU(s) and {cpus} CPU(s) each (SDBOT_RAY_GPUS_PER_WORKER, "
                "SDBOT_RAY_CPUS_PER_WORKER)"
            ) from None
        raise ModelLoadError(f"a Ray worker could not start: {_summary(error)}") from error
    runners = [RayRunner(actor, info, f"ray-worker-{index}") for index, (actor, info) in enumerate(zip(actors, infos, strict=True))]
    for runner in runners:
        info = runner.info
        log.info("%s: %s (revision %s) on %s, host %s pid %d",
                 runner.name, info.model_id, info.model_revision, info.device, info.host, info.pid)
    return runners


def _resources() -> str:
    """The cluster's CPUs and GPUs, as Ray counts them."""
    resources = ray.cluster_resources()
    return f"{resources.get('CPU', 0):g} CPU(s) and {resources.get('GPU', 0):g} GPU(s)"


def _join_cluster(settings: Settings) -> None:
    """`ray.init`, given SDBOT_RAY_START_TIMEOUT_S: against an address nothing answers on, Ray
    itself retries for minutes. It runs on a daemon thread so a hung attempt cannot hold the bot."""
    address = settings.ray_address or "local"  # "local": a new instance, never a stray one
    failure: list[BaseException] = []

    def join() -> None:
        try:
            ray.init(address=address)
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            failure.append(error)

    joining = threading.Thread(target=join, name="sdbot-ray-init", daemon=True)
    joining.start()
    joining.join(settings.ray_start_timeout_s)
    if joining.is_alive():
        raise ModelLoadError(
            f"could not reach the Ray cluster at SDBOT_RAY_ADDRESS={address!r} within "
            f"{settings.ray_start_timeout_s:g} s (SDBOT_RAY_START_TIMEOUT_S); is `ray start` running there?"
        )
    if failure:
        raise ModelLoadError(f"could not join the Ray cluster at SDBOT_RAY_ADDRESS={address!r}: {failure[0]}") from None


def _summary(error: RayActorError) -> str:
    """One line of Ray's report: for a failed __init__ its last (the error raised, after the
    traceback), else its first."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if error.actor_init_failed else lines[0]

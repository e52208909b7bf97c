"""Generation workers as Ray actors: two actors on the tiny model in a local two-CPU Ray instance,
driven by the real JobScheduler over a real store; plus the bot without Ray installed."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths
from generation.errors import ModelLoadError
from generation.jobs.scheduler import JobScheduler
from sdbot.settings import Settings
from sdbot.store import Store
from sdbot.types import JobStatus
from tests.fakes.engine import RecordingListener, new_job, wait_until

try:
    import ray

    from generation.jobs.ray_runner import RayRunner, start_ray_runners, worker_plan
except ModuleNotFoundError:  # without the ray extra only the test of that case runs
    ray = None  # type: ignore[assignment]
needs_ray = pytest.mark.skipif(ray is None, reason='needs the ray extra: pip install -e ".[ray]"')

# Ray's start-up and two actors importing torch and loading the model take a while on two CPUs;
# the first Ray test pays for them.
RAY_TEST_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def actors(tiny_models: TinyModelPaths) -> Iterator[list[RayRunner]]:
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, configure_logging=False)
    try:
        # One CPU and one torch thread per actor: two actors fill the two-CPU instance.
        yield start_ray_runners(tiny_models.settings(ray_num_workers=2, ray_cpus_per_worker=1))
    finally:
        ray.shutdown()


@pytest.fixture
def runners(actors: list[RayRunner], monkeypatch: pytest.MonkeyPatch) -> list[RayRunner]:
    # Each test's scheduler.stop() closes its runners, but these actors serve the whole module
    # (ray.shutdown ends them).
    monkeypatch.setattr(RayRunner, "close", lambda self: None)
    return actors


@needs_ray
@pytest.mark.timeout(RAY_TEST_TIMEOUT_S)
def test_workers_the_cluster_cannot_place_fail_the_start_in_time(actors: list[RayRunner], tiny_models: TinyModelPaths) -> None:
    """Eight CPUs per worker on a two-CPU instance: Ray would wait for ever; the start gives up."""
    settings = tiny_models.settings(ray_num_workers=1, ray_cpus_per_worker=8, ray_start_timeout_s=2)
    with pytest.raises(ModelLoadError, match=r"had not started after 2 s .*need 0 GPU\(s\) and 8 CPU\(s\) each"):
        start_ray_runners(settings)


def scheduler_settings(models: TinyModelPaths, tmp_path: Path) -> Settings:
    # One job per batch, so two workers each take one as soon as two are queued.
    return models.settings(output_dir=tmp_path / "images", max_batch=1, max_queued_per_user=10, job_timeout_s=30)


@needs_ray
@pytest.mark.timeout(RAY_TEST_TIMEOUT_S)
async def test_jobs_spread_over_both_actors(
    runners: list[RayRunner], tiny_models: TinyModelPaths, store: Store, tmp_path: Path
) -> None:
    before = [runner.batches for runner in runners]
    assert len({runner.info.pid for runner in runners}) == 2
    listener = RecordingListener()
    scheduler = JobScheduler(scheduler_settings(tiny_models, tmp_path), store, runners, listener)
    ids = [(await scheduler.submit(new_job(user, seeds=(seed,), steps=4))).job.id
           for seed, user in enumerate((1, 2, 3, 1, 2, 3))]
    await scheduler.start()
    try:
        await listener.wait_finished(*ids, timeout=30)
        assert scheduler.workers_up == 2
    finally:
        await scheduler.stop(grace_s=1.0)
    assert all(listener.status(job_id) == "done" for job_id in ids)
    assert all(runner.batches > served for runner, served in zip(runners, before, strict=True))
    for job_id in ids:
        (image,) = await store.images(job_id)
        assert image.path is not None and Path(image.path).read_bytes().startswith(b"\x89PNG")
        assert image.record["model_id"] == str(tiny_models.pipeline)
        assert listener.progress[job_id][-1] == (4, 4)  # steps crossed the process boundary


@needs_ray
@pytest.mark.timeout(RAY_TEST_TIMEOUT_S)
async def test_cancel_stops_the_engine_in_the_actor(
    runners: list[RayRunner], tiny_models: TinyModelPaths, store: Store, tmp_path: Path
) -> None:
    listener = RecordingListener()
    scheduler = JobScheduler(scheduler_settings(tiny_models, tmp_path), store, runners, listener)
    job_id = (await scheduler.submit(new_job(1, steps=50, size=128))).job.id  # about 2 s to run
    await scheduler.start()
    try:
        await wait_until(lambda: job_id in listener.progress, timeout=10)
        assert await scheduler.cancel(job_id, "by its owner")
        await listener.wait_finished(job_id, timeout=10)
    finally:
        await scheduler.stop(grace_s=1.0)
    assert listener.status(job_id) == "cancelled"
    assert listener.progress[job_id][-1][0] < 50  # stopped between steps, not run to the end


class QueuesAtLoss(logging.Handler):
    """Records the worker log and, when a worker reports its runner lost, each member's queue:
    the worker logs that right after putting the jobs back, before it awaits anything."""

    def __init__(self, scheduler: JobScheduler, users: tuple[int, ...]) -> None:
        super().__init__(logging.INFO)
        self.scheduler, self.users = scheduler, users
        self.messages: list[str] = []
        self.queues: dict[int, list[int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if " is down " in self.messages[-1]:
            self.queues = {user: [job.id for job in self.scheduler.queued_jobs(100, user)] for user in self.users}


@needs_ray
@pytest.mark.timeout(RAY_TEST_TIMEOUT_S)
async def test_a_killed_actor_loses_no_job(
    runners: list[RayRunner], tiny_models: TinyModelPaths, store: Store, tmp_path: Path
) -> None:
    listener = RecordingListener()
    scheduler = JobScheduler(scheduler_settings(tiny_models, tmp_path), store, runners, listener)
    worker_log = QueuesAtLoss(scheduler, users=(1, 2))
    logging.getLogger("generation.jobs.worker").addHandler(worker_log)
    # About 0.8 s each on one thread: long enough to be killed in the middle.
    ids = [(await scheduler.submit(new_job(user, seeds=(seed,), steps=40, size=96))).job.id
           for seed, user in enumerate((1, 2) * 4)]
    await scheduler.start()
    try:
        # Both workers mid-batch: killing actor 0 kills worker-0's batch.
        await wait_until(lambda: sum(job_id in listener.progress for job_id in ids) >= 2, timeout=20)
        ray.kill(runners[0].actor, no_restart=False)
        await wait_until(lambda: scheduler.workers_up == 1, timeout=10)  # down until Ray restarts it
        await listener.wait_finished(*ids, timeout=40)
        await wait_until(lambda: scheduler.workers_up == 2, timeout=30)  # restarted, model loaded
    finally:
        await scheduler.stop(grace_s=1.0)
        logging.getLogger("generation.jobs.worker").removeHandler(worker_log)
    assert {listener.status(job_id) for job_id in ids} == {"done"}
    assert [job.id for job in await store.jobs_with_status(JobStatus.DONE)] == ids
    starts = [job.id for job in listener.started]
    (lost,) = [job_id for job_id in ids if starts.count(job_id) == 2]
    assert any("worker-0 is down" in message and str(lost) in message for message in worker_log.messages)
    assert "worker-0 is up again" in worker_log.messages
    # Queued again ahead of the jobs its member still had waiting (Ray reports the loss about a
    # second after the kill, so worker-1 may have started some of them by then).
    owner = next(job.user_id for job in listener.started if job.id == lost)
    assert worker_log.queues[owner][0] == lost and len(worker_log.queues[owner]) > 1


@needs_ray
@pytest.mark.timeout(5)
@needs_ray
@pytest.mark.timeout(RAY_TEST_TIMEOUT_S)
def test_prompts_for_ray_workers_are_token_counted_before_queueing(
    actors: list[RayRunner], tiny_models: TinyModelPaths, tiny_engine: DiffusionEngine
) -> None:
    from bot.app import ray_model

    model = ray_model(tiny_models.settings(workers="ray"), actors[0].info.native_size)
    assert model.native_size == tiny_engine.native_size
    assert model.count_tokens is not None
    assert model.count_tokens("a lighthouse, (stormy sea:1.2)") == tiny_engine.token_counter()("a lighthouse, (stormy sea:1.2)")


def test_worker_plan_follows_the_cluster(tiny_models: TinyModelPaths) -> None:
    settings = tiny_models.settings
    assert worker_plan(settings(), cluster_gpus=8) == (8, 1.0)
    assert worker_plan(settings(ray_gpus_per_worker=0.5), cluster_gpus=3) == (6, 0.5)
    assert worker_plan(settings(ray_num_workers=2), cluster_gpus=8) == (2, 1.0)
    assert worker_plan(settings(), cluster_gpus=0) == (1, 0.0)  # CPU workers
    assert worker_plan(settings(ray_num_workers=3), cluster_gpus=0) == (3, 0.0)
    with pytest.raises(ModelLoadError, match="SDBOT_RAY_GPUS_PER_WORKER=2"):
        worker_plan(settings(ray_gpus_per_worker=2), cluster_gpus=1)


@pytest.mark.timeout(60)
def test_the_bot_starts_without_ray(tiny_models: TinyModelPaths) -> None:
    script = """
import sys
from pathlib import Path

sys.modules["ray"] = None  # as if Ray were not installed: any import of it fails

from bot.app import make_runners
from generation.engine.config import EngineConfig
from generation.engine.diffusion import DiffusionEngine
from generation.errors import GenerationError
from generation.jobs.runners import LocalRunner
from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths

settings = TinyModelPaths(*map(Path, sys.argv[1:])).settings()
assert settings.workers == "local"
runners, model = make_runners(settings, DiffusionEngine.load(EngineConfig.from_settings(settings)))
assert [type(runner) for runner in runners] == [LocalRunner] and model.native_size == 64
try:
    make_runners(settings.model_copy(update={"workers": "ray"}), None)
except GenerationError as error:
    print(error)
"""
    paths = [str(tiny_models.pipeline), str(tiny_models.safety_checker), str(tiny_models.upscaler),
             str(tiny_models.preview_decoder), str(tiny_models.describer)]
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert 'SDBOT_WORKERS=ray needs Ray' in done.stdout and 'pip install -e ".[ray]"' in done.stdout


def test_an_address_where_no_cluster_answers_fails_the_start_in_time() -> None:
    """Ray alone retries an unreachable address for minutes; the start gives up after the timeout.
    In a subprocess: the attempt it abandons must not touch this process's Ray."""
    script = """
import time
from generation.errors import ModelLoadError
from generation.jobs.ray_runner import start_ray_runners
from sdbot.settings import Settings

started = time.monotonic()
try:
    start_ray_runners(Settings(workers="ray", ray_address="127.0.0.1:1", ray_start_timeout_s=2))
except ModelLoadError as error:
    print(error)
print(f"gave up after {time.monotonic() - started:.1f} s")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert "could not reach the Ray cluster at SDBOT_RAY_ADDRESS='127.0.0.1:1' within 2 s" in done.stdout
    waited = float(done.stdout.rsplit("gave up after ", 1)[1].split(" s")[0])
    assert 2.0 <= waited < 10.0

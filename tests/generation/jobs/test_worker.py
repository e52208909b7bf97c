"""The worker over a fake engine and a real store: batching, failures, cancellation, files, progress,
timeouts and shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from generation.jobs.scheduler import batch_key
from generation.jobs.worker import DESCRIBE_OUT_OF_MEMORY_REASON, OUT_OF_MEMORY_REASON
from sdbot.store import Store
from sdbot.types import JobOutput, JobRow, JobStatus, PipelineKind
from tests.fakes.engine import (
    FAIL_MARKER,
    FLAG_MARKER,
    LOSE_MARKER,
    FakeEngine,
    RecordingListener,
    fake_pixels,
    make_settings,
    new_job,
    running_scheduler,
    wait_until,
)


async def test_batches_share_a_key_keep_user_order_and_honour_max_batch(store: Store, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_queued_per_user=10)
    engine = FakeEngine()
    async with running_scheduler(store, settings, engine, start=False) as (scheduler, listener):
        submitted = [
            (await scheduler.submit(new_job(user, size=size, seeds=seeds))).job
            for user, size, seeds in [
                (1, 64, (1,)), (1, 128, (2,)), (1, 64, (3,)), (2, 64, (4, 5)),
                (3, 64, (6, 7)), (3, 128, (8,)), (4, 64, (9,)),
            ]
        ]
        await scheduler.start()
        await listener.wait_finished(*(job.id for job in submitted))
    by_seeds = {job.seeds[0]: job for job in submitted}
    keys = [{batch_key(by_seeds[params.seeds[0]]) for params in call} for call in engine.calls]
    assert all(len(call_keys) == 1 for call_keys in keys)
    assert all(sum(p.image_count for p in call) <= settings.max_batch for call in engine.calls)
    served = [params.seeds[0] for call in engine.calls for params in call]
    for user in (1, 2, 3, 4):
        own = [job.seeds[0] for job in submitted if job.user_id == user]
        assert [seed for seed in served if seed in own] == own
    # The first batch: user 1's first 64 px job, then the next 64 px heads in fair order up to 4
    # images (user 1's third job may not overtake its 128 px second one).
    assert [p.seeds for p in engine.calls[0]] == [(1,), (4, 5)]


async def test_idle_worker_starts_at_once(store: Store, tmp_path: Path) -> None:
    engine = FakeEngine()
    async with running_scheduler(store, make_settings(tmp_path), engine) as (scheduler, listener):
        started = time.monotonic()
        receipt = await scheduler.submit(new_job(1))
        await listener.wait_finished(receipt.job.id)
        assert time.monotonic() - started < 1.0
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 1


async def test_done_job_writes_files_and_records_images(store: Store, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running_scheduler(store, settings, FakeEngine()) as (scheduler, listener):
        job = (await scheduler.submit(new_job(1, seeds=(11, 12)))).job
        flagged = (await scheduler.submit(new_job(2, prompt=f"{FLAG_MARKER} cat"))).job
        await listener.wait_finished(job.id, flagged.id)
    row, images, output = listener.finished[job.id]
    assert row.status == JobStatus.DONE and output is not None
    assert (row.scheduler, row.model_revision) == ("FakeScheduler", "fake-revision")
    expected = [tmp_path / "images" / "100" / str(job.id) / f"sdbot-{job.id}-{i + 1}-{seed}.png"
                for i, seed in enumerate((11, 12))]
    assert [Path(image.path) for image in images if image.path] == expected
    assert expected[1].read_bytes() == fake_pixels(job.params(), 12)
    assert await store.images(job.id) == images
    assert images[0].record["seed"] == 11 and images[0].record["pipeline"] == "text2img"
    (withheld,) = listener.finished[flagged.id][1]
    assert withheld.path is None and withheld.flagged
    assert listener.finished[flagged.id][0].status == JobStatus.DONE


async def test_progress_is_reported_per_step_for_every_job_of_the_batch(store: Store, tmp_path: Path) -> None:
    async with running_scheduler(store, make_settings(tmp_path), FakeEngine(), start=False) as (scheduler, listener):
        ids = [(await scheduler.submit(new_job(user, steps=3))).job.id for user in (1, 2)]
        await scheduler.start()
        await listener.wait_finished(*ids)
    assert [job.id for job in listener.started] == ids
    assert all(job.status == JobStatus.RUNNING for job in listener.started)
    for job_id in ids:
        assert listener.progress[job_id] == [(1, 3), (2, 3), (3, 3)]


async def test_each_job_of_a_batch_gets_its_own_previews_and_a_flagged_one_none(store: Store, tmp_path: Path) -> None:
    engine = FakeEngine(step_s=0.01)
    async with running_scheduler(store, make_settings(tmp_path), engine, start=False) as (scheduler, listener):
        plain, flagged, dropped = [
            (await scheduler.submit(new_job(user, prompt=prompt, steps=30))).job.id
            for user, prompt in ((1, "a fox"), (2, f"{FLAG_MARKER} fox"), (3, "a cat"))
        ]
        await scheduler.start()
        await wait_until(lambda: dropped in listener.previews)
        assert await scheduler.cancel(dropped, "by its owner")
        await listener.wait_finished(plain, flagged, dropped)
    assert len(engine.calls) == 1  # one batch
    assert listener.previews[plain] == [f"preview|a fox|{step}".encode() for step in range(1, 30)]
    assert flagged not in listener.previews  # the engine withheld it: nothing reaches the bot
    assert 0 < len(listener.previews[dropped]) < 29  # none after its cancellation


async def test_failing_job_is_isolated_and_refunded(store: Store, tmp_path: Path) -> None:
    engine = FakeEngine()
    async with running_scheduler(store, make_settings(tmp_path), engine, start=False) as (scheduler, listener):
        ids = [(await scheduler.submit(new_job(user, prompt=prompt))).job.id
               for user, prompt in ((1, "fine"), (2, f"{FAIL_MARKER} now"), (3, "also fine"))]
        await scheduler.start()
        await listener.wait_finished(*ids)
        assert scheduler.workers_up == 1
    assert [len(call) for call in engine.calls] == [3, 1, 1, 1]  # the batch, then one by one
    assert [listener.status(job_id) for job_id in ids] == ["done", "failed", "done"]
    failed = listener.finished[ids[1]][0]
    assert failed.status_reason == "RuntimeError: the fake engine broke on purpose"
    assert (await store.quota(100, 2)).used == 0
    assert (await store.quota(100, 1)).used == 1


async def test_out_of_memory_splits_the_batch_and_fails_what_never_fits(store: Store, tmp_path: Path) -> None:
    engine = FakeEngine(oom_above_images=1)
    async with running_scheduler(store, make_settings(tmp_path), engine, start=False) as (scheduler, listener):
        small = [(await scheduler.submit(new_job(user))).job.id for user in (1, 2, 3)]
        big = (await scheduler.submit(new_job(4, size=128, seeds=(1, 2)))).job.id
        await scheduler.start()
        await listener.wait_finished(*small, big)
    assert [len(call) for call in engine.calls] == [3, 1, 2, 1, 1, 1]
    assert [listener.status(job_id) for job_id in small] == ["done"] * 3
    assert listener.status(big) == "failed"
    assert listener.finished[big][0].status_reason == OUT_OF_MEMORY_REASON


async def test_a_describe_that_runs_out_of_memory_says_so_in_its_own_words(store: Store, tmp_path: Path) -> None:
    engine = FakeEngine(oom_above_images=-1)  # nothing fits
    async with running_scheduler(store, make_settings(tmp_path), engine) as (scheduler, listener):
        described = (await scheduler.submit(new_job(1, pipeline=PipelineKind.CAPTION))).job.id
        await listener.wait_finished(described)
    assert listener.status(described) == "failed"
    assert listener.finished[described][0].status_reason == DESCRIBE_OUT_OF_MEMORY_REASON


async def test_a_lost_runner_costs_only_the_unfinished_pieces_of_a_split_batch(store: Store, tmp_path: Path) -> None:
    engine = FakeEngine(oom_above_images=1)  # the batch of two is split, then the runner dies on the second
    async with running_scheduler(store, make_settings(tmp_path), engine, start=False) as (scheduler, listener):
        made = (await scheduler.submit(new_job(1, prompt="a lighthouse"))).job.id
        lost = (await scheduler.submit(new_job(2, prompt=f"{LOSE_MARKER} the cable"))).job.id
        await scheduler.start()
        await listener.wait_finished(made, lost)
    alone = [[params.prompt for params in call] for call in engine.calls if len(call) == 1]
    assert alone.count(["a lighthouse"]) == 1  # made once, kept when the runner died after it
    assert alone.count([f"{LOSE_MARKER} the cable"]) == 2  # lost with the runner, run again
    assert listener.status(made) == listener.status(lost) == "done"


async def test_cancel_running_job_stops_between_steps(store: Store, tmp_path: Path) -> None:
    engine = FakeEngine(step_s=0.02)
    async with running_scheduler(store, make_settings(tmp_path), engine) as (scheduler, listener):
        job = (await scheduler.submit(new_job(1, steps=200, seeds=(1, 2)))).job
        await wait_until(lambda: job.id in listener.progress)
        assert scheduler.is_running(job.id)
        assert await scheduler.cancel(job.id, "by its owner")
        await listener.wait_finished(job.id, timeout=2.0)
        assert not scheduler.is_running(job.id)
        assert scheduler.workers_up == 1
    row, images, _ = listener.finished[job.id]
    assert (row.status, row.status_reason, images) == (JobStatus.CANCELLED, "by its owner", [])
    assert engine.steps_run[0] < 200
    assert (await store.quota(100, 1)).used == 0


async def test_cancelled_job_in_a_continuing_batch_has_its_result_discarded(store: Store, tmp_path: Path) -> None:
    engine = FakeEngine(step_s=0.01)
    async with running_scheduler(store, make_settings(tmp_path), engine, start=False) as (scheduler, listener):
        keep, drop = [(await scheduler.submit(new_job(user, steps=50))).job.id for user in (1, 2)]
        await scheduler.start()
        await wait_until(lambda: drop in listener.progress)
        assert await scheduler.cancel(drop, "by a moderator")
        await listener.wait_finished(keep, drop)
    assert engine.steps_run == [50]  # the batch went on for the other job
    assert listener.status(keep) == "done" and listener.status(drop) == "cancelled"
    assert await store.images(drop) == []
    assert len(listener.progress[keep]) == 50 > len(listener.progress[drop])


async def test_timeout_fails_the_batch_and_the_worker_goes_on(store: Store, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, job_timeout_s=0.2)
    engine = FakeEngine(step_s=0.05)
    async with running_scheduler(store, settings, engine) as (scheduler, listener):
        slow = (await scheduler.submit(new_job(1, steps=100))).job.id
        fast = (await scheduler.submit(new_job(2, steps=1))).job.id
        await listener.wait_finished(slow, fast)
    assert listener.status(slow) == "failed"
    assert "longer than 0.2 s" in (listener.finished[slow][0].status_reason or "")
    assert listener.status(fast) == "done"


async def test_missing_source_image_is_regenerated(store: Store, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    engine = FakeEngine()
    async with running_scheduler(store, settings, engine) as (scheduler, listener):
        source = (await scheduler.submit(new_job(1, seeds=(21, 22)))).job
        await listener.wait_finished(source.id)
        original = (await store.images(source.id))[1]
        assert original.path is not None
        Path(original.path).unlink()
        variation = (await scheduler.submit(new_job(
            1, pipeline=PipelineKind.IMG2IMG, seeds=(5,), source_job_id=source.id, source_index=1,
            source_path=original.path,
        ))).job
        await listener.wait_finished(variation.id)
    assert listener.status(variation.id) == "done"
    regenerated = Path(original.path).read_bytes()
    assert regenerated == fake_pixels(source.params(), 22)  # the same seed gives the same image
    assert engine.calls[-1][0].source_image == regenerated
    assert (await store.images(source.id))[1].path == original.path


async def test_missing_source_without_a_job_to_redo_fails_clearly(store: Store, tmp_path: Path) -> None:
    async with running_scheduler(store, make_settings(tmp_path), FakeEngine()) as (scheduler, listener):
        job = (await scheduler.submit(new_job(
            1, pipeline=PipelineKind.IMG2IMG, source_path=str(tmp_path / "gone.png")
        ))).job
        await listener.wait_finished(job.id)
    assert listener.finished[job.id][0].status_reason == "the source image is no longer available"


async def test_an_error_in_the_workers_own_steps_fails_the_job_and_the_worker_goes_on(
    store: Store, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("images cannot be written under a file")
    settings = make_settings(tmp_path, output_dir=blocker)
    async with running_scheduler(store, settings, FakeEngine()) as (scheduler, listener):
        first = (await scheduler.submit(new_job(1))).job.id
        await listener.wait_finished(first)
        flagged = (await scheduler.submit(new_job(2, prompt=FLAG_MARKER))).job.id  # writes no file
        await listener.wait_finished(flagged)
    assert listener.status(first) == "failed"
    assert (listener.finished[first][0].status_reason or "").startswith("internal error (")
    assert listener.status(flagged) == "done"


class _BrokenListener(RecordingListener):
    async def job_started(self, job: JobRow) -> None:
        raise RuntimeError("listener bug")

    def job_progress(self, job_id: int, step: int, total: int) -> None:
        raise RuntimeError("listener bug")


async def test_listener_errors_never_stop_the_worker(store: Store, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running_scheduler(store, settings, FakeEngine(), listener=_BrokenListener()) as (scheduler, listener):
        ids = [(await scheduler.submit(new_job(user))).job.id for user in (1, 2)]
        await listener.wait_finished(*ids)
        assert [listener.status(job_id) for job_id in ids] == ["done", "done"]
        assert scheduler.workers_up == 1


async def test_stop_lets_a_running_batch_finish_within_grace(store: Store, tmp_path: Path) -> None:
    gate = threading.Event()
    async with running_scheduler(store, make_settings(tmp_path), FakeEngine(gate=gate)) as (scheduler, listener):
        job = (await scheduler.submit(new_job(1))).job
        await wait_until(lambda: scheduler.is_running(job.id))
        asyncio.get_running_loop().call_later(0.1, gate.set)
        await scheduler.stop(grace_s=5.0)
        assert listener.status(job.id) == "done"
        assert scheduler.workers_up == 0


class SlowEncodingEngine(FakeEngine):
    """Hands its encoding back to the runner, as the real engine does, and encodes only when the
    test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.encode_gate = threading.Event()

    def generate(self, batch, on_step, should_stop, on_preview=None):  # type: ignore[no-untyped-def]
        outputs = self.run_batch(batch, on_step, should_stop, on_preview)

        def encode() -> list[JobOutput]:
            assert self.encode_gate.wait(10)
            return outputs

        return encode


async def test_the_next_batch_runs_while_the_last_one_is_encoded(store: Store, tmp_path: Path) -> None:
    engine = SlowEncodingEngine()
    async with running_scheduler(store, make_settings(tmp_path, max_batch=1), engine) as (scheduler, listener):
        first = (await scheduler.submit(new_job(1, seeds=(1,)))).job
        second = (await scheduler.submit(new_job(2, seeds=(2,)))).job
        # The second engine call starts while the first batch still waits for its PNGs.
        await wait_until(lambda: len(engine.calls) == 2)
        stored = await store.get_job(first.id)
        assert stored is not None and stored.status == JobStatus.RUNNING  # not done before its files exist
        assert not listener.finished
        engine.encode_gate.set()
        await listener.wait_finished(first.id, second.id)
    assert listener.finish_order == [first.id, second.id]
    for job_id in (first.id, second.id):
        images = await store.images(job_id)
        assert images and all(Path(image.path).is_file() for image in images if image.path)
        assert listener.status(job_id) == "done"

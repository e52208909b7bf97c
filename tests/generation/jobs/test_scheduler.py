"""The scheduler facade over a real SQLite store: admission, refusals, cancellation, recovery."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from generation.errors import QueueRefused
from sdbot.store import QuotaExceeded, Store
from sdbot.types import JobStatus
from tests.fakes.engine import (
    FakeEngine,
    make_settings,
    new_job,
    running_scheduler,
    wait_until,
)


async def test_submit_stores_charges_and_reports_position(store: Store, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running_scheduler(store, settings, FakeEngine(), start=False) as (scheduler, _):
        first = await scheduler.submit(new_job(1))
        second = await scheduler.submit(new_job(1, seeds=(1, 2)))
        other = await scheduler.submit(new_job(2))
        assert first.job.status == JobStatus.QUEUED
        assert (first.position, second.position, other.position) == (0, 1, 1)
        assert 0 < first.eta_s < second.eta_s
        assert (await store.quota(100, 1)).used == 3
        assert scheduler.queue_length == 3
        assert [job.id for job in scheduler.queued_jobs(100, 1)] == [first.job.id, second.job.id]
        assert scheduler.position(second.job.id)[0] == 2  # type: ignore[index]  # behind user 2's
        assert scheduler.position(12345) is None


async def test_per_user_limit_refuses_before_charging(store: Store, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_queued_per_user=2)
    async with running_scheduler(store, settings, FakeEngine(), start=False) as (scheduler, _):
        for _ in range(2):
            await scheduler.submit(new_job(1))
        with pytest.raises(QueueRefused, match="you already have 2 jobs queued"):
            scheduler.check_can_submit((100, 1))
        with pytest.raises(QueueRefused):
            await scheduler.submit(new_job(1))
        assert (await store.quota(100, 1)).used == 2
        assert len(await store.jobs_with_status(JobStatus.QUEUED)) == 2
        await scheduler.submit(new_job(2))  # others are unaffected


async def test_full_queue_refuses(store: Store, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, queue_capacity=2)
    async with running_scheduler(store, settings, FakeEngine(), start=False) as (scheduler, _):
        await scheduler.submit(new_job(1))
        await scheduler.submit(new_job(2))
        with pytest.raises(QueueRefused, match=r"the queue is full \(2 jobs\)"):
            await scheduler.submit(new_job(3))
        assert (await store.quota(100, 3)).used == 0


async def test_quota_refusal_queues_nothing(store: Store, tmp_path: Path) -> None:
    async with running_scheduler(store, make_settings(tmp_path), FakeEngine(), start=False) as (scheduler, _):
        with pytest.raises(QuotaExceeded):
            await scheduler.submit(new_job(1, seeds=tuple(range(11))))  # the fixture's quota is 10
        assert scheduler.queue_length == 0


async def test_cancel_queued_job_refunds_and_reports(store: Store, tmp_path: Path) -> None:
    async with running_scheduler(store, make_settings(tmp_path), FakeEngine(), start=False) as (scheduler, listener):
        receipt = await scheduler.submit(new_job(1, seeds=(1, 2, 3)))
        assert await scheduler.cancel(receipt.job.id, "by its owner")
        assert not await scheduler.cancel(receipt.job.id, "again")
        job, images, output = listener.finished[receipt.job.id]
        assert (job.status, job.status_reason, images, output) == (JobStatus.CANCELLED, "by its owner", [], None)
        assert (await store.quota(100, 1)).used == 0
        assert scheduler.queue_length == 0


async def test_heavy_user_does_not_delay_light_users(store: Store, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_queued_per_user=40, max_batch=1)
    await store.set_user_quota(100, 9, 1, None)
    async with running_scheduler(store, settings, FakeEngine(), start=False) as (scheduler, listener):
        heavy = [(await scheduler.submit(new_job(1, seeds=(n,)))).job.id for n in range(20)]
        light = [(await scheduler.submit(new_job(user))).job.id for user in range(2, 6)]
        await scheduler.start()
        await listener.wait_finished(*heavy, *light)
    order = listener.finish_order
    assert max(order.index(job_id) for job_id in light) < order.index(heavy[5])


async def test_restart_recovers_unfinished_jobs_in_order(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    settings = make_settings(tmp_path, max_batch=1)
    gate = threading.Event()  # never opened: the first job hangs until shutdown stops it
    store = await Store.open(path)
    async with running_scheduler(store, settings, FakeEngine(gate=gate)) as (scheduler, listener):
        ids = [(await scheduler.submit(new_job(user, prompt=f"job {n}"))).job.id
               for n, user in enumerate((1, 1, 2, 1))]
        await wait_until(lambda: scheduler.is_running(ids[0]))
    # Leaving the block stopped the scheduler after a 1 s grace: the hung job went back to queued.
    assert [job.id for job in await store.jobs_with_status(JobStatus.QUEUED)] == ids
    assert listener.finished == {}
    await store.close()

    store = await Store.open(path)
    engine = FakeEngine()
    async with running_scheduler(store, settings, engine) as (scheduler, listener):
        await listener.wait_finished(*ids)
        assert scheduler.workers_up == 1
    # The interrupted job first, then fair order with each member's jobs in the order accepted.
    assert [call[0].prompt for call in engine.calls] == ["job 0", "job 2", "job 1", "job 3"]
    assert all(listener.status(job_id) == "done" for job_id in ids)
    await store.close()


async def test_weight_changes_a_members_share(store: Store, tmp_path: Path) -> None:
    async with running_scheduler(store, make_settings(tmp_path), FakeEngine(), start=False) as (scheduler, _):
        await scheduler.set_weight((100, 1), 3.0, moderator_id=9)
        mine = [(await scheduler.submit(new_job(1))).job.id for _ in range(3)]
        for _ in range(3):
            await scheduler.submit(new_job(2))
        # Weight 3: all three of user 1's jobs come before user 2's second (with weight 1: fifth).
        assert scheduler.position(mine[2])[0] == 3  # type: ignore[index]
        assert scheduler.workers_up == 0
        await scheduler.start()
        assert scheduler.workers_up == 1
    assert scheduler.workers_up == 0


async def test_shares_are_kept_across_restarts_and_audited(store: Store, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running_scheduler(store, settings, FakeEngine()) as (scheduler, _):
        await scheduler.set_weight((100, 1), 2.5, moderator_id=9)
    async with running_scheduler(store, settings, FakeEngine()) as (restarted, _):
        assert restarted.weight((100, 1)) == 2.5
        await restarted.set_weight((100, 1), 1.0, moderator_id=9)
    assert await store.queue_shares() == {}
    assert [entry.details for entry in await store.audit_entries(100)] == [{"weight": 1.0}, {"weight": 2.5}]

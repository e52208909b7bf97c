import asyncio
import sqlite3
from pathlib import Path

import pytest

from sdbot.migrate import MigrationError, bundled_migrations_dir, load_migrations
from sdbot.store import QuotaExceeded, Store, day_start
from sdbot.types import (
    GenerationParams,
    ImageRow,
    JobKind,
    JobStatus,
    NewJob,
    PipelineKind,
)

GUILD, USER, MOD = 1, 2, 3


def new_job(user: int = USER, images: int = 2, guild: int = GUILD) -> NewJob:
    return NewJob(
        kind=JobKind.IMAGINE,
        guild_id=guild,
        channel_id=10,
        user_id=user,
        model_id="tiny",
        params=GenerationParams(
            pipeline=PipelineKind.TEXT2IMG, prompt="a cat", seeds=tuple(range(images)),
            steps=4, guidance=0.0, width=64, height=64,
        ),
    )


async def test_migrations_from_empty_reach_latest(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "new" / "db.sqlite3")
    latest = load_migrations(bundled_migrations_dir())[-1].version
    assert await store.schema_version() == latest
    await store.close()
    with sqlite3.connect(tmp_path / "new" / "db.sqlite3") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"jobs", "images", "quota_overrides", "usage_ledger", "audit_log"} <= tables


async def test_migrating_twice_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    first = await Store.open(path)
    job = await first.create_job(new_job())
    await first.close()
    second = await Store.open(path)
    assert await second.schema_version() == load_migrations(bundled_migrations_dir())[-1].version
    assert (await second.get_job(job.id)) == job
    await second.close()


async def test_upgrade_from_the_first_version_keeps_the_data(tmp_path: Path) -> None:
    first_only = tmp_path / "migrations"
    first_only.mkdir()
    (first_only / "0001_initial.sql").write_text((bundled_migrations_dir() / "0001_initial.sql").read_text())
    path = tmp_path / "db.sqlite3"
    old = await Store.open(path, migrations_dir=first_only)
    await old.close()
    with sqlite3.connect(path) as db:  # a job as the first version wrote it (today's code writes more columns)
        db.execute(
            """INSERT INTO jobs (kind, pipeline, guild_id, channel_id, user_id, prompt, seeds, steps,
                   guidance, width, height, model_id, created_at)
               VALUES ('imagine', 'text2img', ?, 1, ?, 'a cat', '[5]', 2, 0.0, 64, 64, 'tiny', 1.0)""",
            (GUILD, USER),
        )
    upgraded = await Store.open(path)
    assert await upgraded.schema_version() == load_migrations(bundled_migrations_dir())[-1].version > 1
    job = await upgraded.get_job(1)
    assert job is not None and (job.prompt, job.seeds, job.user_id) == ("a cat", [5], USER)
    assert (job.tile, job.typed_prompt, job.styles) == (False, None, [])
    await upgraded.set_queue_share(GUILD, MOD, USER, 2.0)
    assert await upgraded.queue_shares() == {(GUILD, USER): 2.0}
    await upgraded.close()


async def test_broken_migration_leaves_previous_version(tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_initial.sql").write_text((bundled_migrations_dir() / "0001_initial.sql").read_text())
    (migrations / "0002_broken.sql").write_text(
        "CREATE TABLE half_done (id INTEGER);\nALTER TABLE no_such_table ADD COLUMN x INTEGER;\n"
    )
    path = tmp_path / "db.sqlite3"
    with pytest.raises(MigrationError, match=r"0002_broken.sql failed.*stays at schema version 1"):
        await Store.open(path, migrations_dir=migrations)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in names and "jobs" in names


async def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(MigrationError, match="newer than this sdbot knows"):
        await Store.open(path)


async def test_concurrent_writers_do_not_lock(store: Store) -> None:
    async def writer(user: int) -> None:
        for _ in range(5):
            job = await store.create_job(new_job(user=user, images=1))
            await store.mark_running([job.id])
            await store.fail_job(job.id, "test")

    await asyncio.gather(*(writer(user) for user in range(100, 140)))
    failed = await store.jobs_with_status(JobStatus.FAILED)
    assert len(failed) == 200
    assert (await store.quota(GUILD, 100)).used == 0  # every charge was refunded


async def test_quota_charge_and_refusal(store: Store) -> None:
    await store.create_job(new_job(images=4))
    await store.create_job(new_job(images=4))
    with pytest.raises(QuotaExceeded) as refused:
        await store.create_job(new_job(images=4))
    assert (refused.value.limit, refused.value.used) == (10, 8)
    assert len(await store.jobs_with_status(JobStatus.QUEUED)) == 2  # the refused job was not stored
    assert (await store.quota(GUILD, USER)).remaining == 2


async def test_cancel_refunds_and_cannot_end_twice(store: Store) -> None:
    job = await store.create_job(new_job(images=4))
    assert await store.cancel_job(job.id, "cancelled by its owner")
    assert not await store.fail_job(job.id, "too late")
    ended = await store.get_job(job.id)
    assert ended is not None
    assert (ended.status, ended.status_reason) == (JobStatus.CANCELLED, "cancelled by its owner")
    assert (await store.quota(GUILD, USER)).used == 0


async def test_finished_job_keeps_images_and_is_guild_scoped(store: Store) -> None:
    job = await store.create_job(new_job(images=2))
    await store.mark_running([job.id])
    images = [
        ImageRow(job_id=job.id, idx=i, seed=i, width=64, height=64, path=f"/x/{i}.png",
                 format="png", flagged=i == 1, nsfw_score=0.1, record={"seed": i})
        for i in range(2)
    ]
    assert await store.finish_job(job.id, images, scheduler="Euler", model_revision="abc")
    assert await store.images(job.id) == images
    done = await store.get_job(job.id, guild_id=GUILD)
    assert done is not None and done.status == JobStatus.DONE and done.model_revision == "abc"
    assert await store.get_job(job.id, guild_id=999) is None
    assert not await store.cancel_job(job.id, "too late")  # a finished job is not refunded


async def test_overrides_defaults_and_audit(store: Store) -> None:
    await store.set_guild_default_quota(GUILD, MOD, 3)
    assert (await store.quota(GUILD, USER)).limit == 3
    await store.set_user_quota(GUILD, MOD, USER, None)
    status = await store.quota(GUILD, USER)
    assert status.limit is None and status.is_override
    await store.create_job(new_job(images=4))  # unlimited: more than the default 3
    assert await store.reset_user_quota(GUILD, MOD, USER) == 4
    status = await store.quota(GUILD, USER)
    assert (status.limit, status.used, status.is_override) == (3, 0, False)
    actions = [entry.action for entry in await store.audit_entries(GUILD)]
    assert actions == ["quota.reset", "quota.set", "quota.default"]
    assert all(entry.moderator_id == MOD for entry in await store.audit_entries(GUILD))


async def test_usage_counts_per_utc_day(store: Store) -> None:
    yesterday = day_start(1_700_000_000) - 3600
    await store.create_job(new_job(images=4), now=yesterday)
    assert (await store.quota(GUILD, USER, now=yesterday)).used == 4
    assert (await store.quota(GUILD, USER, now=yesterday + 7200)).used == 0


async def test_requeue_and_recovery_order(store: Store) -> None:
    jobs = [await store.create_job(new_job(user=u, images=1)) for u in (5, 6, 7)]
    await store.mark_running([jobs[1].id])
    await store.requeue([jobs[1].id])
    waiting = await store.jobs_with_status(JobStatus.QUEUED, JobStatus.RUNNING)
    assert [job.id for job in waiting] == [job.id for job in jobs]
    assert all(job.status == JobStatus.QUEUED for job in waiting)


async def test_cancelled_writers_leave_no_open_transaction(store: Store) -> None:
    """A task cancelled in the middle of a write (a worker at shutdown) must not wedge the store."""
    for delay in (0, 0.0005, 0.001, 0.002, 0.005):
        task = asyncio.create_task(store.create_job(new_job(images=1)))
        await asyncio.sleep(delay)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    job = await store.create_job(new_job(user=77, images=1))
    assert await store.cancel_job(job.id, "still writable")


async def test_an_ended_job_stays_undelivered_until_its_post_is_recorded(store: Store) -> None:
    done = await store.create_job(new_job())
    failed = await store.create_job(new_job())
    await store.create_job(new_job())  # still queued: the scheduler's to recover, not delivery's
    await store.finish_job(done.id, [])
    await store.fail_job(failed.id, "boom")
    assert [job.id for job in await store.undelivered_jobs()] == [done.id, failed.id]
    await store.mark_delivered(done.id, 555)
    [left] = await store.undelivered_jobs()
    assert left.id == failed.id
    delivered = await store.get_job(done.id)
    assert delivered is not None and delivered.result_message_id == 555 and delivered.delivered_at is not None


async def test_jobs_ended_before_delivery_was_tracked_are_not_posted_again(tmp_path: Path) -> None:
    before = tmp_path / "migrations"
    before.mkdir()
    for name in ("0001_initial.sql", "0002_queue_shares.sql"):
        (before / name).write_text((bundled_migrations_dir() / name).read_text())
    path = tmp_path / "db.sqlite3"
    old = await Store.open(path, migrations_dir=before)
    await old.close()
    with sqlite3.connect(path) as db:  # a job that ended under the version before delivery tracking
        db.execute(
            """INSERT INTO jobs (kind, pipeline, guild_id, channel_id, user_id, prompt, seeds, steps,
                   guidance, width, height, model_id, created_at, status, finished_at)
               VALUES ('imagine', 'text2img', ?, 1, ?, 'a cat', '[5]', 2, 0.0, 64, 64, 'tiny', 1.0, 'done', 2.0)""",
            (GUILD, USER),
        )
    upgraded = await Store.open(path)
    assert [job.status for job in await upgraded.jobs_with_status(JobStatus.DONE)] == [JobStatus.DONE]
    assert await upgraded.undelivered_jobs() == []
    await upgraded.close()


async def test_a_describe_job_charges_no_image_and_keeps_its_suggestions(store: Store) -> None:
    caption = GenerationParams(pipeline=PipelineKind.CAPTION, seeds=(7,), steps=1, guidance=0.0, width=64, height=64)
    job = await store.create_job(new_job().model_copy(update={"kind": JobKind.DESCRIBE, "params": caption}))
    assert (job.kind, job.pipeline) == (JobKind.DESCRIBE, PipelineKind.CAPTION)
    assert (await store.quota(GUILD, USER)).used == 0
    assert await store.suggestions(job.id) == []
    await store.save_suggestions(job.id, ["red fox, snow", "a fox"])
    await store.save_suggestions(job.id, ["red fox, snow", "fox in winter", "fox", "snow"])
    await store.finish_job(job.id, [])
    assert await store.suggestions(job.id) == ["red fox, snow", "fox in winter", "fox", "snow"]
    with pytest.raises(sqlite3.IntegrityError):  # the widened CHECK still refuses kinds nobody knows
        await store._db.execute("UPDATE jobs SET kind = 'painting' WHERE id = ?", (job.id,))

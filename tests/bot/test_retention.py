"""Retention and backups of a running bot: old image files are pruned (records stay, buttons make the
source again), and a backup taken while jobs finish holds every job finished before it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from generation.engine.diffusion import DiffusionEngine
from generation.jobs.retention import DAY_S, prune_images
from sdbot.store import Store, backup_database
from sdbot.types import JobStatus
from tests.fakes.bot import BotHarness, SlowedEngine


async def test_prune_removes_only_old_files_and_buttons_on_a_pruned_job_still_work(harness: BotHarness) -> None:
    fake, store = harness.fake, harness.store
    assert store is not None
    results = []
    for prompt in ("an old harbour", "a new harbour"):
        handle = await fake.slash(fake.member, "imagine", prompt=prompt, count=1)
        results.append(await handle.wait_original(lambda m: bool(m.attachments), timeout=30))
    new, old = await store.recent_jobs(fake.guild.id, fake.member.id)
    [old_image], [new_image] = await store.images(old.id), await store.images(new.id)
    assert old.finished_at is not None and new.finished_at is not None
    # One day's retention, seen from a moment when only the first job is over a day old.
    later = (old.finished_at + new.finished_at) / 2 + DAY_S

    dry = await prune_images(store, 1, dry_run=True, now=later)
    assert (dry.files, dry.jobs) == (1, 1) and dry.bytes == Path(old_image.path or "").stat().st_size
    assert Path(old_image.path or "").exists()

    done = await prune_images(store, 1, now=later)
    assert (done.files, done.jobs) == (1, 1)
    assert not Path(old_image.path or "").exists() and Path(new_image.path or "").exists()
    assert (await store.get_job(old.id)).status == JobStatus.DONE  # type: ignore[union-attr]
    [pruned] = await store.images(old.id)
    assert pruned.pruned_at is not None and pruned.path == old_image.path
    assert (await prune_images(store, 1, now=later)).files == 0  # nothing left to prune

    record = await fake.slash(fake.member, "job", id=old.id)
    await record.wait_response()
    field = next(f for f in record.embeds[0]["fields"] if f["name"] == "Files pruned")
    assert "image 1" in field["value"] and "seed" in field["value"]

    click = await fake.click(fake.member, results[0], results[0].button(label="U1")["custom_id"])
    upscaled = await click.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert upscaled.attachments[0].image().size == (128, 128)
    [regenerated] = await store.images(old.id)
    assert regenerated.pruned_at is None and Path(regenerated.path or "").read_bytes()


async def test_the_bot_prunes_in_the_background_when_retention_is_set(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="short-lived", count=1)
    await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    [job] = await harness.store.recent_jobs(fake.guild.id, fake.member.id)  # type: ignore[union-attr]
    [image] = await harness.store.images(job.id)  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    harness.settings = harness.settings.model_copy(update={"keep_images_days": 0.01 / DAY_S})
    await harness.restart()
    for _ in range(100):
        if not Path(image.path or "").exists():
            break
        await asyncio.sleep(0.05)
    assert not Path(image.path or "").exists()


async def test_a_backup_taken_while_jobs_finish_holds_every_finished_job(
    harness: BotHarness, tiny_engine: DiffusionEngine, tmp_path: Path
) -> None:
    await harness.restart(SlowedEngine(tiny_engine, step_s=0.05))
    fake, store = harness.fake, harness.store
    assert store is not None
    members = [fake.member, *(fake.add_member(name) for name in ("ann", "bob"))]
    prompts = [f"{member.user.username} {n}" for member in members for n in range(2)]
    handles = [await fake.slash(members[k // 2], "imagine", prompt=prompt, count=1)
               for k, prompt in enumerate(prompts)]

    def delivered() -> set[str]:
        """Prompts whose result a member has seen: their job was stored as done before."""
        return {prompt for prompt, handle in zip(prompts, handles, strict=True)
                if handle.original is not None and handle.original.attachments}

    backups: list[tuple[set[str], Path]] = []
    while len(backups) < 100 and len(delivered()) < len(prompts):
        before = delivered()
        target = tmp_path / "backups" / f"{len(backups)}.sqlite3"
        await asyncio.to_thread(backup_database, harness.settings.database_path, target)
        backups.append((before, target))
        await asyncio.sleep(0.05)
    for handle in handles:
        await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    target = tmp_path / "backups" / "final.sqlite3"
    await asyncio.to_thread(backup_database, harness.settings.database_path, target)
    backups.append((delivered(), target))
    assert len(backups) >= 3 and backups[0][0] != backups[-1][0]  # some taken while jobs still ran
    for before, path in backups:
        with sqlite3.connect(path) as copy:
            assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            done = {row[0] for row in copy.execute(
                "SELECT prompt FROM jobs WHERE status = 'done' AND id IN (SELECT job_id FROM images)")}
        assert before <= done
    reopened = await Store.open(target)  # a backup is a working database
    try:
        assert len(await reopened.jobs_with_status(JobStatus.DONE)) == len(handles)
    finally:
        await reopened.close()

"""The SQLite store: the only place that writes SQL.

One aiosqlite connection in autocommit mode, WAL journal and foreign keys on. Every write runs in
an explicit `BEGIN IMMEDIATE` transaction under an asyncio lock, because many tasks share the one
connection and their statements must not interleave inside each other's transactions.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
from pydantic import BaseModel

from sdbot.migrate import apply_migrations, schema_version
from sdbot.types import Edit, ImageRow, JobRow, JobStatus, NewJob


class QuotaExceeded(Exception):
    """The member has no images left today; nothing was charged or stored."""

    def __init__(self, limit: int, used: int, requested: int, resets_at: float) -> None:
        self.limit, self.used, self.requested, self.resets_at = limit, used, requested, resets_at
        super().__init__(
            f"daily quota reached: {used} of {limit} images used today, {requested} requested"
        )


class StoreUnavailable(Exception):
    """The database file cannot be created or opened; the message names the file and why."""


class QuotaStatus(BaseModel):
    limit: int | None  # None: unlimited
    used: int
    is_override: bool
    resets_at: float

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)


class AuditEntry(BaseModel):
    id: int
    guild_id: int
    moderator_id: int
    action: str
    target_user_id: int | None
    details: dict[str, Any]
    created_at: float


def day_start(now: float) -> float:
    """00:00 UTC of the day `now` falls in: quotas count images per UTC day."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


class Store:
    def __init__(self, db: aiosqlite.Connection, default_daily_quota: int) -> None:
        self._db = db
        self._write_lock = asyncio.Lock()
        self.default_daily_quota = default_daily_quota

    @classmethod
    async def open(
        cls, path: Path, *, default_daily_quota: int = 50, migrations_dir: Path | None = None
    ) -> Store:
        """Open (creating folders and the file if needed) and bring the schema up to date."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise StoreUnavailable(f"cannot open the database file {path}: {_why(error)}") from None
        try:
            db.row_factory = aiosqlite.Row
            try:
                await db.execute("PRAGMA journal_mode = WAL")
            except sqlite3.Error as error:  # the first statement that touches the file
                raise StoreUnavailable(f"cannot open the database file {path}: {_why(error)}") from None
            # With WAL, NORMAL commits without an fsync each: a committed job survives the process
            # being killed (the write is in the OS's hands), only a power cut may lose the last few.
            # FULL made every acknowledgement wait for the disk (ack p99 2.4 s under a burst).
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute("PRAGMA busy_timeout = 5000")
            await apply_migrations(db, migrations_dir)
        except BaseException:
            await db.close()
            raise
        return cls(db, default_daily_quota)

    async def close(self) -> None:
        await self._db.close()

    async def schema_version(self) -> int:
        return await schema_version(self._db)

    async def ping(self) -> None:
        """Raises unless the database answers a query (for /healthz)."""
        await self._fetchone("SELECT 1")

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        # aiosqlite runs statements in order on its own thread, and a cancelled await does not stop
        # a statement already handed over: so on any exit path the closing statement is queued
        # (shielded) behind everything this transaction sent, and the next BEGIN comes after it.
        async with self._write_lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                yield self._db
            except BaseException:
                await asyncio.shield(self._rollback())
                raise
            await asyncio.shield(self._db.execute("COMMIT"))

    async def _rollback(self) -> None:
        try:
            await self._db.execute("ROLLBACK")
        except sqlite3.OperationalError:
            pass  # BEGIN itself failed: there is nothing to roll back

    async def _fetchone(self, sql: str, args: Sequence[Any] = ()) -> aiosqlite.Row | None:
        async with self._db.execute(sql, args) as cursor:
            return await cursor.fetchone()

    async def _fetchall(self, sql: str, args: Sequence[Any] = ()) -> Iterable[aiosqlite.Row]:
        async with self._db.execute(sql, args) as cursor:
            return await cursor.fetchall()

    # Jobs

    async def create_job(self, job: NewJob, *, now: float | None = None) -> JobRow:
        """Store a queued job and charge its images to the member's quota, atomically.

        Raises QuotaExceeded (and stores nothing) when the images do not fit today's quota.
        """
        now = time.time() if now is None else now
        params = job.params
        async with self._transaction() as db:
            quota = await self._quota(job.guild_id, job.user_id, now)
            if quota.limit is not None and quota.used + params.charged_images > quota.limit:
                raise QuotaExceeded(quota.limit, quota.used, params.charged_images, quota.resets_at)
            async with db.execute(
                """INSERT INTO jobs (kind, pipeline, guild_id, channel_id, user_id, prompt,
                       negative_prompt, seeds, steps, guidance, width, height, strength, model_id,
                       source_job_id, source_index, source_path, return_flagged, created_at,
                       application_id, interaction_token, tile, typed_prompt, styles, edit, model_name, loras)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   RETURNING *""",
                (
                    job.kind, params.pipeline, job.guild_id, job.channel_id, job.user_id,
                    params.prompt, params.negative_prompt, json.dumps(list(params.seeds)),
                    params.steps, params.guidance, params.width, params.height, params.strength,
                    job.model_id, job.source_job_id, job.source_index, job.source_path,
                    params.return_flagged, now, job.application_id, job.interaction_token,
                    params.tile, params.typed_prompt, json.dumps(list(params.styles)),
                    params.edit.model_dump_json() if params.edit else None,
                    params.model, json.dumps([list(lora) for lora in params.loras]),
                ),
            ) as cursor:
                row = await cursor.fetchone()
            assert row is not None
            created = _job(row)
            await db.execute(
                "INSERT INTO usage_ledger (guild_id, user_id, job_id, images, reason, created_at)"
                " VALUES (?, ?, ?, ?, 'charge', ?)",
                (job.guild_id, job.user_id, created.id, params.charged_images, now),
            )
        return created

    async def get_job(self, job_id: int, *, guild_id: int | None = None) -> JobRow | None:
        """A job by id; with `guild_id`, only if it was made in that guild."""
        row = await self._fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None or (guild_id is not None and row["guild_id"] != guild_id):
            return None
        return _job(row)

    async def jobs_with_status(self, *statuses: JobStatus) -> list[JobRow]:
        """Jobs in any of the given states, oldest first (the order they were accepted in)."""
        marks = ", ".join("?" for _ in statuses)
        rows = await self._fetchall(
            f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY id", statuses
        )
        return [_job(row) for row in rows]

    async def recent_jobs(self, guild_id: int, user_id: int, limit: int = 10) -> list[JobRow]:
        rows = await self._fetchall(
            "SELECT * FROM jobs WHERE guild_id = ? AND user_id = ? ORDER BY id DESC LIMIT ?",
            (guild_id, user_id, limit),
        )
        return [_job(row) for row in rows]

    async def mark_running(self, job_ids: Sequence[int], *, now: float | None = None) -> list[JobRow]:
        """Queued jobs become running; returns their rows as they are now (ended ones are left out)."""
        now = time.time() if now is None else now
        running = []
        async with self._transaction() as db:
            for job_id in job_ids:
                async with db.execute(
                    """UPDATE jobs SET status = 'running', started_at = ? WHERE id = ? AND status = 'queued'
                       RETURNING *""",
                    (now, job_id),
                ) as cursor:
                    running.extend(_job(row) for row in await cursor.fetchall())
        return running

    async def requeue(self, job_ids: Sequence[int]) -> None:
        """Put running jobs back to queued (shutdown, or a worker that died)."""
        async with self._transaction() as db:
            await db.executemany(
                "UPDATE jobs SET status = 'queued', started_at = NULL WHERE id = ? AND status = 'running'",
                [(job_id,) for job_id in job_ids],
            )

    async def finish_job(
        self,
        job_id: int,
        images: Sequence[ImageRow],
        *,
        scheduler: str | None = None,
        model_revision: str | None = None,
        now: float | None = None,
    ) -> JobRow | None:
        """Record the images and mark the job done; returns the done row, or None if the job had
        already ended (cancelled)."""
        now = time.time() if now is None else now
        async with self._transaction() as db:
            async with db.execute(
                """UPDATE jobs SET status = 'done', finished_at = ?, status_reason = NULL,
                       scheduler = COALESCE(?, scheduler), model_revision = COALESCE(?, model_revision)
                   WHERE id = ? AND status IN ('queued', 'running') RETURNING *""",
                (now, scheduler, model_revision, job_id),
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return None
            await db.executemany(
                """INSERT OR REPLACE INTO images (job_id, idx, seed, width, height, path, format,
                       flagged, nsfw_score, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    (job_id, i.idx, i.seed, i.width, i.height, i.path, i.format, i.flagged,
                     i.nsfw_score, json.dumps(i.record))
                    for i in images
                ],
            )
        return _job(row)

    async def fail_job(self, job_id: int, reason: str, *, now: float | None = None) -> JobRow | None:
        return await self._end_unfinished(job_id, JobStatus.FAILED, reason, now)

    async def cancel_job(self, job_id: int, reason: str, *, now: float | None = None) -> JobRow | None:
        return await self._end_unfinished(job_id, JobStatus.CANCELLED, reason, now)

    async def _end_unfinished(
        self, job_id: int, status: JobStatus, reason: str, now: float | None
    ) -> JobRow | None:
        """End a queued or running job and refund its charge; returns the ended row, or None if it
        had already ended."""
        now = time.time() if now is None else now
        async with self._transaction() as db:
            async with db.execute(
                """UPDATE jobs SET status = ?, status_reason = ?, finished_at = ?
                   WHERE id = ? AND status IN ('queued', 'running') RETURNING *""",
                (status, reason, now, job_id),
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return None
            # Refund what this job was charged, in the ledger, on the day of the refund.
            await db.execute(
                """INSERT INTO usage_ledger (guild_id, user_id, job_id, images, reason, created_at)
                   SELECT guild_id, user_id, job_id, -SUM(images), 'refund', ?
                   FROM usage_ledger WHERE job_id = ? GROUP BY guild_id, user_id, job_id
                   HAVING SUM(images) > 0""",
                (now, job_id),
            )
        return _job(row)

    async def set_reply_id(self, job_id: int, message_id: int) -> None:
        """The message the job's reply lives in (its "queued" text, later edited into the result)."""
        async with self._transaction() as db:
            await db.execute("UPDATE jobs SET response_message_id = ? WHERE id = ?", (message_id, job_id))

    async def mark_delivered(self, job_id: int, message_id: int | None, *, now: float | None = None) -> None:
        """The job's end reached Discord in message `message_id` (None: it could never be posted)."""
        async with self._transaction() as db:
            await db.execute(
                """UPDATE jobs SET delivered_at = ?, result_message_id = COALESCE(?, result_message_id)
                   WHERE id = ?""",
                (time.time() if now is None else now, message_id, job_id),
            )

    async def undelivered_jobs(self) -> list[JobRow]:
        """Jobs that ended but whose end was not posted yet (the bot stopped in between), oldest first."""
        rows = await self._fetchall(
            """SELECT * FROM jobs WHERE delivered_at IS NULL AND status IN ('done', 'failed', 'cancelled')
               ORDER BY id"""
        )
        return [_job(row) for row in rows]

    async def images(self, job_id: int) -> list[ImageRow]:
        rows = await self._fetchall("SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,))
        return [_image(row) for row in rows]

    async def save_suggestions(self, job_id: int, prompts: Sequence[str]) -> None:
        """Keep a describe job's prompt suggestions (a second call replaces the first)."""
        async with self._transaction() as db:
            await db.execute("DELETE FROM describe_suggestions WHERE job_id = ?", (job_id,))
            await db.executemany(
                "INSERT INTO describe_suggestions (job_id, idx, prompt) VALUES (?, ?, ?)",
                [(job_id, idx, prompt) for idx, prompt in enumerate(prompts)],
            )

    async def suggestions(self, job_id: int) -> list[str]:
        """A describe job's prompt suggestions, in order (empty until it is done)."""
        rows = await self._fetchall(
            "SELECT prompt FROM describe_suggestions WHERE job_id = ? ORDER BY idx", (job_id,)
        )
        return [row["prompt"] for row in rows]

    async def set_image_path(self, job_id: int, idx: int, path: str) -> None:
        """A regenerated file replaces a missing (or pruned) one."""
        async with self._transaction() as db:
            await db.execute(
                "UPDATE images SET path = ?, pruned_at = NULL WHERE job_id = ? AND idx = ?", (path, job_id, idx)
            )

    async def images_to_prune(self, ended_before: float) -> list[ImageRow]:
        """Images with a file on disk whose job ended before `ended_before`."""
        rows = await self._fetchall(
            """SELECT images.* FROM images JOIN jobs ON jobs.id = images.job_id
               WHERE jobs.finished_at < ? AND images.path IS NOT NULL AND images.pruned_at IS NULL
               ORDER BY images.job_id, images.idx""",
            (ended_before,),
        )
        return [_image(row) for row in rows]

    async def mark_pruned(self, images: Sequence[ImageRow], *, now: float | None = None) -> None:
        async with self._transaction() as db:
            await db.executemany(
                "UPDATE images SET pruned_at = ? WHERE job_id = ? AND idx = ?",
                [(now or time.time(), image.job_id, image.idx) for image in images],
            )

    # Quotas

    async def quota(self, guild_id: int, user_id: int, *, now: float | None = None) -> QuotaStatus:
        return await self._quota(guild_id, user_id, time.time() if now is None else now)

    async def _quota(self, guild_id: int, user_id: int, now: float) -> QuotaStatus:
        start = day_start(now)
        row = await self._fetchone(
            """SELECT
                 (SELECT COALESCE(SUM(images), 0) FROM usage_ledger
                   WHERE guild_id = ?1 AND user_id = ?2 AND created_at >= ?3) AS used,
                 (SELECT COUNT(*) FROM quota_overrides WHERE guild_id = ?1 AND user_id = ?2)
                   AS has_override,
                 (SELECT images_per_day FROM quota_overrides WHERE guild_id = ?1 AND user_id = ?2)
                   AS override_limit,
                 (SELECT COUNT(*) FROM guild_settings
                   WHERE guild_id = ?1 AND images_per_day IS NOT NULL) AS has_default,
                 (SELECT images_per_day FROM guild_settings WHERE guild_id = ?1) AS guild_limit""",
            (guild_id, user_id, start),
        )
        assert row is not None
        if row["has_override"]:
            limit = row["override_limit"]
        elif row["has_default"]:
            limit = row["guild_limit"]
        else:
            limit = self.default_daily_quota
        return QuotaStatus(
            limit=limit,
            used=max(0, int(row["used"])),
            is_override=bool(row["has_override"]),
            resets_at=start + 86400,
        )

    async def guild_default_quota(self, guild_id: int) -> int:
        row = await self._fetchone(
            "SELECT images_per_day FROM guild_settings WHERE guild_id = ?", (guild_id,)
        )
        if row is None or row["images_per_day"] is None:
            return self.default_daily_quota
        return int(row["images_per_day"])

    async def set_user_quota(
        self, guild_id: int, moderator_id: int, user_id: int, images_per_day: int | None
    ) -> None:
        """Override one member's daily quota (None: unlimited), audited."""
        async with self._transaction() as db:
            await db.execute(
                """INSERT INTO quota_overrides (guild_id, user_id, images_per_day) VALUES (?, ?, ?)
                   ON CONFLICT (guild_id, user_id) DO UPDATE SET images_per_day = excluded.images_per_day""",
                (guild_id, user_id, images_per_day),
            )
            await self._audit(db, guild_id, moderator_id, "quota.set", user_id,
                              {"images_per_day": images_per_day})

    async def reset_user_quota(
        self, guild_id: int, moderator_id: int, user_id: int, *, now: float | None = None
    ) -> int:
        """Drop a member's override and clear today's usage; returns the images given back."""
        now = time.time() if now is None else now
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM quota_overrides WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
            )
            used = max(0, (await self._quota(guild_id, user_id, now)).used)
            if used:
                await db.execute(
                    """INSERT INTO usage_ledger (guild_id, user_id, job_id, images, reason, created_at)
                       VALUES (?, ?, NULL, ?, 'reset', ?)""",
                    (guild_id, user_id, -used, now),
                )
            await self._audit(db, guild_id, moderator_id, "quota.reset", user_id,
                              {"usage_cleared": used})
        return used

    async def set_guild_default_quota(
        self, guild_id: int, moderator_id: int, images_per_day: int
    ) -> None:
        async with self._transaction() as db:
            await db.execute(
                """INSERT INTO guild_settings (guild_id, images_per_day) VALUES (?, ?)
                   ON CONFLICT (guild_id) DO UPDATE SET images_per_day = excluded.images_per_day""",
                (guild_id, images_per_day),
            )
            await self._audit(db, guild_id, moderator_id, "quota.default", None,
                              {"images_per_day": images_per_day})

    # Queue shares

    async def queue_shares(self) -> dict[tuple[int, int], float]:
        """Every member whose share of the queue is not the default 1, by (guild, user)."""
        rows = await self._fetchall("SELECT guild_id, user_id, weight FROM queue_shares")
        return {(row["guild_id"], row["user_id"]): row["weight"] for row in rows}

    async def set_queue_share(self, guild_id: int, moderator_id: int, user_id: int, weight: float) -> None:
        async with self._transaction() as db:
            if weight == 1.0:
                await db.execute(
                    "DELETE FROM queue_shares WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
                )
            else:
                await db.execute(
                    """INSERT INTO queue_shares (guild_id, user_id, weight) VALUES (?, ?, ?)
                       ON CONFLICT (guild_id, user_id) DO UPDATE SET weight = excluded.weight""",
                    (guild_id, user_id, weight),
                )
            await self._audit(db, guild_id, moderator_id, "queue.share", user_id, {"weight": weight})

    # Guild safety setting

    async def nsfw_spoilers_allowed(self, guild_id: int) -> bool:
        row = await self._fetchone(
            "SELECT allow_nsfw_spoilers FROM guild_settings WHERE guild_id = ?", (guild_id,)
        )
        return bool(row and row["allow_nsfw_spoilers"])

    async def set_nsfw_spoilers(self, guild_id: int, moderator_id: int, allowed: bool) -> None:
        async with self._transaction() as db:
            await db.execute(
                """INSERT INTO guild_settings (guild_id, allow_nsfw_spoilers) VALUES (?, ?)
                   ON CONFLICT (guild_id) DO UPDATE SET allow_nsfw_spoilers = excluded.allow_nsfw_spoilers""",
                (guild_id, allowed),
            )
            await self._audit(db, guild_id, moderator_id, "nsfw.spoilers", None, {"allowed": allowed})

    # Guild default model

    async def default_model(self, guild_id: int) -> str | None:
        """The catalogue model a server's moderators chose for /imagine; None: the catalogue's."""
        row = await self._fetchone("SELECT default_model FROM guild_settings WHERE guild_id = ?", (guild_id,))
        return row["default_model"] if row else None

    async def set_default_model(self, guild_id: int, moderator_id: int, model: str | None) -> None:
        async with self._transaction() as db:
            await db.execute(
                """INSERT INTO guild_settings (guild_id, default_model) VALUES (?, ?)
                   ON CONFLICT (guild_id) DO UPDATE SET default_model = excluded.default_model""",
                (guild_id, model),
            )
            await self._audit(db, guild_id, moderator_id, "model.default", None, {"model": model})

    # Member preferences

    async def remix(self, guild_id: int, user_id: int) -> bool:
        """Whether the member wants a prompt box before each Vary, Zoom and Pan (off by default)."""
        row = await self._fetchone(
            "SELECT remix FROM member_settings WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        return bool(row and row["remix"])

    async def set_remix(self, guild_id: int, user_id: int, on: bool) -> None:
        async with self._transaction() as db:
            await db.execute(
                """INSERT INTO member_settings (guild_id, user_id, remix) VALUES (?, ?, ?)
                   ON CONFLICT (guild_id, user_id) DO UPDATE SET remix = excluded.remix""",
                (guild_id, user_id, on),
            )

    # Audit log

    async def audit(
        self,
        guild_id: int,
        moderator_id: int,
        action: str,
        target_user_id: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record a moderator action that has no write of its own (cancelling a job, say)."""
        async with self._transaction() as db:
            await self._audit(db, guild_id, moderator_id, action, target_user_id, details or {})

    async def _audit(
        self,
        db: aiosqlite.Connection,
        guild_id: int,
        moderator_id: int,
        action: str,
        target_user_id: int | None,
        details: dict[str, Any],
    ) -> None:
        await db.execute(
            """INSERT INTO audit_log (guild_id, moderator_id, action, target_user_id, details,
                   created_at) VALUES (?, ?, ?, ?, ?, ?)""",
            (guild_id, moderator_id, action, target_user_id, json.dumps(details), time.time()),
        )

    async def audit_entries(self, guild_id: int, limit: int = 20) -> list[AuditEntry]:
        rows = await self._fetchall(
            "SELECT * FROM audit_log WHERE guild_id = ? ORDER BY id DESC LIMIT ?", (guild_id, limit)
        )
        return [AuditEntry(**{**dict(row), "details": json.loads(row["details"])}) for row in rows]


def _why(error: OSError | sqlite3.Error) -> str:
    """The operating system's words (`No such file or directory`) rather than Python's."""
    return (error.strerror if isinstance(error, OSError) else None) or str(error)


def backup_database(source: Path, target: Path) -> None:
    """Copy the database to `target` with SQLite's backup API: a consistent snapshot even while the
    bot writes to it. Blocking; written under a temporary name first, so `target` is never partial."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.unlink(missing_ok=True)
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(partial)) as dst:
        src.execute("PRAGMA busy_timeout = 5000")
        src.backup(dst)
    partial.replace(target)


def _image(row: aiosqlite.Row) -> ImageRow:
    return ImageRow(**{**dict(row), "flagged": bool(row["flagged"]), "record": json.loads(row["record"])})


def _job(row: aiosqlite.Row) -> JobRow:
    values = dict(row)
    values["seeds"] = json.loads(values["seeds"])
    values["return_flagged"] = bool(values["return_flagged"])
    values["tile"] = bool(values["tile"])
    values["styles"] = json.loads(values["styles"])
    values["edit"] = Edit.model_validate_json(values["edit"]) if values["edit"] else None
    values["model"] = values.pop("model_name")
    values["loras"] = [tuple(lora) for lora in json.loads(values["loras"])]
    return JobRow(**values)

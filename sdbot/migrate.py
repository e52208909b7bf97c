"""Numbered SQL migrations, applied in order, each in its own transaction.

The schema version is SQLite's `PRAGMA user_version`, written inside the same transaction as the
migration, so a failing file leaves the database exactly at the previous version.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import aiosqlite

_NAME = re.compile(r"^(\d{4})_[\w-]+\.sql$")


class MigrationError(Exception):
    """A migration failed or the migration files are inconsistent; the database was not changed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def bundled_migrations_dir() -> Path:
    return Path(str(resources.files("migrations")))


def load_migrations(directory: Path) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_description.sql")
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text("utf-8")))
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise MigrationError(f"migrations in {directory} must be numbered 0001, 0002, ... without gaps")
    return migrations


def split_statements(sql: str) -> list[str]:
    """Split a script into statements; `executescript` would commit our transaction first."""
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        part.strip().startswith("--") for part in buffer.strip().splitlines() if part.strip()
    ):
        raise MigrationError(f"incomplete SQL statement at the end: {buffer.strip()[:80]!r}")
    return statements


async def schema_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def apply_migrations(db: aiosqlite.Connection, directory: Path | None = None) -> int:
    """Apply every pending migration; return the resulting schema version.

    The connection must be in autocommit mode (`isolation_level=None`) so that we own BEGIN/COMMIT.
    """
    migrations = load_migrations(directory or bundled_migrations_dir())
    current = await schema_version(db)
    if current > len(migrations):
        raise MigrationError(
            f"the database is at schema version {current}, newer than this sdbot knows "
            f"({len(migrations)}); upgrade sdbot"
        )
    for migration in migrations[current:]:
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in split_statements(migration.sql):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {migration.version}")
        except sqlite3.Error as error:
            await db.execute("ROLLBACK")
            raise MigrationError(
                f"migration {migration.name} failed: {error}; "
                f"the database stays at schema version {migration.version - 1}"
            ) from error
        await db.execute("COMMIT")
    return await schema_version(db)

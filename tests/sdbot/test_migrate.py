"""Migration files: numbered without gaps, split into statements without committing early."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdbot.migrate import (
    MigrationError,
    bundled_migrations_dir,
    load_migrations,
    split_statements,
)


def test_the_bundled_migrations_are_numbered_from_one() -> None:
    migrations = load_migrations(bundled_migrations_dir())
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "0001_initial.sql"


def test_statements_split_at_their_ends_not_at_semicolons_in_text() -> None:
    sql = "CREATE TABLE a (x TEXT DEFAULT 'a;b');\n-- a comment; with a semicolon\nINSERT INTO a VALUES ('c;d');\n"
    assert split_statements(sql) == [
        "CREATE TABLE a (x TEXT DEFAULT 'a;b');",
        "-- a comment; with a semicolon\nINSERT INTO a VALUES ('c;d');",
    ]
    assert split_statements("SELECT 1;\n-- trailing comment only\n") == ["SELECT 1;"]


def test_an_unfinished_statement_is_refused() -> None:
    with pytest.raises(MigrationError, match="incomplete SQL statement at the end"):
        split_statements("CREATE TABLE a (x INT")


@pytest.mark.parametrize(("names", "message"), [
    (["0001_a.sql", "0003_c.sql"], "must be numbered 0001, 0002, ... without gaps"),
    (["0001_a.sql", "0002_b.sql", "0002_c.sql"], "must be numbered 0001, 0002, ... without gaps"),
    (["1_a.sql"], "migration files are named NNNN_description.sql"),
])
def test_badly_numbered_files_are_refused(tmp_path: Path, names: list[str], message: str) -> None:
    for name in names:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=message.replace(".", r"\.")):
        load_migrations(tmp_path)

"""Image files: one folder per guild and job, written whole or not at all."""

from __future__ import annotations

from pathlib import Path

from generation.jobs.image_files import image_path, read_if_present, write_file


def test_paths_name_guild_job_image_and_seed(tmp_path: Path) -> None:
    assert image_path(tmp_path, 7, 42, 0, 1234, "png") == tmp_path / "7" / "42" / "sdbot-42-1-1234.png"


def test_files_are_written_whole_with_their_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.png"
    write_file(path, b"first")
    write_file(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no partial file left behind


async def test_reading_a_missing_file_gives_none(tmp_path: Path) -> None:
    present = tmp_path / "x.png"
    present.write_bytes(b"data")
    assert await read_if_present(present) == b"data"
    assert await read_if_present(str(present)) == b"data"
    assert await read_if_present(tmp_path / "gone.png") is None
    assert await read_if_present(None) is None

"""Where images live on disk, written atomically and read without blocking the event loop."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


def image_path(output_dir: Path, guild_id: int, job_id: int, index: int, seed: int, fmt: str) -> Path:
    return output_dir / str(guild_id) / str(job_id) / f"sdbot-{job_id}-{index + 1}-{seed}.{fmt}"


def write_file(path: Path, data: bytes) -> None:
    """Write via a temporary name, so a crash never leaves a truncated image behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    os.replace(partial, path)


async def read_if_present(path: str | Path | None) -> bytes | None:
    """The file's bytes (read on a thread), or None when there is no path or the file is gone."""
    if path is None:
        return None
    try:
        return await asyncio.to_thread(Path(path).read_bytes)
    except OSError:
        return None

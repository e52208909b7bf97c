"""Reading image files without blocking the event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path


async def read_if_present(path: str | Path | None) -> bytes | None:
    """The file's bytes, or None when there is no path or the file is gone."""
    if path is None:
        return None
    try:
        return await asyncio.to_thread(Path(path).read_bytes)
    except OSError:
        return None

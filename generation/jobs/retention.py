"""Retention: delete the image files of jobs that ended more than SDBOT_KEEP_IMAGES_DAYS ago. The job
and image records stay (with their paths), so a button on a pruned job makes the source again from
its seed (`Worker._regenerate`)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sdbot.store import Store
from sdbot.types import ImageRow

log = logging.getLogger(__name__)

DAY_S = 24 * 60 * 60
# How often the bot prunes while it runs; the first pass runs at start-up.
PRUNE_EVERY_S = 60 * 60


@dataclass(frozen=True)
class PruneReport:
    files: int  # files deleted (or, on a dry run, that would be)
    bytes: int
    jobs: int


async def prune_images(store: Store, keep_days: float, *, dry_run: bool = False,
                       now: float | None = None) -> PruneReport:
    """Delete the files of images whose job ended more than `keep_days` ago and mark them pruned."""
    cutoff = (now or time.time()) - keep_days * DAY_S
    images = await store.images_to_prune(cutoff)
    sizes = await asyncio.to_thread(_remove_files, images, dry_run)
    if not dry_run:
        await store.mark_pruned(images)
    report = PruneReport(files=sum(size is not None for size in sizes),
                         bytes=sum(size or 0 for size in sizes),
                         jobs=len({image.job_id for image in images}))
    if report.files and not dry_run:
        log.info("retention: deleted %d image file(s), %d bytes, of %d job(s) that ended over %g day(s) ago",
                 report.files, report.bytes, report.jobs, keep_days)
    return report


def _remove_files(images: list[ImageRow], dry_run: bool) -> list[int | None]:
    """Each file's size, or None if it was already gone (runs on a thread)."""
    sizes: list[int | None] = []
    for image in images:
        assert image.path is not None
        path = Path(image.path)
        size: int | None
        try:
            size = path.stat().st_size
            if not dry_run:
                path.unlink()
        except FileNotFoundError:
            size = None
        sizes.append(size)
    return sizes


async def prune_forever(store: Store, keep_days: float) -> None:
    """The bot's background pruning; a failed pass is logged and retried at the next one."""
    while True:
        try:
            await prune_images(store, keep_days)
        except Exception:
            log.exception("retention: pruning failed; retrying in %d s", PRUNE_EVERY_S)
        await asyncio.sleep(PRUNE_EVERY_S)

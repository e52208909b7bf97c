"""Acceptance: a request that cannot be stored is answered, privately and plainly, with nothing
acknowledged in public and nothing charged."""

from __future__ import annotations

import itertools
import sqlite3

import pytest

from sdbot.types import JobKind, NewJob
from tests.fakes.bot import BotHarness
from tests.fakes.params import text2img


async def test_a_full_disk_is_named_and_nothing_is_charged(harness: BotHarness) -> None:
    fake, store = harness.fake, harness.store
    assert store is not None
    # Cap the database at its current size, then fill what is left of it with other members' jobs:
    # SQLite now answers "database or disk is full" as it would on a full disk.
    # (The store's own connection: the page cap holds per connection.)
    [(pages,)] = await store._db.execute_fetchall("PRAGMA page_count")
    await store._db.execute(f"PRAGMA max_page_count = {pages}")
    others = itertools.count(1)
    for pad in (2000, 200, 0):  # big rows first, then ever smaller ones into the last gaps
        with pytest.raises(sqlite3.OperationalError, match="full"):
            for _ in range(1000):
                await store.create_job(NewJob(
                    kind=JobKind.IMAGINE, guild_id=fake.guild.id, channel_id=fake.channel().id,
                    user_id=next(others), params=text2img("x" * pad), model_id="filler",
                ))
    handle = await fake.slash(fake.member, "imagine", prompt="a cat", count=1)
    await handle.wait_response()
    assert handle.ephemeral and "disk is full" in handle.content and "Nothing was charged" in handle.content
    assert fake.channel_messages(fake.channel().id) == []  # no public "thinking..." left behind
    assert (await store.quota(fake.guild.id, fake.member.id)).used == 0

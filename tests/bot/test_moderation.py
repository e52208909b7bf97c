"""Quotas, moderator commands, refusals and job management through the fake Discord."""

from __future__ import annotations

import asyncio

import pytest

from generation.engine.diffusion import DiffusionEngine
from sdbot.types import GenerationParams, JobKind, NewJob, PipelineKind
from tests.fakes.bot import BotHarness, SlowedEngine


async def _imagine_done(harness: BotHarness, user: object, **options: object) -> int:
    """Run one /imagine to completion; return its job id."""
    handle = await harness.fake.slash(user, "imagine", **({"prompt": "a red fox", "count": 1} | options))
    result = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    return int(result.attachments[0].filename.split("-")[1])


async def test_quota_exhausted_is_refused_and_nothing_is_charged(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.moderator, "quota set", member=fake.member, images_per_day="2")
    await handle.wait_response()
    await _imagine_done(harness, fake.member, count=2)
    refused = await fake.slash(fake.member, "imagine", prompt="one more", count=1)
    await refused.wait_response()
    assert refused.ephemeral
    assert "used 2 of your 2 images" in refused.content
    view = await fake.slash(fake.member, "quota view")
    await view.wait_response()
    assert "**0** left" in view.content and "2 used" in view.content
    jobs = await harness.store.recent_jobs(fake.guild.id, fake.member.id)  # type: ignore[union-attr]
    assert len(jobs) == 1


async def test_blocked_prompt_is_refused_ephemerally(harness: BotHarness) -> None:
    harness.settings = harness.settings.model_copy(update={"blocked_words": ["gore"]})
    await harness.restart()
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="Lots of GORE, please")
    await handle.wait_response()
    assert handle.ephemeral and "gore" in handle.content.lower()
    assert await harness.store.recent_jobs(fake.guild.id, fake.member.id) == []  # type: ignore[union-attr]


async def test_invalid_steps_get_a_clear_refusal(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="a cat", steps=400)
    await handle.wait_response()
    assert handle.ephemeral and "Steps must be between 1 and 50" in handle.content


async def test_seed_range_and_aspect_choices_are_declared_to_discord(harness: BotHarness) -> None:
    imagine = harness.fake.synced_commands(guild=True)["imagine"]
    options = {option["name"]: option for option in imagine["options"]}
    assert (options["seed"]["min_value"], options["seed"]["max_value"]) == (-1, 2**32 - 1)  # -1: random
    assert [c["value"] for c in options["aspect"]["choices"]] == ["1:1", "2:3", "3:2", "16:9", "9:16"]
    with pytest.raises(Exception, match="seed"):
        await harness.fake.slash(harness.fake.member, "imagine", prompt="x", seed=2**32)


async def test_too_many_queued_jobs_are_refused(harness: BotHarness) -> None:
    fake = harness.fake
    # Nine four-image jobs at once: one runs, four wait (the default limit), the rest are refused.
    handles = await asyncio.gather(
        *(fake.slash(fake.member, "imagine", prompt=f"cat {n}", count=4) for n in range(9))
    )
    for handle in handles:
        await handle.wait_response()
    refused = [h for h in handles if h.ephemeral]
    assert len(refused) >= 3, [h.content for h in handles]
    assert all("4 jobs queued" in h.content for h in refused)
    accepted = [h for h in handles if not h.ephemeral]
    for handle in accepted:
        await handle.wait_original(lambda m: bool(m.attachments), timeout=60)
    jobs = await harness.store.recent_jobs(fake.guild.id, fake.member.id, limit=20)  # type: ignore[union-attr]
    assert len(jobs) == len(accepted)
    assert (await harness.store.quota(fake.guild.id, fake.member.id)).used == 4 * len(accepted)  # type: ignore[union-attr]


async def test_member_cannot_change_quotas(harness: BotHarness) -> None:
    fake = harness.fake
    for command, options in (
        ("quota log", {}),
        ("quota share", {"member": fake.member, "weight": 5.0}),
        ("quota set", {"member": fake.member, "images_per_day": "999"}),
        ("quota reset", {"member": fake.member}),
        ("quota default", {"images_per_day": 999}),
    ):
        handle = await fake.slash(fake.member, command, **options)
        await handle.wait_response()
        assert handle.ephemeral and "Manage Server" in handle.content
    assert (await harness.store.quota(fake.guild.id, fake.member.id)).limit == 50  # type: ignore[union-attr]
    assert await harness.store.audit_entries(fake.guild.id) == []  # type: ignore[union-attr]


async def test_moderator_changes_quotas_and_they_are_audited(harness: BotHarness) -> None:
    fake, store = harness.fake, harness.store
    assert store is not None
    handle = await fake.slash(fake.moderator, "quota set", member=fake.member, images_per_day="unlimited")
    await handle.wait_response()
    assert "unlimited" in handle.content
    assert (await store.quota(fake.guild.id, fake.member.id)).limit is None
    handle = await fake.slash(fake.moderator, "quota default", images_per_day=7)
    await handle.wait_response()
    handle = await fake.slash(fake.moderator, "quota reset", member=fake.member)
    await handle.wait_response()
    assert (await store.quota(fake.guild.id, fake.member.id)).limit == 7
    handle = await fake.slash(fake.moderator, "quota view", member=fake.member)
    await handle.wait_response()
    assert "7 images per day" in handle.content
    entries = await store.audit_entries(fake.guild.id)
    assert [e.action for e in entries] == ["quota.reset", "quota.default", "quota.set"]
    assert {e.moderator_id for e in entries} == {fake.moderator.id}
    shown = await fake.slash(fake.moderator, "quota log")
    await shown.wait_response()
    assert shown.ephemeral and shown.content.index("quota.reset") < shown.content.index("quota.set")
    assert "images_per_day 7" in shown.content


async def test_bad_quota_value_changes_nothing(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.moderator, "quota set", member=fake.member, images_per_day="lots")
    await handle.wait_response()
    assert handle.ephemeral and "not a quota" in handle.content
    assert await harness.store.audit_entries(fake.guild.id) == []  # type: ignore[union-attr]


async def test_member_cannot_see_another_members_quota_or_history(harness: BotHarness) -> None:
    fake = harness.fake
    for command in ("quota view", "history"):
        handle = await fake.slash(fake.member, command, member=fake.moderator)
        await handle.wait_response()
        assert handle.ephemeral and "Only moderators" in handle.content


async def test_job_from_another_guild_is_not_found(harness: BotHarness) -> None:
    store = harness.store
    assert store is not None
    foreign = await store.create_job(
        NewJob(
            kind=JobKind.IMAGINE, guild_id=999, channel_id=1, user_id=harness.fake.member.id, model_id="m",
            params=GenerationParams(pipeline=PipelineKind.TEXT2IMG, prompt="secret", seeds=(1,), steps=1,
                                    guidance=0, width=64, height=64),
        )
    )
    for command, options in (("job", {"id": foreign.id}), ("reroll", {"job": foreign.id}),
                             ("cancel", {"job": foreign.id}), ("upscale", {"job": foreign.id, "index": 1})):
        handle = await harness.fake.slash(harness.fake.member, command, **options)
        await handle.wait_response()
        assert handle.ephemeral and f"no job #{foreign.id} in this server" in handle.content, command


async def test_job_history_and_record(harness: BotHarness) -> None:
    fake = harness.fake
    job_id = await _imagine_done(harness, fake.member, seed=42)
    store = harness.store
    assert store is not None
    async with asyncio.timeout(10):  # the message id is stored just after the post
        while (job := await store.get_job(job_id)) is None or job.result_message_id is None:
            await asyncio.sleep(0.05)
    history = await fake.slash(fake.member, "history")
    await history.wait_response()
    listed = history.embeds[0]["description"]
    # The id links to the posted result.
    assert f"[`#{job_id}`](https://discord.com/channels/{fake.guild.id}/{job.channel_id}/{job.result_message_id})" in listed
    assert "a red fox" in listed
    record = await fake.slash(fake.member, "job", id=job_id)
    await record.wait_response()
    assert record.ephemeral
    fields = {f["name"]: f["value"] for f in record.embeds[0]["fields"]}
    assert "`42`" in fields["Seeds"]
    assert "torch" in fields["Versions"] and "diffusers" in fields["Versions"]
    assert "Scheduler" in fields and "@" in fields["Model"]


async def test_moderator_cancels_someone_elses_queued_job(
    harness: BotHarness, tiny_engine: DiffusionEngine
) -> None:
    await harness.restart(SlowedEngine(tiny_engine, step_s=0.3))  # the second job is still waiting
    fake, store = harness.fake, harness.store
    assert store is not None
    first = await fake.slash(fake.member, "imagine", prompt="first", count=1)
    second = await fake.slash(fake.member, "imagine", prompt="second", count=4)
    await second.wait_original(lambda m: "queued" in m.content or bool(m.attachments), timeout=10)
    job_id = (await store.recent_jobs(fake.guild.id, fake.member.id))[0].id
    other = fake.add_member("bystander")
    refused = await fake.slash(other, "cancel", job=job_id)
    await refused.wait_response()
    assert refused.ephemeral and "belongs to someone else" in refused.content
    cancel = await fake.slash(fake.moderator, "cancel", job=job_id)
    await cancel.wait_response()
    assert "Cancelled" in cancel.content
    ended = await second.wait_original(lambda m: "cancelled" in m.content, timeout=10)
    assert "refunded" in ended.content
    await first.wait_original(lambda m: bool(m.attachments), timeout=30)
    entries = await store.audit_entries(fake.guild.id)
    assert entries[0].action == "job.cancel" and entries[0].target_user_id == fake.member.id


async def test_moderator_gives_a_member_a_bigger_queue_share_that_survives_restarts(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.moderator, "quota share", member=fake.member, weight=2.0)
    await handle.wait_response()
    assert handle.ephemeral and "2× an equal share" in handle.content
    await harness.restart()
    view = await fake.slash(fake.member, "quota view")
    await view.wait_response()
    assert "Queue share: 2×" in view.content
    assert (await harness.store.audit_entries(fake.guild.id))[0].action == "queue.share"  # type: ignore[union-attr]

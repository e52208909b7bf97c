"""Getting results to members: safety, progress, restarts, reconnects and rate limits."""

from __future__ import annotations

import asyncio

from generation.engine.diffusion import DiffusionEngine
from sdbot.types import JobStatus
from tests.fakes.bot import BotHarness, SlowedEngine


async def test_flagged_images_are_withheld_in_an_ordinary_channel(
    harness: BotHarness, flagging_engine: DiffusionEngine
) -> None:
    await harness.restart(flagging_engine)
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="a beach", count=2)
    result = await handle.wait_original(lambda m: bool(m.embeds), timeout=30)
    assert result.attachments == []
    withheld = next(f for f in result.embeds[0]["fields"] if f["name"] == "Withheld")
    assert "1, 2" in withheld["value"] and "safety checker" in withheld["value"]
    assert [b["label"] for b in result.buttons] == ["🔄 Reroll", "🗑️"]  # no U/V for withheld images
    [job] = await harness.store.recent_jobs(fake.guild.id, fake.member.id)  # type: ignore[union-attr]
    images = await harness.store.images(job.id)  # type: ignore[union-attr]
    assert all(image.flagged and image.path is None for image in images)


async def test_flagged_images_are_spoilered_in_an_age_restricted_channel_when_allowed(
    harness: BotHarness, flagging_engine: DiffusionEngine
) -> None:
    await harness.restart(flagging_engine)
    fake = harness.fake
    nsfw = fake.channel("nsfw")
    before = await fake.slash(fake.member, "imagine", prompt="a beach", count=1, channel=nsfw)
    withheld = await before.wait_original(lambda m: bool(m.embeds), timeout=30)
    assert withheld.attachments == []  # off by default, even in an age-restricted channel
    allow = await fake.slash(fake.moderator, "safety spoilers", allowed=True)
    await allow.wait_response()
    after = await fake.slash(fake.member, "imagine", prompt="a beach", count=1, channel=nsfw)
    spoilered = await after.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert spoilered.attachments[0].filename.startswith("SPOILER_")
    ordinary = await fake.slash(fake.member, "imagine", prompt="a beach", count=1)
    elsewhere = await ordinary.wait_original(lambda m: bool(m.embeds), timeout=30)
    assert elsewhere.attachments == []  # still withheld outside age-restricted channels
    assert (await harness.store.audit_entries(fake.guild.id))[0].action == "nsfw.spoilers"  # type: ignore[union-attr]


async def test_progress_is_shown_while_generating(harness: BotHarness, tiny_engine: DiffusionEngine) -> None:
    await harness.restart(SlowedEngine(tiny_engine, step_s=0.25))
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="a slow cat", count=1, steps=6)
    result = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    shown = [edit.get("content", "") for edit in result.history]
    assert any("queued" in text for text in shown)
    progress = [text for text in shown if "step" in text]
    assert progress and len(progress) <= 6 * 0.25 / 0.2 + 1  # throttled to the progress interval


async def test_jobs_queued_at_shutdown_are_delivered_after_restart(
    harness: BotHarness, tiny_engine: DiffusionEngine
) -> None:
    await harness.restart(SlowedEngine(tiny_engine, step_s=0.3))
    fake = harness.fake
    handles = [await fake.slash(fake.member, "imagine", prompt=f"job {n}", count=4) for n in range(3)]
    for handle in handles:
        await handle.wait_original(lambda m: "queued" in m.content or "generating" in m.content, timeout=10)
    await harness.restart(tiny_engine)
    for handle in handles:
        result = await handle.wait_original(lambda m: bool(m.attachments), timeout=60)
        assert len(result.attachments) == 4
    jobs = await harness.store.recent_jobs(fake.guild.id, fake.member.id)  # type: ignore[union-attr]
    assert [job.status for job in jobs] == [JobStatus.DONE] * 3


async def test_after_the_token_expired_results_go_to_the_channel(
    harness: BotHarness, tiny_engine: DiffusionEngine
) -> None:
    fake = harness.fake
    fake.expect_violations("token_expired")
    await harness.restart(SlowedEngine(tiny_engine, step_s=0.3))
    first = await fake.slash(fake.member, "imagine", prompt="running", count=4)
    second = await fake.slash(fake.member, "imagine", prompt="waiting", count=4)
    await second.wait_original(lambda m: "queued" in m.content, timeout=10)
    await harness.stop()
    fake.clock.advance(16 * 60)
    await harness.start(tiny_engine)
    posted = await fake.wait_for_message(
        channel_id=fake.channel().id,
        predicate=lambda m: bool(m.attachments) and "waiting" in str(m.embeds),
        timeout=60,
    )
    assert fake.member.id in posted.mention_ids
    assert len(posted.attachments) == 4 and posted.buttons
    assert first.original is not None


async def test_a_gateway_reconnect_during_generation_loses_nothing(
    harness: BotHarness, tiny_engine: DiffusionEngine
) -> None:
    await harness.restart(SlowedEngine(tiny_engine, step_s=0.2))
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="through a reconnect", count=1, steps=6)
    await handle.wait_original(lambda m: "step" in m.content or "queued" in m.content, timeout=10)
    fake.gateway.reconnect()
    result = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert len(result.attachments) == 1
    await fake.gateway.wait_connected(resumes=1)
    after = await fake.slash(fake.member, "queue")
    await after.wait_response()
    assert after.ephemeral


async def test_a_rate_limited_result_edit_is_retried(harness: BotHarness) -> None:
    fake = harness.fake
    fake.faults.rate_limit("PATCH", r"/webhooks/\d+/[^/]+/messages/\d+", times=2, retry_after=0.2)
    handle = await fake.slash(fake.member, "imagine", prompt="patience", count=1)
    result = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert len(result.attachments) == 1
    statuses = [r.status for r in fake.requests_to("PATCH", r"/webhooks/.*")]
    assert statuses.count(429) == 2 and statuses[-1] == 200


async def test_queue_shows_position_and_cancel_button_works(
    harness: BotHarness, tiny_engine: DiffusionEngine
) -> None:
    await harness.restart(SlowedEngine(tiny_engine, step_s=0.3))
    fake = harness.fake
    running = await fake.slash(fake.member, "imagine", prompt="first", count=4)
    waiting = await fake.slash(fake.member, "imagine", prompt="second", count=4)
    queued = await waiting.wait_original(lambda m: "queued" in m.content, timeout=10)
    status = await fake.slash(fake.member, "queue")
    await status.wait_response()
    assert "next in line" in status.content and "second" in status.content
    click = await fake.click(fake.member, queued, queued.button(label="Cancel")["custom_id"])
    await click.wait_response()
    ended = await waiting.wait_original(lambda m: "cancelled" in m.content, timeout=10)
    assert "refunded" in ended.content
    await running.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert (await harness.store.quota(fake.guild.id, fake.member.id)).used == 4  # type: ignore[union-attr]
    await asyncio.sleep(0)


async def test_buttons_keep_working_after_a_restart(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="an old result", count=1)
    result = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    await harness.restart()
    click = await fake.click(fake.member, result, result.button(label="U1")["custom_id"])
    upscaled = await click.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert upscaled.attachments[0].image().size == (128, 128)


class _FailingEngine:
    """The real engine, except that prompts containing "explode" raise inside the pipeline call."""

    def __init__(self, engine: DiffusionEngine) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def run_batch(self, batch, on_step, should_stop, on_preview=None):  # type: ignore[no-untyped-def]
        if any("explode" in params.prompt for params in batch):
            raise RuntimeError("the GPU caught fire")
        return self._engine.run_batch(batch, on_step, should_stop, on_preview)


async def test_a_failed_job_is_reported_with_its_id_and_refunded(
    harness: BotHarness, tiny_engine: DiffusionEngine
) -> None:
    await harness.restart(_FailingEngine(tiny_engine))  # type: ignore[arg-type]
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="please explode", count=4)
    ended = await handle.wait_original(lambda m: "failed" in m.content, timeout=30)
    [job] = await harness.store.recent_jobs(fake.guild.id, fake.member.id)  # type: ignore[union-attr]
    assert f"#{job.id}" in ended.content and "refunded" in ended.content
    assert "Traceback" not in ended.content
    assert (await harness.store.quota(fake.guild.id, fake.member.id)).used == 0  # type: ignore[union-attr]
    fine = await fake.slash(fake.member, "imagine", prompt="a calm lake", count=1)
    assert len((await fine.wait_original(lambda m: bool(m.attachments), timeout=30)).attachments) == 1


async def test_queued_replies_count_down_as_the_queue_moves(
    harness: BotHarness, tiny_engine: DiffusionEngine
) -> None:
    harness.settings = harness.settings.model_copy(update={"queue_update_interval_s": 0.2})
    await harness.restart(SlowedEngine(tiny_engine, step_s=0.25))
    fake = harness.fake
    members = [fake.member, *(fake.add_member(name) for name in ("ann", "bob", "cy"))]
    handles = [await fake.slash(member, "imagine", prompt=f"{member.user.username}'s turn", count=4, steps=4)
               for member in members]
    await handles[-1].wait_original(lambda m: "is queued" in m.content, timeout=10)
    status = await fake.slash(members[-1], "queue")  # the same numbers as the reply
    await status.wait_response()
    last = await handles[-1].wait_original(lambda m: bool(m.attachments), timeout=60)
    queued = [edit["content"] for edit in last.history if "is queued" in edit.get("content", "")]
    places = [text.split(": ", 1)[1].split(",")[0] for text in queued]
    assert places == ["position 3 in the queue", "position 2 in the queue", "next in line"]
    assert all("ready in about" in text for text in queued)
    assert any(place + ", done in about" in status.content for place in places[:2])

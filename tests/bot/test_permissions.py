"""Who may see what: moderators (Manage Server) see anyone's records, members only their own."""

from __future__ import annotations

from tests.fakes.bot import BotHarness


async def test_a_member_sees_only_their_own_quota_and_history(harness: BotHarness) -> None:
    fake = harness.fake
    for command in ("quota view", "history"):
        own = await fake.slash(fake.member, command)
        await own.wait_response()
        assert own.ephemeral and "Only moderators" not in own.content + str(own.embeds)
        other = await fake.slash(fake.member, command, member=fake.moderator)
        await other.wait_response()
        assert other.ephemeral and f"Only moderators can see another member's {command.split()[0]}" in other.content


async def test_a_moderator_sees_anyones_quota(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.moderator, "quota view", member=fake.member)
    await handle.wait_response()
    assert handle.ephemeral and "left today" in handle.content and "Only moderators" not in handle.content


async def test_only_moderators_cancel_other_members_jobs(harness: BotHarness) -> None:
    fake = harness.fake
    queued = await fake.slash(fake.member, "imagine", prompt="a fox", count=1)
    await queued.wait_original(lambda m: bool(m.content or m.embeds))
    [job] = await harness.store.recent_jobs(fake.guild.id, fake.member.id)  # type: ignore[union-attr]
    stranger = fake.add_member("stranger")
    refused = await fake.slash(stranger, "cancel", job=job.id)
    await refused.wait_response()
    assert refused.ephemeral and "belongs to someone else" in refused.content

"""/imagine end to end: the real bot, tiny models, the fake Discord."""

from __future__ import annotations

from tests.fakes.bot import BotHarness


async def test_imagine_posts_four_images_with_buttons(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="a lighthouse at dusk", seed=7)
    assert await handle.wait_response() == 5  # deferred within the deadline
    result = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert len(result.attachments) == 4
    names = [a.filename for a in result.attachments]
    assert names == [f"sdbot-1-{n}-{7 + n - 1}.png" for n in range(1, 5)]
    assert all(a.image().size == (64, 64) for a in result.attachments)
    labels = [b["label"] for b in result.buttons]
    assert labels == ["U1", "U2", "U3", "U4", "🗑️", "V1", "V2", "V3", "V4", "🔄 Reroll"]
    embed = result.embeds[0]
    assert "a lighthouse at dusk" in embed["description"]
    assert "`7`" in next(f["value"] for f in embed["fields"] if f["name"] == "Seeds")
    assert not handle.ephemeral


async def test_seed_minus_one_means_random(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="a lighthouse", seed=-1, count=1)
    result = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    seed = int(result.attachments[0].filename.removesuffix(".png").split("-")[-1])
    assert 0 <= seed <= 4294967295 and seed != 4294967295  # not -1 wrapped into the range
    rerolled = await fake.slash(fake.member, "reroll", job=1, seed=-1)
    assert len((await rerolled.wait_original(lambda m: bool(m.attachments), timeout=30)).attachments) == 1

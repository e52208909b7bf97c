"""The prompt language through /imagine, /job and /reroll: the real bot, tiny models (native
64x64, one token per letter), the fake Discord."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tests.fakes.bot import BotHarness
from tests.fakes.fake_discord.state import StoredMessage

STYLES = Path(__file__).parents[2] / "styles.example.csv"


def job_id(result: StoredMessage) -> int:
    return int(result.attachments[0].filename.split("-")[1])


async def test_inline_aspect_gives_a_wider_image_and_options_win_with_a_note(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="a lighthouse --ar 16:9 --seed 5", count=1)
    result = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert result.attachments[0].image().size == (128, 64)
    assert result.attachments[0].filename.endswith("-5.png")
    assert result.embeds[0]["description"] == "a lighthouse"

    handle = await fake.slash(fake.member, "imagine", prompt="a lighthouse --ar 16:9", count=1, aspect="1:1")
    result = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert result.attachments[0].image().size == (64, 64)
    assert "-# the `aspect` option was used instead of `--ar 16:9` in the prompt" in result.content


async def test_a_permutation_prompt_makes_one_charged_job_per_choice(harness: BotHarness) -> None:
    fake, store = harness.fake, harness.store
    assert store is not None
    handle = await fake.slash(fake.member, "imagine", prompt="a {red, green} bird", count=1, seed=3)
    first = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    second = await handle.wait_followup(lambda m: bool(m.attachments), timeout=30)
    assert first.embeds[0]["description"] == "a red bird" and second.embeds[0]["description"] == "a green bird"
    assert not handle.ephemeral and not second.ephemeral
    assert (await store.quota(fake.guild.id, fake.member.id)).used == 2
    jobs = await store.recent_jobs(fake.guild.id, fake.member.id)
    assert sorted(job.prompt for job in jobs) == ["a green bird", "a red bird"]
    assert {job.typed_prompt for job in jobs} == {"a {red, green} bird"}
    # Same seed, different prompt: the combinations can be compared.
    assert first.attachments[0].filename.endswith("-3.png") and second.attachments[0].filename.endswith("-3.png")


async def test_requests_over_a_cap_are_refused_whole_with_nothing_queued(harness: BotHarness) -> None:
    fake = harness.fake
    refusals = {
        "a {red, green, blue} bird --repeat 2": "This prompt makes 6 jobs",
        "a bird --repeat 50": "the limit is 4",
        # 4 jobs fit SDBOT_MAX_EXPANSION but not the 3 this server lets a member have queued.
        "a {red, green, blue, grey} bird": "This request makes 4 jobs and you have 0 queued; at most 3",
        "a (red:12) bird": "In the prompt, the weight 12 on “red” is outside 0 to 10",
        "a [cat:dog:0.5]": "prompt editing",
        "a bird --quality 2": "--quality is not a flag this bot knows",
        "castle " * 70: "The prompt is 420 tokens long; the limit is 400",
        # 2 jobs of 4 images: more than the quota of 6 takes, so neither runs.
        "a {red, green} bird --seed 1": "You have used 0 of your 6 images for today and this needs 8",
    }
    harness.settings = harness.settings.model_copy(
        update={"max_prompt_tokens": 400, "default_daily_quota": 6, "max_queued_per_user": 3}
    )
    await harness.restart()
    store = harness.store
    assert store is not None
    for prompt, message in refusals.items():
        handle = await fake.slash(fake.member, "imagine", prompt=prompt, count=4)
        await handle.wait_original(timeout=10)
        assert handle.ephemeral and message in handle.content, (prompt, handle.content)
    assert await store.recent_jobs(fake.guild.id, fake.member.id) == []
    assert (await store.quota(fake.guild.id, fake.member.id)).used == 0


async def test_a_tiled_weighted_long_job_is_recorded_and_reroll_reproduces_it(harness: BotHarness) -> None:
    fake, store = harness.fake, harness.store
    assert store is not None
    prompt = "(stone wall:1.3), " + "moss, cracks, " * 8 + "[dark] --tile"  # over 77 tokens
    handle = await fake.slash(fake.member, "imagine", prompt=prompt, count=1, seed=9)
    result = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    job = await store.get_job(job_id(result))
    assert job is not None and job.tile and job.prompt == prompt.removesuffix(" --tile")

    shown = await fake.slash(fake.member, "job", id=job.id)
    record = (await shown.wait_original(timeout=10)).embeds[0]
    fields = {field["name"]: field["value"] for field in record["fields"]}
    assert "seamless tiling" in fields["Parameters"]
    # Over 75 tokens: /job shows the chunks the text encoder read, and they add up to the total.
    chunks = re.search(r"(\d+) prompt tokens in (\d+) chunks \(([\d + ]+)\)", fields["Parameters"])
    assert chunks is not None and int(chunks[2]) >= 2
    assert sum(int(n) for n in chunks[3].split(" + ")) == int(chunks[1])
    assert fields["As typed"] == prompt

    again = await fake.slash(fake.member, "reroll", job=job.id, seed=9)
    rerolled = await again.wait_original(lambda m: bool(m.attachments), timeout=30)
    before = np.asarray(result.attachments[0].image(), dtype=np.int16)
    after = np.asarray(rerolled.attachments[0].image(), dtype=np.int16)
    assert np.abs(before - after).max() <= 2


async def test_styles_are_offered_applied_and_recorded(harness: BotHarness) -> None:
    fake = harness.fake
    harness.settings = harness.settings.model_copy(update={"styles_file": STYLES})
    await harness.restart()
    store = harness.store
    assert store is not None

    choices = await fake.autocomplete(fake.member, "imagine", "style", prompt="a fox", style="Watercolor, pix")
    assert [choice["value"] for choice in choices] == ["Watercolor, Pixel art"]

    handle = await fake.slash(fake.member, "imagine", prompt="a fox", style="watercolor, minimalist", count=1)
    result = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    job = await store.get_job(job_id(result))
    assert job is not None and job.styles == ["Watercolor", "Minimalist"]
    assert job.prompt.startswith("minimalist composition of watercolor painting of a fox")
    assert job.typed_prompt == "a fox"

    handle = await fake.slash(fake.member, "imagine", prompt="a fox", style="Nope")
    await handle.wait_original(timeout=10)
    assert handle.ephemeral and "There is no style called “Nope”" in handle.content

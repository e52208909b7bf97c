"""/describe and "Describe image": four prompt suggestions with buttons, PNG info read back and
reused, bad input refused privately (the tiny Florence-2 writes gibberish: the tests check the flow)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, PngImagePlugin

from sdbot.types import JobKind, JobStatus, PipelineKind
from tests.fakes.bot import BotHarness
from tests.fakes.fake_discord.state import StoredMessage

# What the text encoder reads in one window, without its start and end tokens.
WINDOW_TOKENS = 75


def png(picture: Image.Image, **text: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


async def _describe(harness: BotHarness, data: bytes, filename: str = "look.png") -> StoredMessage:
    handle = await harness.fake.slash(harness.fake.member, "describe", image=harness.fake.make_attachment(data, filename))
    return await handle.wait_original(lambda m: bool(m.embeds) and "Prompts" in m.embeds[0]["description"], timeout=60)


def suggestions_of(answer: StoredMessage) -> list[str]:
    """The text of each numbered code block of the answer."""
    description = answer.embeds[0]["description"]
    return [part.split("```\n", 1)[1].split("\n```", 1)[0] for part in description.split("️⃣ ")[1:]]


async def test_describe_answers_four_suggestions_with_buttons_and_pressing_2_imagines_it(harness: BotHarness) -> None:
    fake, store = harness.fake, harness.store
    assert store is not None
    answer = await _describe(harness, png(Image.new("RGB", (128, 64), (200, 30, 30))))
    labels = [button["label"] for button in answer.buttons]
    assert labels == ["1", "2", "3", "4", "🔄"]
    assert answer.embeds[0]["thumbnail"]["url"].startswith("attachment://")
    suggestions = suggestions_of(answer)
    assert len(suggestions) == 4 and len(set(suggestions)) == 4
    tokenizer = harness.engine.text2img_pipeline.tokenizer
    assert all(0 < len(tokenizer(text, add_special_tokens=False).input_ids) <= WINDOW_TOKENS for text in suggestions)
    described = (await store.recent_jobs(fake.guild.id, fake.member.id))[0]
    assert (described.kind, described.pipeline, described.status) == (JobKind.DESCRIBE, PipelineKind.CAPTION, JobStatus.DONE)
    assert await store.suggestions(described.id) == suggestions
    assert (await store.quota(fake.guild.id, fake.member.id)).used == 0  # describing makes no image

    click = await fake.click(fake.moderator, answer, answer.button(label="2")["custom_id"])
    imagined = await click.wait_original(lambda m: bool(m.attachments), timeout=60)
    job = (await store.recent_jobs(fake.guild.id, fake.moderator.id))[0]
    assert (job.kind, job.prompt) == (JobKind.IMAGINE, suggestions[1])
    assert (job.width, job.height) == (described.width, described.height)  # the picture's shape
    assert len(imagined.attachments) == job.image_count
    assert (await store.quota(fake.guild.id, fake.moderator.id)).used == job.image_count


async def test_reroll_button_gives_four_more(harness: BotHarness) -> None:
    fake = harness.fake
    answer = await _describe(harness, png(Image.new("RGB", (64, 64), (0, 90, 200))))
    click = await fake.click(fake.member, answer, answer.button(label="🔄")["custom_id"])
    again = await click.wait_original(lambda m: bool(m.embeds) and "Prompts" in m.embeds[0]["description"], timeout=60)
    assert len(suggestions_of(again)) == 4 and suggestions_of(again) != suggestions_of(answer)


async def test_settings_of_a_picture_made_here_are_read_back_and_reused_pixel_for_pixel(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="a lighthouse at dusk", seed=777, count=1)
    made = await handle.wait_original(lambda m: bool(m.attachments), timeout=60)
    original = made.attachments[0]
    answer = await _describe(harness, original.data, original.filename)
    description = answer.embeds[0]["description"]
    assert "prompt: a lighthouse at dusk" in description and "seed: 777" in description
    click = await fake.click(fake.member, answer, answer.button(label="Reuse these settings")["custom_id"])
    reused = await click.wait_original(lambda m: bool(m.attachments), timeout=60)
    before = np.asarray(original.image(), dtype=np.int16)
    after = np.asarray(reused.attachments[0].image(), dtype=np.int16)
    assert before.shape == after.shape and np.abs(before - after).max() <= 2


async def test_a1111_metadata_with_mentions_and_markdown_is_shown_inert(harness: BotHarness) -> None:
    parameters = (
        "@everyone **free nitro** ```break out``` <@&1> [link](http://x.test)\n"
        "Negative prompt: `ugly`\nSteps: 3, Sampler: Euler a, CFG scale: 0, Seed: 42, Size: 64x64, Model: other"
    )
    answer = await _describe(harness, png(Image.new("RGB", (64, 64)), parameters=parameters))
    description = answer.embeds[0]["description"]
    made_with = description.split("**Made with** (AUTOMATIC1111):\n", 1)[1].split("\n**Prompts**", 1)[0]
    assert made_with.startswith("```\nprompt: @everyone **free nitro**") and made_with.endswith("\n```")
    assert made_with.count("```") == 2  # the uploaded backticks cannot close the block
    assert "seed: 42" in made_with and "steps: 3" in made_with and "sampler: Euler a" in made_with
    assert "@everyone" not in answer.content and answer.mention_ids == [harness.fake.member.id]
    assert answer.button(label="Reuse these settings")


async def test_describe_image_on_a_message(harness: BotHarness) -> None:
    fake = harness.fake
    posted = await fake.post_message(fake.member, "look", files=[("cat.png", png(Image.new("RGB", (96, 64))))])
    handle = await fake.message_command(fake.member, "Describe image", posted)
    answer = await handle.wait_original(lambda m: bool(m.embeds) and "Prompts" in m.embeds[0]["description"], timeout=60)
    assert len(suggestions_of(answer)) == 4


async def test_bad_input_is_refused_privately_and_charges_nothing(harness: BotHarness) -> None:
    fake, store = harness.fake, harness.store
    assert store is not None
    bomb = io.BytesIO()  # made first: encoding it blocks this loop, which the bot shares
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")
    text_only = await fake.post_message(fake.member, "no picture here")
    refused = [await fake.message_command(fake.member, "Describe image", text_only)]
    refused.append(await fake.slash(fake.member, "describe", image=fake.make_attachment(b"%PDF-1.4", "notes.pdf")))
    refused.append(await fake.slash(fake.member, "describe", image=fake.make_attachment(bomb.getvalue(), "bomb.png")))
    for handle in refused:
        await handle.wait_response()
    assert [handle.ephemeral for handle in refused] == [True, True, True]
    assert "no picture attached" in refused[0].content
    assert "not a picture" in refused[1].content and "far more pixels" in refused[2].content
    assert await store.recent_jobs(fake.guild.id, fake.member.id) == []


async def test_an_animated_picture_is_described_from_its_first_frame(harness: BotHarness) -> None:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    answer = await _describe(harness, buffer.getvalue(), "blink.gif")
    assert "first frame" in answer.content and len(suggestions_of(answer)) == 4

"""Result buttons and image commands: upscale, variations, reroll, uploads."""

from __future__ import annotations

import asyncio
import io

import numpy as np
from PIL import Image

from tests.fakes.bot import BotHarness
from tests.fakes.fake_discord.state import StoredMessage


async def _imagine(harness: BotHarness, **options: object) -> StoredMessage:
    handle = await harness.fake.slash(harness.fake.member, "imagine", **({"prompt": "a red fox"} | options))
    return await handle.wait_original(lambda m: bool(m.attachments), timeout=30)


async def test_upscale_button_doubles_the_image(harness: BotHarness) -> None:
    fake = harness.fake
    result = await _imagine(harness, count=2, seed=5)
    click = await fake.click(fake.moderator, result, result.button(label="U2")["custom_id"])
    upscaled = await click.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert [a.image().size for a in upscaled.attachments] == [(128, 128)]
    # It names its source and links to the message it came from.
    source_field = {f["name"]: f["value"] for f in upscaled.embeds[0]["fields"]}["From"]
    assert source_field.endswith(f"/channels/{fake.guild.id}/{result.channel_id}/{result.id})")
    # The presser pays: the moderator's quota, not the member's.
    store = harness.store
    assert store is not None
    assert (await store.quota(fake.guild.id, fake.moderator.id)).used == 1
    assert (await store.quota(fake.guild.id, fake.member.id)).used == 2


async def test_variation_button_keeps_size_and_changes_pixels(harness: BotHarness) -> None:
    fake = harness.fake
    result = await _imagine(harness, count=1, seed=11)
    click = await fake.click(fake.member, result, result.button(label="V1")["custom_id"])
    varied = await click.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert len(varied.attachments) == 4
    source = np.asarray(result.attachments[0].image(), dtype=np.int16)
    for attachment in varied.attachments:
        pixels = np.asarray(attachment.image(), dtype=np.int16)
        assert pixels.shape == source.shape
        assert np.abs(pixels - source).max() > 0


async def test_reroll_button_gives_new_seeds(harness: BotHarness) -> None:
    fake = harness.fake
    result = await _imagine(harness, count=2, seed=100)
    click = await fake.click(fake.member, result, result.button(label="🔄 Reroll")["custom_id"])
    rerolled = await click.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert len(rerolled.attachments) == 2
    old_names = {a.filename for a in result.attachments}
    assert not old_names & {a.filename for a in rerolled.attachments}


async def test_reroll_with_seed_reproduces_the_image(harness: BotHarness) -> None:
    fake = harness.fake
    result = await _imagine(harness, count=1, seed=4242)
    job_id = int(result.attachments[0].filename.split("-")[1])
    handle = await fake.slash(fake.member, "reroll", job=job_id, seed=4242)
    again = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    original = np.asarray(result.attachments[0].image(), dtype=np.int16)
    reproduced = np.asarray(again.attachments[0].image(), dtype=np.int16)
    assert np.abs(original - reproduced).max() <= 2


async def test_variations_of_an_upload(harness: BotHarness) -> None:
    fake = harness.fake
    picture = Image.new("RGB", (100, 80), (200, 30, 30))
    upload = fake.make_attachment(picture, "mine.png")
    handle = await fake.slash(fake.member, "variations", image=upload, prompt="a red square", count=1)
    varied = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert varied.attachments[0].image().size == (64, 64)


async def test_upscale_of_an_upload(harness: BotHarness) -> None:
    fake = harness.fake
    upload = fake.make_attachment(Image.new("RGB", (64, 72), (0, 90, 200)), "small.png")
    handle = await fake.slash(fake.member, "upscale", image=upload)
    upscaled = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert upscaled.attachments[0].image().size == (128, 128)
    assert "resized" in upscaled.content  # the member is told the picture was cropped to fit


async def test_non_image_upload_is_refused(harness: BotHarness) -> None:
    fake = harness.fake
    upload = fake.make_attachment(b"%PDF-1.4 not a picture", "notes.pdf")
    handle = await fake.slash(fake.member, "upscale", image=upload)
    await handle.wait_response()
    assert handle.ephemeral and "not a picture" in handle.content
    assert await harness.store.recent_jobs(fake.guild.id, fake.member.id) == []  # type: ignore[union-attr]


async def test_decompression_bomb_is_refused_without_decoding(harness: BotHarness) -> None:
    fake = harness.fake
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")  # 400 Mpx in a few KB
    assert len(buffer.getvalue()) < 200_000
    handle = await fake.slash(fake.member, "variations", image=fake.make_attachment(buffer.getvalue(), "bomb.png"),
                              prompt="boom")
    await handle.wait_response()
    assert handle.ephemeral and "far more pixels than the limit" in handle.content


async def test_oversized_upload_is_refused(harness: BotHarness) -> None:
    harness.fake.attachment_size_limit = 50 * 2**20
    fake = harness.fake
    buffer = io.BytesIO()
    Image.new("RGB", (5000, 4000)).save(buffer, format="PNG")
    handle = await fake.slash(fake.member, "upscale", image=fake.make_attachment(buffer.getvalue(), "huge.png"))
    await handle.wait_response()
    assert handle.ephemeral and "5000×4000" in handle.content


async def test_garbage_bytes_named_png_are_refused(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.member, "upscale", image=fake.make_attachment(b"\x89PNG garbage" * 10, "x.png"))
    await handle.wait_response()
    assert handle.ephemeral and "could not be read" in handle.content


async def test_missing_image_file_is_regenerated_from_its_seed(harness: BotHarness) -> None:
    fake, store = harness.fake, harness.store
    assert store is not None
    result = await _imagine(harness, count=1, seed=77)
    job_id = int(result.attachments[0].filename.split("-")[1])
    [image] = await store.images(job_id)
    assert image.path is not None
    original_bytes = open(image.path, "rb").read()
    import os

    os.remove(image.path)
    click = await fake.click(fake.member, result, result.button(label="U1")["custom_id"])
    upscaled = await click.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert upscaled.attachments[0].image().size == (128, 128)
    regenerated = np.asarray(Image.open(image.path), dtype=np.int16)
    assert np.abs(regenerated - np.asarray(Image.open(io.BytesIO(original_bytes)), dtype=np.int16)).max() <= 2


async def test_variations_need_exactly_one_source(harness: BotHarness) -> None:
    fake = harness.fake
    neither = await fake.slash(fake.member, "variations")
    await neither.wait_response()
    assert neither.ephemeral and "Give either `job` and `index`" in neither.content
    no_index = await fake.slash(fake.member, "variations", job=1)
    await no_index.wait_response()
    assert no_index.ephemeral and "Add `index`" in no_index.content
    no_prompt = await fake.slash(fake.member, "variations", image=fake.make_attachment(Image.new("RGB", (64, 64))))
    await no_prompt.wait_response()
    assert no_prompt.ephemeral and "prompt" in no_prompt.content
    assert not (harness.settings.output_dir / "uploads").exists()  # refused before anything was stored


async def test_a_double_click_makes_one_job(harness: BotHarness) -> None:
    fake, store = harness.fake, harness.store
    assert store is not None
    result = await _imagine(harness, count=1, seed=21)
    for label in ("V1", "U1", "🔄 Reroll"):
        button = result.button(label=label)["custom_id"]
        first = await fake.click(fake.member, result, button)
        await asyncio.sleep(0.015)
        second = await fake.click(fake.member, result, button)
        await second.wait_response()
        made = await first.wait_original(lambda m: bool(m.attachments), timeout=30)
        job_id = int(made.attachments[0].filename.split("-")[1])
        assert second.ephemeral and second.content == f"Already queued as #{job_id}."
    jobs = await store.recent_jobs(fake.guild.id, fake.member.id)
    assert len(jobs) == 4  # the imagine and one job per button
    assert (await store.quota(fake.guild.id, fake.member.id)).used == 1 + 4 + 1 + 1


async def test_delete_button_removes_the_result_for_its_owner_and_keeps_the_record(harness: BotHarness) -> None:
    fake = harness.fake
    result = await _imagine(harness, count=1, seed=8)
    job_id = int(result.attachments[0].filename.split("-")[1])
    click = await fake.click(fake.member, result, result.button(label="🗑️")["custom_id"])
    await click.wait_response()
    assert click.ephemeral and f"Deleted the result of job #{job_id}" in click.content
    assert result.deleted
    assert harness.store is not None and await harness.store.get_job(job_id) is not None
    assert await harness.store.audit_entries(fake.guild.id) == []  # an owner's own delete is not moderation


async def test_only_the_owner_or_a_moderator_deletes_a_result(harness: BotHarness) -> None:
    fake = harness.fake
    result = await _imagine(harness, count=1, seed=9)
    delete = result.button(label="🗑️")["custom_id"]
    refused = await fake.click(fake.add_member("stranger"), result, delete)
    await refused.wait_response()
    assert refused.ephemeral and "belongs to someone else" in refused.content
    assert not result.deleted
    removed = await fake.click(fake.moderator, result, delete)
    await removed.wait_response()
    assert result.deleted
    assert harness.store is not None
    [entry] = await harness.store.audit_entries(fake.guild.id)
    assert (entry.action, entry.target_user_id) == ("result.delete", fake.member.id)

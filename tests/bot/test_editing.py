"""The editing buttons under an upscaled image (issue 12), their prompt box, Remix and the editing
commands, through the real bot, engine and store against the fake Discord."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation import edit_geometry
from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths
from sdbot.store import Store
from sdbot.types import EditOp, JobRow
from tests.fakes.bot import BotHarness, bot_settings
from tests.fakes.fake_discord.client_api import FakeDiscord
from tests.fakes.fake_discord.state import StoredMessage

EDIT_LABELS = ["Vary (Subtle)", "Vary (Strong)", "Zoom Out 2x", "Zoom Out 1.5x", "Vary (Region)", "⬅️", "➡️", "⬆️", "⬇️"]


async def _upscaled(harness: BotHarness, seed: int = 7) -> StoredMessage:
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="a harbour at dawn", count=1, seed=seed)
    grid = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    click = await fake.click(fake.member, grid, grid.button(label="U1")["custom_id"])
    return await click.wait_original(lambda m: bool(m.attachments), timeout=30)


async def _press(harness: BotHarness, message: StoredMessage, label: str) -> StoredMessage:
    click = await harness.fake.click(harness.fake.member, message, message.button(label=label)["custom_id"])
    return await click.wait_original(lambda m: bool(m.attachments), timeout=60)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _job_id(message: StoredMessage) -> int:
    return int(message.attachments[0].filename.split("-")[1])


async def _job(store: Store | None, message: StoredMessage) -> JobRow:
    assert store is not None
    job = await store.get_job(_job_id(message))
    assert job is not None
    return job


def _kept(job: JobRow, source: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The canvas the edit started from, and where its mask leaves pixels alone."""
    assert job.edit is not None
    canvas = edit_geometry.canvas_of(source, job.edit, job.width, job.height)
    outside = np.asarray(edit_geometry.mask_of(job.edit, job.width, job.height)) == 0
    return _pixels(canvas), outside


async def test_only_an_upscaled_image_gets_the_editing_row(harness: BotHarness) -> None:
    upscaled = await _upscaled(harness)
    labels = [button["label"] for button in upscaled.buttons]
    assert labels == ["U1", "🗑️", "V1", "🔄 Reroll", *EDIT_LABELS]
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="a grid", count=2, seed=3)
    grid = await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    assert not set(EDIT_LABELS) & {button["label"] for button in grid.buttons}


async def test_zoom_out_keeps_the_size_and_the_shrunk_picture(harness: BotHarness) -> None:
    upscaled = await _upscaled(harness)
    source = upscaled.attachments[0].image()
    for label, inner in (("Zoom Out 2x", 64), ("Zoom Out 1.5x", 85)):
        zoomed = await _press(harness, upscaled, label)
        job = await _job(harness.store, zoomed)
        assert job.edit is not None and job.edit.op is EditOp.ZOOM_OUT
        assert job.edit.place[2:] == (inner, inner)
        canvas, outside = _kept(job, source)
        assert len(zoomed.attachments) == 4
        for attachment in zoomed.attachments:
            pixels = _pixels(attachment.image())
            assert pixels.shape == (128, 128, 3)  # the same size as the source
            assert np.abs(pixels - canvas)[outside].max() <= 2
            assert np.abs(pixels - canvas)[~outside].mean() > 1  # the border was painted


# Each pan: the new canvas size, and where the old picture sits on it (rows, columns).
PANS = {
    "➡️": ((192, 128), (slice(0, 128), slice(0, 128))),
    "⬅️": ((192, 128), (slice(0, 128), slice(64, 192))),
    "⬆️": ((128, 192), (slice(64, 192), slice(0, 128))),
    "⬇️": ((128, 192), (slice(0, 128), slice(0, 128))),
}


async def test_pan_grows_the_canvas_and_keeps_the_old_pixels(harness: BotHarness) -> None:
    store, fake = harness.store, harness.fake
    assert store is not None
    upscaled = await _upscaled(harness)
    source = _pixels(upscaled.attachments[0].image())
    for pressed, (label, (size, kept)) in enumerate(PANS.items(), start=1):
        panned = await _press(harness, upscaled, label)
        assert len(panned.attachments) == 4
        for attachment in panned.attachments:
            image = attachment.image()
            assert image.size == size
            assert np.abs(_pixels(image)[kept] - source).max() <= 2
        # The presser is charged per image; the record keeps the edit for /job and /reroll.
        assert (await store.quota(fake.guild.id, fake.member.id)).used == 1 + 1 + 4 * pressed
        job = await _job(store, panned)
        assert job.edit is not None and job.edit.op is EditOp.PAN and (job.width, job.height) == size
        assert job.source_job_id == _job_id(upscaled) and job.source_index == 0


async def test_vary_subtle_and_strong_use_their_strengths(harness: BotHarness) -> None:
    upscaled = await _upscaled(harness)
    source = _pixels(upscaled.attachments[0].image())
    for label, strength in (("Vary (Subtle)", 0.35), ("Vary (Strong)", 0.75)):
        varied = await _press(harness, upscaled, label)
        job = await _job(harness.store, varied)
        assert job.strength == strength and job.edit is None
        assert [a.image().size for a in varied.attachments] == [(128, 128)] * 4
        assert all(np.abs(_pixels(a.image()) - source).mean() > 1 for a in varied.attachments)


async def test_job_shows_an_edit_and_reroll_reproduces_it_after_a_restart(
    harness: BotHarness, tiny_engine: DiffusionEngine
) -> None:
    fake = harness.fake
    upscaled = await _upscaled(harness)
    panned = await _press(harness, upscaled, "⬇️")
    job = await _job(harness.store, panned)
    await harness.restart(tiny_engine)
    shown = await fake.slash(fake.member, "job", id=job.id)
    await shown.wait_response()
    fields = {field["name"]: field["value"] for field in shown.embeds[0]["fields"]}
    assert fields["Edit"].startswith("Pan down: source at 0,0 as 128×128 on a 128×192 canvas")
    # Links to where it was posted and to the upscale it was made from, also after the restart.
    assert fields["Posted"].endswith(f"/{panned.channel_id}/{panned.id})")
    assert fields["From"].endswith(f"/{upscaled.channel_id}/{upscaled.id})")
    rerolled = await fake.slash(fake.member, "reroll", job=job.id, seed=job.seeds[2])
    again = await rerolled.wait_original(lambda m: bool(m.attachments), timeout=60)
    assert np.abs(_pixels(again.attachments[0].image()) - _pixels(panned.attachments[2].image())).max() <= 2
    # The editing buttons of the message posted before the restart still work.
    zoomed = await _press(harness, upscaled, "Zoom Out 2x")
    assert [a.image().size for a in zoomed.attachments] == [(128, 128)] * 4


async def test_vary_region_asks_for_the_region_and_repaints_only_it(harness: BotHarness) -> None:
    fake, store = harness.fake, harness.store
    upscaled = await _upscaled(harness)
    source = upscaled.attachments[0].image()
    shown = await fake.click(fake.member, upscaled, upscaled.button(label="Vary (Region)")["custom_id"])
    modal = await shown.wait_modal()
    assert "Vary (Region)" in modal["title"]
    sent = await fake.submit_modal(fake.member, shown, {"region": "0,50,100,50", "prompt": "a red boat"})
    region = await sent.wait_original(lambda m: bool(m.attachments), timeout=60)
    job = await _job(store, region)
    assert job.prompt == "a red boat" and job.edit is not None and job.edit.mask == (0, 64, 128, 64)
    canvas, outside = _kept(job, source)
    assert outside[:64].all() and not outside[64:].any()
    for attachment in region.attachments:
        pixels = _pixels(attachment.image())
        assert pixels.shape == (128, 128, 3)
        assert np.abs(pixels - canvas)[outside].max() <= 2


@pytest.mark.parametrize(("region", "says"), [
    ("middle", "is not a region"),
    ("50,50,60,10", "reaches past the picture"),
    ("10,10,0,20", "has no area"),
])
async def test_a_bad_region_is_refused_privately_and_charges_nothing(harness: BotHarness, region: str, says: str) -> None:
    fake, store = harness.fake, harness.store
    assert store is not None
    upscaled = await _upscaled(harness)
    before = [job.id for job in await store.recent_jobs(fake.guild.id, fake.member.id)]
    shown = await fake.click(fake.member, upscaled, upscaled.button(label="Vary (Region)")["custom_id"])
    await shown.wait_modal()
    sent = await fake.submit_modal(fake.member, shown, {"region": region})
    await sent.wait_response()
    assert sent.ephemeral and says in sent.content
    assert [job.id for job in await store.recent_jobs(fake.guild.id, fake.member.id)] == before
    assert (await store.quota(fake.guild.id, fake.member.id)).used == 2


async def test_remix_opens_the_prompt_before_a_zoom(harness: BotHarness) -> None:
    fake = harness.fake
    upscaled = await _upscaled(harness)
    turned = await fake.slash(fake.member, "settings", remix="on")
    await turned.wait_response()
    assert turned.ephemeral and "on" in turned.content
    shown = await fake.click(fake.member, upscaled, upscaled.button(label="Zoom Out 2x")["custom_id"])
    modal = await shown.wait_modal()
    assert "a harbour at dawn" in str(modal["components"])  # prefilled with the image's prompt
    sent = await fake.submit_modal(fake.member, shown, {"prompt": "a harbour at dusk, wide view"})
    zoomed = await sent.wait_original(lambda m: bool(m.attachments), timeout=60)
    job = await _job(harness.store, zoomed)
    assert job.prompt == "a harbour at dusk, wide view" and job.edit is not None
    # Someone without remix still gets the job at once.
    click = await fake.click(fake.moderator, upscaled, upscaled.button(label="➡️")["custom_id"])
    assert (await click.wait_original(lambda m: bool(m.attachments), timeout=60)).attachments


async def test_editing_commands_on_an_upload(harness: BotHarness) -> None:
    fake = harness.fake
    picture = Image.new("RGB", (64, 64), (20, 160, 60))
    zoom = await fake.slash(fake.member, "zoomout", image=fake.make_attachment(picture), factor="2x")
    zoomed = await zoom.wait_original(lambda m: bool(m.attachments), timeout=60)
    assert [a.image().size for a in zoomed.attachments] == [(64, 64)] * 4
    pan = await fake.slash(fake.member, "pan", image=fake.make_attachment(picture), direction="left")
    panned = await pan.wait_original(lambda m: bool(m.attachments), timeout=60)
    for attachment in panned.attachments:
        assert attachment.image().size == (96, 64)
        assert np.abs(_pixels(attachment.image())[:, 32:] - _pixels(picture)).max() <= 2
    inpaint = await fake.slash(fake.member, "inpaint", image=fake.make_attachment(picture), region="center",
                               prompt="a flower")
    repainted = await inpaint.wait_original(lambda m: bool(m.attachments), timeout=60)
    job = await _job(harness.store, repainted)
    assert job.prompt == "a flower" and job.edit is not None and job.edit.mask == (16, 16, 32, 32)
    refused = await fake.slash(fake.member, "pan", image=fake.make_attachment(b"%PDF-1.4", "a.pdf"), direction="up")
    await refused.wait_response()
    assert refused.ephemeral and "not a picture" in refused.content


@pytest.fixture
async def capped(
    fake_discord: FakeDiscord, tiny_models: TinyModelPaths, tiny_engine: DiffusionEngine, tmp_path: Path
) -> AsyncIterator[BotHarness]:
    running = BotHarness(fake_discord, bot_settings(tiny_models, tmp_path, fake_discord, max_size=128), tiny_engine)
    await running.start()
    yield running
    await running.stop()


async def test_a_pan_past_the_size_cap_is_refused(capped: BotHarness) -> None:
    fake, store = capped.fake, capped.store
    assert store is not None
    upscaled = await _upscaled(capped)
    click = await fake.click(fake.member, upscaled, upscaled.button(label="➡️")["custom_id"])
    await click.wait_response()
    assert click.ephemeral and "largest side allowed (128 pixels)" in click.content
    assert len(await store.recent_jobs(fake.guild.id, fake.member.id)) == 2
    assert (await store.quota(fake.guild.id, fake.member.id)).used == 2


async def test_inpaint_with_an_uploaded_mask_repaints_its_white_and_rerolls(harness: BotHarness) -> None:
    fake = harness.fake
    picture = Image.new("RGB", (64, 64), (200, 120, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 64, 24))  # the top strip
    handle = await fake.slash(fake.member, "inpaint", image=fake.make_attachment(picture), prompt="a blue sky",
                              mask=fake.make_attachment(mask.convert("RGB"), "mask.png"))
    painted = await handle.wait_original(lambda m: bool(m.attachments), timeout=60)
    job = await _job(harness.store, painted)
    assert job.edit is not None and job.edit.mask_image is not None
    for attachment in painted.attachments:
        pixels = _pixels(attachment.image())
        assert np.abs(pixels[24:] - _pixels(picture)[24:]).max() <= 2
        assert np.abs(pixels[:24] - _pixels(picture)[:24]).mean() > 1
    again = await fake.slash(fake.member, "reroll", job=job.id, seed=job.seeds[1])
    rerolled = await again.wait_original(lambda m: bool(m.attachments), timeout=60)
    assert np.abs(_pixels(rerolled.attachments[0].image()) - _pixels(painted.attachments[1].image())).max() <= 2
    store = harness.store
    assert store is not None
    jobs = len(await store.recent_jobs(fake.guild.id, fake.member.id))
    for options, says in (
        ({"mask": fake.make_attachment(Image.new("RGB", (32, 32), "white"), "small.png")}, "must be the same size"),
        ({}, "Give either `region`"),
    ):
        refused = await fake.slash(fake.member, "inpaint", image=fake.make_attachment(picture), prompt="sky",
                                   **options)
        await refused.wait_response()
        assert refused.ephemeral and says in refused.content
    assert len(await store.recent_jobs(fake.guild.id, fake.member.id)) == jobs


async def test_a_vary_region_box_opened_before_a_restart_is_still_sent(
    harness: BotHarness, tiny_engine: DiffusionEngine
) -> None:
    fake = harness.fake
    upscaled = await _upscaled(harness)
    shown = await fake.click(fake.member, upscaled, upscaled.button(label="Vary (Region)")["custom_id"])
    await shown.wait_modal()
    await harness.restart(tiny_engine)  # the member is still typing
    sent = await fake.submit_modal(fake.member, shown, {"region": "top", "prompt": "a red boat"})
    region = await sent.wait_original(lambda m: bool(m.attachments), timeout=60)
    job = await _job(harness.store, region)
    assert job.prompt == "a red boat" and job.edit is not None and job.edit.mask == (0, 0, 128, 64)

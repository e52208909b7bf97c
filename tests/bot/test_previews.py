"""Live previews through the fake Discord: the running job's message is edited with a small
preview picture and the step, never more often than the interval, paused by a 429, and the result
replaces the preview."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths
from tests.fakes.bot import BotHarness, SlowedEngine, bot_settings
from tests.fakes.fake_discord.client_api import FakeDiscord
from tests.fakes.fake_discord.server import RequestRecord

INTERVAL_S = 0.3
STEPS = 16
STEP_S = 0.1
MESSAGE_EDITS = r"/webhooks/\d+/[^/]+/messages/\d+"  # the reply by id: progress, previews, result


@pytest.fixture(scope="module")
def preview_engine(tiny_models: TinyModelPaths) -> DiffusionEngine:
    return DiffusionEngine.load(tiny_models.engine_config(preview_interval_s=INTERVAL_S))


@pytest.fixture
async def harness(
    fake_discord: FakeDiscord, tiny_models: TinyModelPaths, preview_engine: DiffusionEngine, tmp_path: Path
) -> AsyncIterator[BotHarness]:
    settings = bot_settings(tiny_models, tmp_path, fake_discord, progress_interval_s=0.1, preview_interval_s=INTERVAL_S)
    running = BotHarness(fake_discord, settings, preview_engine)
    await running.start(SlowedEngine(preview_engine, step_s=STEP_S))
    yield running
    await running.stop()


def preview_names(payload: dict) -> list[str]:  # type: ignore[type-arg]
    return [a["filename"] for a in payload.get("attachments", []) if "preview" in a["filename"]]


def gaps(requests: list[RequestRecord]) -> list[float]:
    return [later.at - earlier.at for earlier, later in zip(requests, requests[1:])]


async def test_previews_arrive_as_edits_within_the_interval_and_the_result_replaces_them(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="a lighthouse forming", count=4, steps=STEPS)
    shown = await handle.wait_original(lambda m: any("preview" in a.filename for a in m.attachments), timeout=30)
    [preview] = shown.attachments
    picture = Image.open(io.BytesIO(preview.data))
    assert picture.format == "JPEG" and picture.size == (128, 128)  # the 2x2 grid of four 64 px images
    assert f"/{STEPS}" in shown.content and "step" in shown.content

    result = await handle.wait_original(lambda m: bool(m.embeds), timeout=30)
    assert len(result.attachments) == 4
    assert all("preview" not in a.filename and a.filename.endswith(".png") for a in result.attachments)
    previews = [edit for edit in result.history if preview_names(edit)]
    assert len(previews) >= 2  # the picture was updated as the image formed
    edits = fake.requests_to("PATCH", MESSAGE_EDITS)
    assert sum(bool(edit.files) for edit in edits[:-1]) >= 2  # previews are uploads, not links
    # Every edit before the result waited the interval after the one before it.
    assert min(gaps(edits[:-1])) >= INTERVAL_S - 0.02


async def test_a_rate_limit_pauses_the_message_edits(harness: BotHarness) -> None:
    fake = harness.fake
    fake.faults.rate_limit("PATCH", MESSAGE_EDITS, times=1, retry_after=0.8)
    handle = await fake.slash(fake.member, "imagine", prompt="a patient fox", count=1, steps=STEPS)
    result = await handle.wait_original(lambda m: bool(m.embeds), timeout=30)
    assert len(result.attachments) == 1 and "preview" not in result.attachments[0].filename
    edits = fake.requests_to("PATCH", MESSAGE_EDITS)
    limited = next(index for index, edit in enumerate(edits) if edit.status == 429)
    assert edits[limited + 1].at - edits[limited].at >= 0.8 - 0.02  # nothing until retry_after passed
    assert any(preview_names(edit) for edit in result.history)  # previews went on afterwards


async def test_a_job_cancelled_under_a_preview_ends_without_it(harness: BotHarness) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="a change of mind", count=1, steps=STEPS * 2)
    shown = await handle.wait_original(lambda m: any("preview" in a.filename for a in m.attachments), timeout=30)
    click = await fake.click(fake.member, shown, shown.button(label="Cancel")["custom_id"])
    await click.wait_response()
    ended = await handle.wait_original(lambda m: "cancelled" in m.content, timeout=30)
    assert ended.attachments == []  # the preview went with the job

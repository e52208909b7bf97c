"""The model catalogue and LoRAs end to end: the real bot on the tiny catalogue (`tiny`, SD, the
default; `tiny-xl`, SDXL; `tiny-flux`, FLUX; `tiny-sd3`, SD3; LoRA `tiny-ink` for SD), a memory
budget that holds one model at a time, and the fake Discord."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.engine.diffusion import DiffusionEngine
from generation.engine.png_metadata import read_record
from generation.engine.tiny_models import TinyModelPaths
from generation.family_limits import no_negative, no_weights
from tests.fakes.bot import BotHarness, SlowedEngine, bot_settings
from tests.fakes.fake_discord.client_api import FakeDiscord
from tests.fakes.fake_discord.state import StoredMessage

ONE_MODEL_GB = 1e-6  # any model is over this budget: loading one unloads the other


@pytest.fixture(scope="module")
def catalogue_engine(tiny_models: TinyModelPaths) -> DiffusionEngine:
    return DiffusionEngine.load(
        tiny_models.engine_config(models_file=tiny_models.models_file, gpu_memory_gb=ONE_MODEL_GB)
    )


@pytest.fixture
async def harness(
    fake_discord: FakeDiscord, tiny_models: TinyModelPaths, catalogue_engine: DiffusionEngine, tmp_path: Path
) -> AsyncIterator[BotHarness]:
    settings = bot_settings(tiny_models, tmp_path, fake_discord, models_file=tiny_models.models_file,
                            gpu_memory_gb=ONE_MODEL_GB, max_batch=1)
    running = BotHarness(fake_discord, settings, catalogue_engine)
    await running.start()
    yield running
    await running.stop()


def job_id(result: StoredMessage) -> int:
    return int(result.attachments[0].filename.split("-")[1])


def pixels(message: StoredMessage) -> np.ndarray:
    return np.asarray(message.attachments[0].image(), dtype=np.int16)


def fields(message: StoredMessage) -> dict[str, str]:
    return {field["name"]: field["value"] for field in message.embeds[0]["fields"]}


async def imagine(harness: BotHarness, **options: object) -> StoredMessage:
    handle = await harness.fake.slash(harness.fake.member, "imagine", prompt="a lighthouse", count=1, **options)
    return await handle.wait_original(lambda m: bool(m.attachments), timeout=60)


async def test_model_and_lora_autocomplete_answer_from_the_catalogue(harness: BotHarness) -> None:
    fake = harness.fake
    models = await fake.autocomplete(fake.member, "imagine", "model", prompt="a fox", model="XL")
    assert [(c["name"], c["value"]) for c in models] == [("tiny-xl — tiny SDXL test model", "tiny-xl")]
    everything = await fake.autocomplete(fake.member, "imagine", "model", prompt="a fox", model="")
    assert [c["value"] for c in everything] == ["tiny", "tiny-xl", "tiny-flux", "tiny-sd3"]
    loras = await fake.autocomplete(fake.member, "imagine", "lora", prompt="a fox", lora="in")
    assert [(c["name"], c["value"]) for c in loras] == [("tiny-ink — tiny test LoRA", "tiny-ink")]
    # Only LoRAs of the chosen model's family are offered.
    assert await fake.autocomplete(fake.member, "imagine", "lora", prompt="a fox", model="tiny-xl", lora="") == []


async def test_a_job_on_model_b_while_a_is_loaded_switches_logs_and_records_it(
    harness: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    await imagine(harness, model="tiny")
    with caplog.at_level(logging.INFO, logger="generation.engine.diffusion"):
        result = await imagine(harness, model="tiny-xl", seed=3)
    switches = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model switch")]
    assert len(switches) == 1 and switches[0].startswith("model switch: tiny -> tiny-xl in ")
    assert "(unloaded tiny)" in switches[0]
    assert fields(result)["Model"] == "tiny-xl"
    record = read_record(result.attachments[0].data)
    assert record is not None and record.extra["model"] == "tiny-xl"
    assert record.model_id.endswith("pipeline-sdxl") and record.model_revision

    shown = await harness.fake.slash(harness.fake.member, "job", id=job_id(result))
    model = fields(await shown.wait_original(timeout=10))["Model"]
    assert model.startswith("tiny-xl (") and f"@ {record.model_revision}" in model


async def test_two_members_on_two_models_are_both_served_fairly(harness: BotHarness) -> None:
    fake = harness.fake
    await harness.restart(SlowedEngine(harness.engine, step_s=0.05))  # everything queues before it runs
    store = harness.store
    assert store is not None
    other = fake.add_member("bob")
    handles = []
    for _ in range(3):
        handles.append(await fake.slash(fake.member, "imagine", prompt="a lighthouse", count=1, model="tiny"))
    for _ in range(3):
        handles.append(await fake.slash(other, "imagine", prompt="a lighthouse", count=1, model="tiny-xl"))
    results = [await handle.wait_original(lambda m: bool(m.attachments), timeout=90) for handle in handles]
    jobs = [await store.get_job(job_id(result)) for result in results]
    order = sorted((job.finished_at or 0.0, job.user_id) for job in jobs if job is not None)
    first_half = [user for _, user in order[:3]]
    # Fair share with one model switch at most put off: bob is not left until alice is done.
    assert first_half.count(other.id) >= 1 and first_half.count(fake.member.id) >= 1
    assert {job.model for job in jobs if job is not None} == {"tiny", "tiny-xl"}


async def test_a_lora_changes_the_pixels_is_recorded_and_reroll_reproduces_it(harness: BotHarness) -> None:
    fake = harness.fake
    plain = await imagine(harness, seed=11)
    styled = await imagine(harness, seed=11, lora="tiny-ink:0.8")
    assert np.abs(pixels(plain) - pixels(styled)).max() > 2
    assert fields(styled)["LoRA"] == "tiny-ink:0.8"
    record = read_record(styled.attachments[0].data)
    assert record is not None
    (lora,) = record.extra["loras"]
    assert (lora["name"], lora["weight"], len(lora["revision"])) == ("tiny-ink", 0.8, 16)

    shown = await fake.slash(fake.member, "job", id=job_id(styled))
    assert fields(await shown.wait_original(timeout=10))["LoRA"] == f"tiny-ink:0.8 @ {lora['revision']}"

    await imagine(harness, model="tiny-xl")  # the other model in between: the LoRA job's model unloaded
    again = await fake.slash(fake.member, "reroll", job=job_id(styled), seed=11)
    rerolled = await again.wait_original(lambda m: bool(m.attachments), timeout=60)
    assert np.abs(pixels(styled) - pixels(rerolled)).max() <= 2
    assert fields(rerolled)["LoRA"] == "tiny-ink:0.8"

    # The V button keeps the source job's model and LoRAs too.
    click = await fake.click(fake.member, styled, styled.button(label="V1")["custom_id"])
    varied = await click.wait_original(lambda m: bool(m.attachments), timeout=60)
    assert (fields(varied)["Model"], fields(varied)["LoRA"]) == ("tiny", "tiny-ink:0.8")


async def test_unknown_models_and_loras_of_another_family_are_refused_with_nothing_charged(
    harness: BotHarness,
) -> None:
    fake, store = harness.fake, harness.store
    assert store is not None
    refusals = [
        ({"model": "nope"}, "There is no model called “nope”"),
        ({"lora": "nope"}, "There is no LoRA called “nope”"),
        ({"model": "tiny-xl", "lora": "tiny-ink"}, "LoRA tiny-ink is made for SD models; tiny-xl is an SDXL model"),
        ({"lora": "tiny-ink:9"}, "must be between -2 and 2"),
    ]
    for options, message in refusals:
        handle = await fake.slash(fake.member, "imagine", prompt="a fox", **options)
        await handle.wait_original(timeout=10)
        assert handle.ephemeral and message in handle.content, (options, handle.content)
    assert await store.recent_jobs(fake.guild.id, fake.member.id) == []
    assert (await store.quota(fake.guild.id, fake.member.id)).used == 0


async def test_sdxl_prompts_are_counted_and_capped_before_queueing_like_sd(harness: BotHarness) -> None:
    fake, store = harness.fake, harness.store
    assert store is not None
    for options, message in [
        ({"prompt": "castle " * 80}, "The prompt is 480 tokens long; the limit is 450"),
        ({"prompt": "a fox", "negative": "(castle) " * 80}, "The negative prompt is 480 tokens long"),
    ]:
        handle = await fake.slash(fake.member, "imagine", model="tiny-xl", **options)
        await handle.wait_original(timeout=10)
        assert handle.ephemeral and message in handle.content, (options, handle.content)
    assert await store.recent_jobs(fake.guild.id, fake.member.id) == []
    assert (await store.quota(fake.guild.id, fake.member.id)).used == 0
    # Under the cap, a weighted prompt past 77 tokens is made, and /job shows its chunks.
    long = "(castle:1.3), " + "moss, " * 20 + "[fog]"
    handle = await fake.slash(fake.member, "imagine", prompt=long, model="tiny-xl", count=1)
    made = await handle.wait_original(lambda m: bool(m.attachments), timeout=60)
    shown = await fake.slash(fake.member, "job", id=job_id(made))
    parameters = fields(await shown.wait_original(timeout=10))["Parameters"]
    assert "prompt tokens in 2 chunks" in parameters


async def test_moderators_choose_the_servers_default_model(harness: BotHarness) -> None:
    fake = harness.fake
    chosen = await fake.slash(fake.moderator, ["model", "default"], name="tiny-xl")
    await chosen.wait_original(timeout=10)
    assert chosen.ephemeral and "tiny-xl" in chosen.content
    assert fields(await imagine(harness))["Model"] == "tiny-xl"
    shown = await fake.slash(fake.member, "help")
    await shown.wait_response()
    assert "draws with **tiny-xl** here; `model:` picks one of 3 others." in str(shown.embeds[0]["fields"])
    reset = await fake.slash(fake.moderator, ["model", "default"])
    await reset.wait_original(timeout=10)
    assert fields(await imagine(harness))["Model"] == "tiny"


async def test_describe_suggestions_run_on_the_servers_default_model(harness: BotHarness) -> None:
    fake = harness.fake
    chosen = await fake.slash(fake.moderator, ["model", "default"], name="tiny-xl")
    await chosen.wait_original(timeout=10)
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 60)).save(picture, format="PNG")
    described = await fake.slash(fake.member, "describe", image=fake.make_attachment(picture.getvalue(), "look.png"))
    answer = await described.wait_original(lambda m: bool(m.embeds) and "Prompts" in m.embeds[0]["description"],
                                           timeout=60)
    click = await fake.click(fake.member, answer, answer.button(label="1")["custom_id"])
    made = await click.wait_original(lambda m: bool(m.attachments), timeout=60)
    assert fields(made)["Model"] == "tiny-xl"


async def test_an_upscale_and_its_edits_keep_the_source_jobs_model(harness: BotHarness) -> None:
    fake = harness.fake
    made = await imagine(harness, model="tiny-xl", seed=5)
    click = await fake.click(fake.member, made, made.button(label="U1")["custom_id"])
    upscaled = await click.wait_original(lambda m: bool(m.attachments), timeout=60)
    assert fields(upscaled)["Model"] == "tiny-xl"
    zoom = await fake.click(fake.member, upscaled, upscaled.button(label="Zoom Out 2x")["custom_id"])
    zoomed = await zoom.wait_original(lambda m: bool(m.attachments), timeout=90)
    assert fields(zoomed)["Model"] == "tiny-xl"
    record = read_record(zoomed.attachments[0].data)
    assert record is not None and record.model_id.endswith("pipeline-sdxl")


@pytest.mark.parametrize(("model", "notes"), [
    ("tiny-flux", (no_weights("flux"), no_negative("flux"))),
    ("tiny-sd3", (no_weights("sd3"),)),  # SD3 has real CFG: its negative prompt is read
])
async def test_an_sd3_or_flux_result_tells_what_its_family_leaves_out_and_every_button_under_it_works(
    harness: BotHarness, model: str, notes: tuple[str, ...]
) -> None:
    fake = harness.fake
    handle = await fake.slash(fake.member, "imagine", prompt="a (red:1.3) fox BREAK snow", negative="blurry",
                              count=2, seed=5, model=model)
    made = await handle.wait_original(lambda m: bool(m.attachments), timeout=60)
    queued = next(payload["content"] for payload in made.history if "queued" in payload.get("content", ""))
    for note in notes:
        assert note in queued
        assert made.content.count(note) == 1  # told again on the result, once
    if model == "tiny-sd3":
        assert "negative prompt" not in made.content
    assert fields(made)["Model"] == model and len(made.attachments) == 2
    record = read_record(made.attachments[0].data)
    assert record is not None and record.scheduler == "FlowMatchEulerDiscreteScheduler"
    assert record.negative_prompt == "blurry"
    assert made.attachments[0].image().size == (64, 64)
    folder = f"pipeline-{model.removeprefix('tiny-')}"

    varied = await _press(harness, made, "V1")
    assert fields(varied)["Model"] == model and varied.attachments[0].image().size == (64, 64)
    upscaled = await _press(harness, made, "U1")
    assert upscaled.attachments[0].image().size == (128, 128)
    for label in ("Vary (Subtle)", "Zoom Out 2x", "➡️"):
        edited = await _press(harness, upscaled, label)
        assert fields(edited)["Model"] == model, label
        edited_record = read_record(edited.attachments[0].data)
        assert edited_record is not None and edited_record.model_id.endswith(folder), label


async def _press(harness: BotHarness, message: StoredMessage, label: str) -> StoredMessage:
    click = await harness.fake.click(harness.fake.member, message, message.button(label=label)["custom_id"])
    return await click.wait_original(lambda m: bool(m.attachments), timeout=60)

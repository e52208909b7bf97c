"""What members read: queue places counted from 1, durations, endings that say what was refunded,
and result and record embeds within Discord's limits."""

from __future__ import annotations

import time

from bot import render
from sdbot.types import ImageRow, JobKind, JobRow, JobStatus, PipelineKind


def job(**fields: object) -> JobRow:
    values: dict[str, object] = {
        "id": 12, "kind": JobKind.IMAGINE, "guild_id": 1, "channel_id": 2, "user_id": 3,
        "pipeline": PipelineKind.TEXT2IMG, "prompt": "a cat in a hat", "negative_prompt": "",
        "seeds": [5, 6], "steps": 4, "guidance": 0.0, "width": 512, "height": 512, "strength": None,
        "scheduler": None, "model_id": "stabilityai/sd-turbo", "model_revision": "abc", "source_job_id": None,
        "source_index": None, "source_path": None, "return_flagged": False, "status": JobStatus.DONE,
        "status_reason": None, "created_at": time.time(), "started_at": 10.0, "finished_at": 11.25,
        "application_id": None, "interaction_token": None, "response_message_id": None, "result_message_id": None,
    }
    return JobRow(**(values | fields))


def image(idx: int, *, flagged: bool = False, path: str | None = "x.png") -> ImageRow:
    return ImageRow(job_id=12, idx=idx, seed=5 + idx, width=512, height=512, path=path, format="png",
                    flagged=flagged, nsfw_score=None, record={"scheduler": "EulerDiscreteScheduler"})


def test_names_durations_and_places() -> None:
    assert render.describe(job()) == "Imagine #12 “a cat in a hat”"
    assert render.clip("abcdef", 4) == "abc…" and render.clip("abc", 4) == "abc"
    assert (render.duration(3.4), render.duration(125)) == ("3 s", "2 min 05 s")
    assert (render.place_in_line(0), render.place_in_line(2)) == ("next in line", "position 3 in the queue")
    assert "position 2 in the queue, ready in about 8 s" in render.queued_text(job(), 1, 8.0)


def test_progress_shows_a_bar_and_the_step() -> None:
    assert render.progress_text(job(), 2, 4).endswith("▰▰▰▰▰▱▱▱▱▱ step 2/4")


def test_endings_say_why_and_that_images_were_refunded() -> None:
    cancelled = render.ended_text(job(status=JobStatus.CANCELLED, status_reason="by its owner"))
    assert "was cancelled (by its owner)" in cancelled and "Your 2 images were refunded" in cancelled
    failed = render.ended_text(job(status=JobStatus.FAILED, status_reason="out of memory", seeds=[1]))
    assert "failed: out of memory" in failed and "Your 1 image was refunded" in failed
    assert "/reroll job:12" in failed
    assert "Nothing was charged" in render.not_queued_text("the bot's disk is full")


def test_result_embed_lists_seeds_time_and_withheld_images() -> None:
    embed = render.result_embed(job(), [image(0)], [image(1, flagged=True, path=None)])
    fields = {field.name: field.value for field in embed.fields}
    assert fields["Seeds"] == "1: `5`, 2: `6`"
    assert fields["Time"] == "1.2 s" and fields["Size"] == "512×512"
    assert "Image 2 was flagged by the safety checker" in fields["Withheld"]
    assert embed.footer.text == "Job #12 · /job id:12 shows how to reproduce it"


def test_long_prompts_are_clipped_to_discords_limits() -> None:
    embed = render.result_embed(job(prompt="x" * 5000, negative_prompt="y" * 2000), [image(0)], [])
    assert len(embed.description or "") == 4000 and len(embed.title or "") <= 256
    assert all(len(field.value or "") <= 1024 for field in embed.fields)


def test_record_embed_names_model_revision_and_how_to_reproduce() -> None:
    embed = render.record_embed(job(), [image(0), image(1, flagged=True)])
    fields = {field.name: field.value for field in embed.fields}
    assert fields["Model"] == "stabilityai/sd-turbo @ abc"
    assert "2: `6` (flagged)" in fields["Seeds"] and fields["Scheduler"] == "EulerDiscreteScheduler"
    assert embed.footer.text == "/reroll job:12 seed:5 reproduces image 1"


def test_record_embed_shows_the_chunks_of_a_long_prompt() -> None:
    fields = {field.name: field.value for field in render.record_embed(job(), [image(0)], [75, 12]).fields}
    assert fields["Parameters"].endswith("87 prompt tokens in 2 chunks (75 + 12)")
    short = {field.name: field.value for field in render.record_embed(job(), [image(0)], [9]).fields}
    assert short["Parameters"].endswith("· 9 prompt tokens")

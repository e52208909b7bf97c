"""The shared types: which jobs may share a GPU call, and a stored job's parameters."""

from __future__ import annotations

from sdbot.types import PipelineKind
from tests.bot.test_render import job
from tests.fakes.params import text2img


def test_prompts_and_seeds_may_differ_within_a_batch_but_not_the_shape() -> None:
    base = text2img("a cat", seeds=(1, 2))
    assert text2img("a dog", seeds=(9,)).batch_key == base.batch_key
    assert text2img(width=128).batch_key != base.batch_key
    assert text2img(steps=3).batch_key != base.batch_key
    assert text2img(pipeline=PipelineKind.IMG2IMG, strength=0.5).batch_key != base.batch_key


def test_a_stored_job_gives_back_its_parameters() -> None:
    params = job(seeds=[5, 6], width=640, height=384, return_flagged=True).params(source_image=b"png")
    assert (params.seeds, params.width, params.height, params.image_count) == ((5, 6), 640, 384, 2)
    assert params.source_image == b"png" and params.return_flagged

"""The NSFW checker: flagged pixels never leave the engine unless asked for, and its scores agree
with diffusers' own StableDiffusionSafetyChecker."""

from __future__ import annotations

import logging
from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image

from generation.engine.diffusion import DiffusionEngine
from generation.engine.pipelines import load_safety_checker
from generation.engine.tiny_models import TinyModelPaths
from sdbot.types import PipelineKind
from tests.fakes.params import ignore_steps, never, text2img


def test_flagged_images_are_withheld(flagging_engine: DiffusionEngine) -> None:
    (output,) = flagging_engine.run_batch([text2img(seeds=(1, 2))], ignore_steps, never)
    for image in output.images:
        assert image.flagged
        assert image.data is None
        assert image.nsfw_score is not None and image.nsfw_score > 0
        assert image.record.seed == image.seed  # the record still says how it was made


def test_return_flagged_gives_the_pixels_back(flagging_engine: DiffusionEngine) -> None:
    (output,) = flagging_engine.run_batch([text2img(return_flagged=True)], ignore_steps, never)
    (image,) = output.images
    assert image.flagged
    assert Image.open(BytesIO(image.data or b"")).size == (64, 64)


def test_variations_and_upscales_are_checked_too(flagging_engine: DiffusionEngine) -> None:
    source = flagging_engine.run_batch([text2img(return_flagged=True)], ignore_steps, never)[0].images[0].data
    for kind, strength in ((PipelineKind.IMG2IMG, 0.5), (PipelineKind.UPSCALE, None)):
        params = text2img(pipeline=kind, strength=strength, source_image=source)
        (image,) = flagging_engine.run_batch([params], ignore_steps, never)[0].images
        assert image.flagged and image.data is None


def test_clean_images_pass_with_a_negative_score(tiny_engine: DiffusionEngine) -> None:
    (image,) = tiny_engine.run_batch([text2img()], ignore_steps, never)[0].images
    assert not image.flagged
    assert image.nsfw_score is not None and image.nsfw_score < 0
    assert image.record.extra["safety_checker"] == "on"


def test_checker_off_is_explicit(tiny_models: TinyModelPaths, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="generation.engine"):
        engine = DiffusionEngine.load(tiny_models.engine_config(safety_checker=False))
    assert "SDBOT_SAFETY_CHECKER is off" in caplog.text

    (image,) = engine.run_batch([text2img()], ignore_steps, never)[0].images
    assert (image.flagged, image.nsfw_score) == (False, None)
    assert image.record.extra["safety_checker"] == "off"
    assert image.data is not None


def test_scores_agree_with_the_original_forward(tiny_models: TinyModelPaths) -> None:
    checker = load_safety_checker(tiny_models.settings(), torch.device("cpu"), torch.float32)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(6)]
    scores = [verdict.score for verdict in checker.check(images)]
    # Move the thresholds to the median score so some images are flagged and some are not.
    with torch.no_grad():
        checker.model.concept_embeds_weights += float(np.median(scores))

    verdicts = checker.check(images)
    clip_input = checker.processor(images=images, return_tensors="pt").pixel_values
    _, original = checker.model(clip_input=clip_input, images=np.zeros((6, 64, 64, 3)))
    assert [verdict.flagged for verdict in verdicts] == original
    assert 0 < sum(original) < 6

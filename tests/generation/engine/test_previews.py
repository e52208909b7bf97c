"""Live previews in the engine: decoded with the tiny TAESD in the step callback, one grid per job,
safety-checked, never changing the final pixels, and off (with a log line) when no decoder loads."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.engine.diffusion import DiffusionEngine
from generation.engine.previews import PREVIEW_SIDE
from generation.engine.tiny_models import TinyModelPaths, make_safety_checker
from sdbot.types import GenerationParams, JobOutput, PipelineKind

STEPS = 4


def params(seeds: Sequence[int], prompt: str = "a lighthouse at dusk") -> GenerationParams:
    return GenerationParams(
        pipeline=PipelineKind.TEXT2IMG, prompt=prompt, seeds=tuple(seeds), steps=STEPS, guidance=0.0, width=64, height=64
    )


Steps = list[tuple[int, int, Sequence[bytes | None] | None]]


def run(engine: DiffusionEngine, batch: list[GenerationParams]) -> tuple[list[JobOutput], Steps]:
    """Each step with the previews it brought (None: none)."""
    steps: Steps = []

    def on_preview(step: int, total: int, previews: Sequence[bytes | None]) -> None:
        assert steps[-1] == (step, total, None)  # told after the step's progress
        steps[-1] = (step, total, previews)

    outputs = engine.run_batch(batch, lambda step, total: steps.append((step, total, None)), lambda: False, on_preview)
    return outputs, steps


def pixels(output: JobOutput) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(image.data or b""))) for image in output.images]


@pytest.fixture(scope="module")
def every_step_engine(tiny_models: TinyModelPaths) -> DiffusionEngine:
    """Previews due at every step (an interval shorter than any step)."""
    return DiffusionEngine.load(tiny_models.engine_config(preview_interval_s=1e-9))


def test_previews_are_a_grid_per_job_and_leave_the_final_pixels_unchanged(
    tiny_models: TinyModelPaths, every_step_engine: DiffusionEngine
) -> None:
    batch = [params([1, 2, 3, 4]), params([5], prompt="a red fox")]
    with_previews, steps = run(every_step_engine, batch)
    without = DiffusionEngine.load(tiny_models.engine_config(previews=False))
    assert not without.previews
    plain, plain_steps = run(without, batch)

    assert [step for step, _, previews in steps if previews] == list(range(1, STEPS))  # not the last step
    assert all(previews is None for *_, previews in plain_steps)
    for _, _, previews in steps[:-1]:
        assert previews is not None
        four, one = (Image.open(io.BytesIO(data or b"")) for data in previews)
        assert four.format == one.format == "JPEG"
        assert four.size == (128, 128) and one.size == (64, 64)  # 2x2 grid of 64 px images; one alone
        assert max(four.size) <= PREVIEW_SIDE
    for previewed, unpreviewed in zip(with_previews, plain, strict=True):
        for a, b in zip(pixels(previewed), pixels(unpreviewed), strict=True):
            assert np.array_equal(a, b)


def test_a_preview_shows_what_the_latents_hold(every_step_engine: DiffusionEngine) -> None:
    _, steps = run(every_step_engine, [params([7])])
    first, last = (np.asarray(Image.open(io.BytesIO(previews[0] or b"")), dtype=float)
                   for _, _, previews in (steps[0], steps[-2]))
    assert first.std() > 1 and last.std() > 1  # decoded pictures, not blank frames
    assert np.abs(first - last).mean() > 0.5  # they follow the denoising


def test_flagged_previews_are_never_handed_out(tiny_models: TinyModelPaths, tmp_path: Path) -> None:
    checker = make_safety_checker(tmp_path / "flagging", flag_everything=True)
    engine = DiffusionEngine.load(
        tiny_models.engine_config(safety_model_id=str(checker), preview_interval_s=1e-9)
    )
    _, steps = run(engine, [params([1, 2])])
    made = [previews for *_, previews in steps if previews is not None]
    assert made and all(list(previews) == [None] for previews in made)


@pytest.mark.parametrize(
    ("decoder", "logged"),
    [("none", None), ("auto", "madebyollin/taesd"), ("{missing}", "there is no such folder")],
)
def test_without_a_decoder_previews_are_off_and_generation_goes_on(
    tiny_models: TinyModelPaths, tmp_path: Path, caplog: pytest.LogCaptureFixture, decoder: str, logged: str | None
) -> None:
    # "auto" picks TAESD for this SD pipeline; offline and not cached, it cannot load.
    config = tiny_models.engine_config(
        preview_decoder_id=decoder.format(missing=tmp_path / "no-taesd"), preview_interval_s=1e-9
    )
    with caplog.at_level(logging.WARNING):
        engine = DiffusionEngine.load(config)
    assert not engine.previews
    outputs, steps = run(engine, [params([1])])
    assert outputs[0].images[0].data and all(previews is None for *_, previews in steps)
    warnings = [record.getMessage() for record in caplog.records if "live previews are off" in record.getMessage()]
    assert (warnings == []) if logged is None else (len(warnings) == 1 and logged in warnings[0])


def test_each_catalogue_model_gets_its_own_preview_decoder(
    tiny_models: TinyModelPaths, caplog: pytest.LogCaptureFixture
) -> None:
    """taesd for SD, taesdxl for SDXL...: a model's previews come from a decoder chosen for it."""
    with caplog.at_level(logging.INFO, logger="generation.engine.pipelines"):
        engine = DiffusionEngine.load(
            tiny_models.engine_config(models_file=tiny_models.models_file, preview_interval_s=1e-9)
        )
        _, steps = run(engine, [params([1]).model_copy(update={"model": "tiny-xl"})])
    loads = [record for record in caplog.records if record.getMessage().startswith("live previews decoded with")]
    assert len(loads) == 2  # the default model's at start, tiny-xl's when it loads
    assert any(previews for _, _, previews in steps)

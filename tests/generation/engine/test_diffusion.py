"""Text-to-image through the real engine on the tiny model: outputs, seeds, progress, cancelling
and warnings."""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generation.engine.diffusion import DiffusionEngine
from generation.engine.pipelines import to_download
from generation.engine.png_metadata import read_record
from generation.engine.tiny_models import TinyModelPaths
from generation.errors import Cancelled, InvalidRequest, ModelLoadError, OutOfMemory
from sdbot.types import GeneratedImage, PipelineKind
from tests.fakes.params import ignore_steps, never, text2img


def pixels(image: GeneratedImage) -> np.ndarray:
    assert image.data is not None
    return np.asarray(Image.open(BytesIO(image.data)).convert("RGB"), dtype=np.int16)


def test_imagine_returns_one_png_per_seed_with_its_record(tiny_engine: DiffusionEngine) -> None:
    (output,) = tiny_engine.run_batch([text2img("a red fox", seeds=(11, 12))], ignore_steps, never)

    assert [image.seed for image in output.images] == [11, 12]
    assert [image.index for image in output.images] == [0, 1]
    assert output.warnings == []
    assert output.elapsed_s > 0
    for image in output.images:
        assert image.format == "png" and (image.width, image.height) == (64, 64)
        assert Image.open(BytesIO(image.data or b"")).size == (64, 64)
        assert not image.flagged and image.nsfw_score is not None
        record = image.record
        assert (record.prompt, record.seed, record.steps, record.width) == ("a red fox", image.seed, 2, 64)
        assert record.pipeline is PipelineKind.TEXT2IMG
        assert record.scheduler == "EulerDiscreteScheduler"  # the class in the JSON record
        assert "Sampler: Euler," in Image.open(BytesIO(image.data or b"")).text["parameters"]  # A1111's name
        assert record.model_revision == tiny_engine.model_revision and len(record.model_revision) == 16
        assert (record.dtype, record.device) == ("float32", "cpu")
        assert set(record.versions) == {"torch", "diffusers", "transformers"}
        assert read_record(image.data or b"") == record


def test_engine_reports_model_facts(tiny_engine: DiffusionEngine, tiny_models: TinyModelPaths) -> None:
    assert tiny_engine.native_size == 64
    assert tiny_engine.model_id == str(tiny_models.pipeline)
    assert (tiny_engine.device, tiny_engine.dtype) == ("cpu", "float32")


def test_same_seed_gives_identical_pixels_and_other_seeds_differ(tiny_engine: DiffusionEngine) -> None:
    first = tiny_engine.run_batch([text2img(seeds=(7, 8))], ignore_steps, never)[0].images
    again = tiny_engine.run_batch([text2img(seeds=(7, 8))], ignore_steps, never)[0].images

    assert np.array_equal(pixels(first[0]), pixels(again[0]))
    assert np.array_equal(pixels(first[1]), pixels(again[1]))
    assert np.abs(pixels(first[0]) - pixels(first[1])).mean() > 5  # clearly different pictures


def test_an_image_in_a_batch_matches_its_seed_run_alone(tiny_engine: DiffusionEngine) -> None:
    # The documented tolerance: batched float rounding moves pixels by at most 2 levels of 255
    # (measured: 0-1), whatever the other prompts and seeds in the batch are.
    cat = text2img("a cat", seeds=(21, 22, 23), guidance=5.0, negative_prompt="blurry")
    dog = text2img("a dog on a hill", seeds=(24,), guidance=5.0)
    batched = tiny_engine.run_batch([cat, dog], ignore_steps, never)
    together = batched[0].images + batched[1].images

    alone = [
        tiny_engine.run_batch([params.model_copy(update={"seeds": (seed,)})], ignore_steps, never)[0].images[0]
        for params in (cat, dog)
        for seed in params.seeds
    ]
    worst = max(int(np.abs(pixels(a) - pixels(b)).max()) for a, b in zip(together, alone, strict=True))
    assert worst <= 2


def test_on_step_reports_each_step_with_the_total(tiny_engine: DiffusionEngine) -> None:
    steps: list[tuple[int, int]] = []
    tiny_engine.run_batch([text2img(steps=3)], lambda step, total: steps.append((step, total)), never)
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_should_stop_cancels_between_steps(tiny_engine: DiffusionEngine) -> None:
    steps: list[int] = []
    with pytest.raises(Cancelled):
        tiny_engine.run_batch([text2img(steps=4)], lambda step, total: steps.append(step), lambda: bool(steps))
    assert steps == [1]  # stopped after the first step, not at the end

    with pytest.raises(Cancelled):
        tiny_engine.run_batch([text2img()], ignore_steps, lambda: True)


def _image(engine: DiffusionEngine, prompt: str, **fields: object) -> GeneratedImage:
    (output,) = engine.run_batch([text2img(prompt, seeds=(3,), **fields)], ignore_steps, never)
    return output.images[0]


def test_weight_one_is_the_plain_prompt_and_other_weights_change_the_image(tiny_engine: DiffusionEngine) -> None:
    plain = pixels(_image(tiny_engine, "a red bird"))
    assert np.array_equal(pixels(_image(tiny_engine, "a (red:1.0) bird")), plain)
    assert np.abs(pixels(_image(tiny_engine, "a (red:1.6) bird")) - plain).max() > 0
    assert np.abs(pixels(_image(tiny_engine, "a [red] bird")) - plain).max() > 0


def test_words_past_the_77th_token_change_the_image_without_a_warning(tiny_engine: DiffusionEngine) -> None:
    head = "a very detailed painting of a castle " * 3  # the tiny tokenizer: one token per letter
    assert len(head) > 77
    short, long = _image(tiny_engine, head.strip()), _image(tiny_engine, head + "at night under the moon")
    assert np.abs(pixels(long) - pixels(short)).max() > 0
    (output,) = tiny_engine.run_batch([text2img(head + "at night")], ignore_steps, never)
    assert output.warnings == []


def test_too_many_tokens_or_refused_syntax_is_an_invalid_request(tiny_engine: DiffusionEngine) -> None:
    with pytest.raises(InvalidRequest, match=r"the prompt is \d+ tokens long; the limit is 450"):
        tiny_engine.run_batch([text2img("castle " * 80)], ignore_steps, never)
    with pytest.raises(InvalidRequest, match="prompt editing"):
        tiny_engine.run_batch([text2img("a [cat:dog:0.5]")], ignore_steps, never)
    count = tiny_engine.token_counter()
    assert count("a (red:1.5) bird") == count("a red bird") == len("aredbird")


def test_tile_makes_opposite_edges_continue_and_is_recorded(tiny_engine: DiffusionEngine) -> None:
    plain = _image(tiny_engine, "stone wall texture")
    tiled = _image(tiny_engine, "stone wall texture", tile=True)

    def seam(image: GeneratedImage) -> float:
        """How much the wrap-around edges differ, against neighbouring columns and rows inside."""
        p = pixels(image)
        across = np.abs(p[:, 0] - p[:, -1]).mean() + np.abs(p[0] - p[-1]).mean()
        inside = np.abs(p[:, 1] - p[:, 0]).mean() + np.abs(p[1] - p[0]).mean()
        return float(across / inside)

    assert seam(tiled) < seam(plain)
    assert tiled.record.extra["tile"] is True and "tile" not in plain.record.extra
    assert "Tiling: True" in (Image.open(BytesIO(tiled.data or b"")).text["parameters"])
    # Tiling is switched off again: the next plain job is unchanged.
    assert np.array_equal(pixels(_image(tiny_engine, "stone wall texture")), pixels(plain))


def test_negative_prompt_without_guidance_gets_a_warning(tiny_engine: DiffusionEngine) -> None:
    (output,) = tiny_engine.run_batch([text2img(negative_prompt="blurry", guidance=0.0)], ignore_steps, never)
    assert output.warnings == ["the negative prompt has no effect at a guidance (CFG scale) of 1 or less"]
    assert output.images[0].record.negative_prompt == "blurry"


@pytest.mark.parametrize(("guidance", "doubled"), [(0.0, False), (1.0, False), (5.0, True)])
def test_classifier_free_guidance_doubles_the_batch_only_above_guidance_one(
    tiny_engine: DiffusionEngine, guidance: float, doubled: bool
) -> None:
    """Turbo and schnell models run at guidance 0: the UNet must see each image once, not twice."""
    unet = tiny_engine.text2img_pipeline.unet
    batch_sizes: list[int] = []
    hook = unet.register_forward_pre_hook(lambda _module, args: batch_sizes.append(args[0].shape[0]))
    try:
        tiny_engine.run_batch(
            [text2img(seeds=(1, 2), guidance=guidance), text2img("a fox", seeds=(3,), guidance=guidance)],
            ignore_steps, never,
        )
    finally:
        hook.remove()
    assert batch_sizes == [6 if doubled else 3] * 2  # 3 images, 2 steps


def test_jobs_of_different_shapes_cannot_share_a_batch(tiny_engine: DiffusionEngine) -> None:
    with pytest.raises(InvalidRequest, match="must share"):
        tiny_engine.run_batch([text2img(), text2img(width=128)], ignore_steps, never)


def test_device_out_of_memory_becomes_out_of_memory(
    tiny_engine: DiffusionEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(*args: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tiny_engine, "_diffuse", exhausted)
    with pytest.raises(OutOfMemory, match="ran out of memory for 3 image"):
        tiny_engine.run_batch([text2img(seeds=(1, 2, 3))], ignore_steps, never)


def test_a_missing_upscaler_folder_is_refused_at_start(tiny_models: TinyModelPaths, tmp_path: Path) -> None:
    config = tiny_models.engine_config(upscaler_model_id=str(tmp_path / "no-upscaler"))
    with pytest.raises(ModelLoadError, match=r"SDBOT_UPSCALER_MODEL_ID=.*no-upscaler.*no such folder"):
        DiffusionEngine.load(config)


def test_the_start_log_names_the_device_and_downloads_only_what_is_missing(
    tiny_models: TinyModelPaths, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="generation.engine.diffusion"):
        DiffusionEngine.load(tiny_models.engine_config(device="auto"))
    [start] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loading")]
    assert start == f"loading {tiny_models.pipeline} on cpu"  # local folders: nothing to download
    hub = tiny_models.engine_config(model_id="someone/not-in-the-cache", safety_checker=False)
    assert to_download(hub) == ["someone/not-in-the-cache"]

"""The engine's caption jobs on the tiny Florence-2 (loaded through the production code): four
distinct suggestions within the encoder window, reproducible from the seed, progress, stopping."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from generation import requests
from generation.engine.describe import Captioner
from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths
from generation.errors import Cancelled, InvalidRequest, OutOfMemory
from generation.requests import RequestLimits
from sdbot.types import GenerationParams


def caption_job(tiny_models: TinyModelPaths, *, more: bool = False, seed: int = 5) -> GenerationParams:
    frames = [Image.new("RGB", (96, 64), colour) for colour in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])  # animated: the first frame is read
    limits = RequestLimits.from_settings(tiny_models.settings())
    params = requests.describe(limits, 64, 96, 64, more=more)
    return params.model_copy(update={"seeds": (seed,), "source_image": buffer.getvalue()})


def test_four_distinct_suggestions_within_the_window_reproducible_from_the_seed(
    tiny_engine: DiffusionEngine, tiny_models: TinyModelPaths
) -> None:
    steps: list[tuple[int, int]] = []
    (first,) = tiny_engine.run_batch([caption_job(tiny_models)], lambda *step: steps.append(step), lambda: False)
    assert first.images == [] and len(first.captions) == 4 and len(set(first.captions)) == 4
    tokenizer = tiny_engine.text2img_pipeline.tokenizer
    assert all(len(tokenizer(text, add_special_tokens=False).input_ids) <= 75 for text in first.captions)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    (again,) = tiny_engine.run_batch([caption_job(tiny_models)], lambda *_: None, lambda: False)
    assert again.captions == first.captions
    (other,) = tiny_engine.run_batch([caption_job(tiny_models, more=True, seed=6)], lambda *_: None, lambda: False)
    assert other.captions != first.captions


def test_a_stop_request_ends_the_job_between_captions(tiny_engine: DiffusionEngine, tiny_models: TinyModelPaths) -> None:
    with pytest.raises(Cancelled):
        tiny_engine.run_batch([caption_job(tiny_models)], lambda *_: None, lambda: True)


def test_describe_off_is_refused(tiny_models: TinyModelPaths) -> None:
    engine = DiffusionEngine(tiny_models.engine_config(describe_model_id="none"))
    with pytest.raises(InvalidRequest, match="turned off"):
        engine.run_batch([caption_job(tiny_models)], lambda *_: None, lambda: False)


def test_running_out_of_memory_while_describing_is_named(
    tiny_engine: DiffusionEngine, tiny_models: TinyModelPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(Captioner, "suggestions", exhausted)
    with pytest.raises(OutOfMemory, match="ran out of memory describing a picture"):
        tiny_engine.run_batch([caption_job(tiny_models)], lambda *_: None, lambda: False)

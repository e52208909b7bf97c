"""Loading models: every failure is one line naming the setting to fix; local folders get a
content fingerprint as their revision."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from generation.engine.diffusion import DiffusionEngine
from generation.engine.pipelines import folder_fingerprint, load_text2img
from generation.engine.tiny_models import TinyModelPaths
from generation.errors import ModelLoadError


def test_missing_model_folder_is_a_clear_load_error(tiny_models: TinyModelPaths, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as caught:
        DiffusionEngine.load(tiny_models.engine_config(model_id=str(missing)))
    assert str(caught.value) == f"could not load SDBOT_MODEL_ID={str(missing)!r}: there is no such folder"


def test_folder_without_a_pipeline_is_a_clear_load_error(tiny_models: TinyModelPaths) -> None:
    with pytest.raises(ModelLoadError, match=r"SDBOT_MODEL_ID=.*files are missing.*model_index\.json"):
        DiffusionEngine.load(tiny_models.engine_config(model_id=str(tiny_models.safety_checker)))


def test_uncached_hub_id_offline_is_a_clear_load_error(tiny_models: TinyModelPaths) -> None:
    with pytest.raises(ModelLoadError) as caught:
        DiffusionEngine.load(tiny_models.engine_config(model_id="sdbot-tests/not-a-real-model"))
    assert "SDBOT_MODEL_ID='sdbot-tests/not-a-real-model'" in str(caught.value)
    assert "HF_HUB_OFFLINE is set" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_folder_fingerprint_follows_the_weights_not_the_caches(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    weights = tmp_path / "unet" / "model.safetensors"
    weights.write_bytes(b"weights-1")
    first = folder_fingerprint(tmp_path)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.json").write_text("{}")
    (tmp_path / "notes.md").write_text("not a model file")
    assert folder_fingerprint(tmp_path) == first and len(first) == 16
    weights.write_bytes(b"weights-2")
    assert folder_fingerprint(tmp_path) != first


def test_models_load_without_warnings_about_a_safety_checker_they_do_not_have(
    tiny_models: TinyModelPaths, caplog: pytest.LogCaptureFixture
) -> None:
    config = tiny_models.engine_config()
    diffusers_log = logging.getLogger("diffusers")  # it does not propagate to the root logger
    diffusers_log.addHandler(caplog.handler)
    try:
        for folder in (tiny_models.pipeline, tiny_models.sdxl, tiny_models.flux):
            loaded = load_text2img(config, torch.device("cpu"), torch.float32, str(folder))
            # diffusers' own checker stays out where the pipeline has one (ours runs batched).
            assert getattr(loaded.pipe, "safety_checker", None) is None
    finally:
        diffusers_log.removeHandler(caplog.handler)
    assert [record.getMessage() for record in caplog.records if "are not expected" in record.getMessage()] == []

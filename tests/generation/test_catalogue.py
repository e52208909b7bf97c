"""The models file: what it reads, how a bad one is refused, and how requests pick models and LoRAs."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation import requests
from generation.catalogue import (
    Catalogue,
    CatalogueError,
    catalogue_for,
    load_catalogue,
)
from generation.engine.tiny_models import TinyModelPaths
from generation.errors import InvalidRequest
from generation.requests import RequestLimits
from sdbot.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_file_parses_with_sdxl_turbo_flux_and_sd35() -> None:
    catalogue = load_catalogue(ROOT / "models.example.toml")
    assert catalogue.default == "sd-turbo"
    assert catalogue.entry("sdxl-turbo").family == "sdxl"
    assert catalogue.entry("flux-schnell").model_id == "black-forest-labs/FLUX.1-schnell"
    assert catalogue.entry("sd35-medium").size_step == 16 and catalogue.entry("sd35-medium").max_size == 1440
    assert catalogue.loras["pixel-art"].family == "sdxl"


def test_the_tiny_catalogue_detects_families_from_the_folders(tiny_models: TinyModelPaths) -> None:
    catalogue = load_catalogue(tiny_models.models_file)
    names = ("tiny", "tiny-xl", "tiny-flux", "tiny-sd3")
    assert [catalogue.entry(name).family for name in names] == ["sd", "sdxl", "flux", "sd3"]
    assert catalogue.entry("tiny-sd3").size_step == 16
    assert catalogue.entry(None).name == "tiny"


def test_models_toml_in_the_working_folder_is_read_and_none_means_the_single_model(tmp_path: Path) -> None:
    single = catalogue_for(Settings(model_id="some/model"))
    assert not single.named and single.entry(None).model_id == "some/model"
    (tmp_path / "models.toml").write_text('[models.a]\nmodel_id = "x/y"\nfamily = "sd"\n')
    assert catalogue_for(Settings()).entry(None).name == "a"  # the tests run in tmp_path


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[models.a]\nmodel_id = "x/y"\nsteps = \n', 3, "not valid TOML"),
        ('default = "a"\n\n[models.a]\nmodel_id = "x/y"\nfamily = "sd"\n\n[models.b]\nmodel_id = "z"\nfamily = "sdxxl"\n', 7, "family"),
        ('[models.a]\nmodel_id = "x/y"\nstep = 4\n', 1, "step"),
        ('default = "nope"\n[models.a]\nmodel_id = "x/y"\n', 1, "not one of the models"),
        ('[models.a]\nmodel_id = "x/y"\n\n[loras.ink]\nsource = "missing.safetensors"\nfamily = "sd"\n', 4, "no file"),
        ('[models."a b"]\nmodel_id = "x/y"\n', 1, "names are letters"),
    ],
)
def test_a_bad_models_file_is_refused_naming_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(CatalogueError) as raised:
        load_catalogue(path)
    message = str(raised.value)
    assert str(path) in message and f"line {line}" in message and words in message


def _catalogue(tiny_models: TinyModelPaths) -> Catalogue:
    return load_catalogue(tiny_models.models_file)


def test_models_and_loras_are_picked_by_name_with_weights(tiny_models: TinyModelPaths) -> None:
    catalogue = _catalogue(tiny_models)
    assert requests.pick_model(catalogue, "TINY-XL").name == "tiny-xl"
    assert requests.pick_model(catalogue, None, server_default="tiny-xl").name == "tiny-xl"
    assert requests.pick_model(catalogue, "").name == "tiny"
    tiny = catalogue.entry("tiny")
    assert requests.pick_loras(catalogue, tiny, "tiny-ink:0.5") == (("tiny-ink", 0.5),)
    assert requests.pick_loras(catalogue, tiny, " tiny-ink ") == (("tiny-ink", 1.0),)  # its default weight


@pytest.mark.parametrize(
    ("model", "loras", "message"),
    [
        ("nope", None, "there is no model called “nope”"),
        ("tiny", "nope", "there is no LoRA called “nope”"),
        ("tiny-xl", "tiny-ink", "LoRA tiny-ink is made for SD models; tiny-xl is an SDXL model"),
        ("tiny-flux", "tiny-ink", "LoRA tiny-ink is made for SD models; tiny-flux is a FLUX model"),
        ("tiny", "tiny-flux-ink", "LoRA tiny-flux-ink is made for FLUX models; tiny is an SD model"),
        ("tiny", "tiny-ink:heavy", "the weight after `:` must be a number"),
        ("tiny", "tiny-ink:5", "must be between -2 and 2"),
        ("tiny", "a, b, c, d", "at most 3 LoRAs"),
        ("tiny", "tiny-ink, TINY-INK:0.3", "named twice"),
    ],
)
def test_bad_model_and_lora_choices_are_refused(tiny_models: TinyModelPaths, model: str, loras: str | None,
                                                message: str) -> None:
    catalogue = _catalogue(tiny_models)
    with pytest.raises(InvalidRequest, match=message):
        requests.pick_loras(catalogue, requests.pick_model(catalogue, model), loras)


def test_a_size_the_model_cannot_do_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[models.small]\nmodel_id = "x/y"\nfamily = "flux"\nmax_size = 512\nmax_steps = 8\n')
    limits = RequestLimits().for_model(load_catalogue(path).entry("small"))
    (job,) = requests.imagine(limits, prompt="a cat", native_size=512, size=(768, 512)).jobs
    assert job.model == "small"
    with pytest.raises(InvalidRequest, match="between 64 and 512 pixels for model small"):
        requests.validate(job, limits)
    with pytest.raises(InvalidRequest, match="multiples of 16 for model small"):
        requests.validate(job.model_copy(update={"width": 504, "height": 504}), limits)
    with pytest.raises(InvalidRequest, match="steps must be between 1 and 8"):
        requests.validate(job.model_copy(update={"width": 512, "steps": 9}), limits)

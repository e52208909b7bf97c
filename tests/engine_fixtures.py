"""Session fixtures for engine tests: tiny random-weight models built once, loaded through the
production code (`DiffusionEngine.load`), on the CPU and never touching the network."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub, which reads these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest  # noqa: E402

from generation.engine import DiffusionEngine  # noqa: E402
from generation.test_models import TestModelPaths, make_safety_checker, make_test_model  # noqa: E402
from generation.types import GenerationParams, PipelineKind  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TestModelPaths:
    return make_test_model(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_models: TestModelPaths) -> DiffusionEngine:
    return DiffusionEngine.load(tiny_models.settings())


@pytest.fixture(scope="session")
def flagging_engine(tiny_models: TestModelPaths, tmp_path_factory: pytest.TempPathFactory) -> DiffusionEngine:
    """The tiny model with a real StableDiffusionSafetyChecker whose thresholds flag every image."""
    checker = make_safety_checker(tmp_path_factory.mktemp("flagging") / "safety-checker", flag_everything=True)
    return DiffusionEngine.load(tiny_models.settings(safety_model_id=str(checker)))


def text2img(prompt: str = "a lighthouse at dusk", seeds: tuple[int, ...] = (1,), **fields: object) -> GenerationParams:
    """Small, fast text-to-image params; any field can be overridden."""
    values: dict[str, object] = {
        "pipeline": PipelineKind.TEXT2IMG,
        "prompt": prompt,
        "seeds": seeds,
        "steps": 2,
        "guidance": 0.0,
        "width": 64,
        "height": 64,
    }
    return GenerationParams(**(values | fields))


def never() -> bool:
    return False


def ignore_steps(step: int, total: int) -> None:
    pass

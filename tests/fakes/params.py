"""Small, fast engine parameters and no-op callbacks for engine and worker tests."""

from __future__ import annotations

from sdbot.types import GenerationParams, PipelineKind


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

"""The engine sees only its own settings, never the token or the queue limits."""

from __future__ import annotations

from generation.engine.config import EngineConfig
from sdbot.settings import Settings


def test_the_engine_config_takes_only_model_and_device_settings() -> None:
    settings = Settings(discord_token="secret", model_id="org/model", device="cpu", max_batch=9)
    config = EngineConfig.from_settings(settings)
    assert (config.model_id, config.device, config.safety_checker) == ("org/model", "cpu", True)
    assert "secret" not in repr(config) and not hasattr(config, "max_batch")


def test_upscaler_none_means_a_plain_resize() -> None:
    base = EngineConfig.from_settings(Settings())
    assert not base.plain_upscale
    assert base.model_copy(update={"upscaler_model_id": " None "}).plain_upscale

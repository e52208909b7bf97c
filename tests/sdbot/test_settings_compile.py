"""SDBOT_COMPILE and its old name SDBOT_TORCH_COMPILE."""

from __future__ import annotations

import pytest

from generation.engine.config import EngineConfig
from sdbot.settings import SettingsError, load_settings


def test_compile_and_fast_path_default_to_auto() -> None:
    settings = load_settings()
    assert (settings.compile, settings.fast_path) == ("auto", "auto")
    config = EngineConfig.from_settings(settings)
    assert (config.compile, config.fast_path, config.compile_backend) == ("auto", "auto", "inductor")


@pytest.mark.parametrize(("old", "new"), [("true", "on"), ("false", "off")])
def test_the_old_name_still_works(monkeypatch: pytest.MonkeyPatch, old: str, new: str) -> None:
    monkeypatch.setenv("SDBOT_TORCH_COMPILE", old)
    assert load_settings().compile == new


def test_the_new_name_wins_over_the_old(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDBOT_TORCH_COMPILE", "true")
    monkeypatch.setenv("SDBOT_COMPILE", "off")
    assert load_settings().compile == "off"


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDBOT_COMPILE", "yes please")
    with pytest.raises(SettingsError, match="SDBOT_COMPILE"):
        load_settings()

from pathlib import Path

import pytest

from sdbot.settings import Settings, SettingsError, load_settings


def test_defaults_need_no_configuration() -> None:
    settings = load_settings()
    assert settings.model_id == "stabilityai/sd-turbo"
    assert settings.device == "auto"
    assert settings.database_path == Path("data/sdbot.sqlite3")
    assert settings.max_queued_per_user == 4
    assert settings.discord_token is None


def test_environment_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDBOT_DEV_GUILD_IDS", "123, 456")
    monkeypatch.setenv("SDBOT_BLOCKED_WORDS", "gore,bad phrase")
    monkeypatch.setenv("SDBOT_MAX_BATCH", "8")
    settings = load_settings()
    assert settings.dev_guild_ids == [123, 456]
    assert settings.blocked_words == ["gore", "bad phrase"]
    assert settings.max_batch == 8


@pytest.mark.parametrize("written", ["1,2", "[1, 2]", " [1,2] "])
def test_lists_are_comma_separated_or_json(monkeypatch: pytest.MonkeyPatch, written: str) -> None:
    monkeypatch.setenv("SDBOT_DEV_GUILD_IDS", written)
    monkeypatch.setenv("SDBOT_BLOCKED_WORDS", '["gore", "bad, phrase"]')
    settings = load_settings()
    assert settings.dev_guild_ids == [1, 2]
    assert settings.blocked_words == ["gore", "bad, phrase"]


@pytest.mark.parametrize("written", ["[1,x]", "1,x,y", "[1, 2"])
def test_a_bad_list_is_one_line_naming_the_setting_and_the_forms(monkeypatch: pytest.MonkeyPatch, written: str) -> None:
    monkeypatch.setenv("SDBOT_DEV_GUILD_IDS", written)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert message.count("SDBOT_DEV_GUILD_IDS") == 1
    assert "comma-separated list (1,2) or a JSON list ([1, 2])" in message


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SDBOT_DISCORD_TOKEN=abc.def\nSDBOT_DEVICE=cpu\n")
    settings = load_settings()
    assert settings.discord_token is not None
    assert settings.discord_token.get_secret_value() == "abc.def"
    assert settings.device == "cpu"


def test_token_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDBOT_DISCORD_TOKEN", "super-secret-token")
    settings = load_settings()
    assert "super-secret-token" not in repr(settings)
    assert "super-secret-token" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("name", "value"),
    [("SDBOT_MAX_STEPS", "lots"), ("SDBOT_DEVICE", "tpu"), ("SDBOT_MAX_COUNT", "9"),
     ("SDBOT_DEV_GUILD_IDS", "12,abc")],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_every_setting_is_documented_in_env_example() -> None:
    example = (Path(__file__).parents[2] / ".env.example").read_text()
    for field in Settings.model_fields:
        assert f"SDBOT_{field.upper()}=" in example, f"SDBOT_{field.upper()} missing from .env.example"


def test_env_example_copied_as_dotenv_gives_the_defaults(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / ".env.example"
    (tmp_path / ".env").write_text(example.read_text())
    assert load_settings() == Settings()

"""The `sdbot` command as an operator runs it (in a subprocess, with a clean environment)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from bot.cli import _imagine_batches, imagine_to_files
from generation.engine.diffusion import DiffusionEngine
from generation.engine.png_metadata import parse_parameters
from generation.engine.tiny_models import TinyModelPaths
from generation.requests import RequestLimits
from sdbot.migrate import bundled_migrations_dir


def sdbot(*args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SDBOT_")}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=120,
        env=clean | {"HF_HUB_OFFLINE": "1"} | (env or {}), cwd=cwd,
    )


def test_help_lists_the_subcommands(tmp_path: Path) -> None:
    result = sdbot("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("run", "migrate", "imagine", "make-test-model"):
        assert command in result.stdout


def test_run_without_a_token_is_one_clear_line(tmp_path: Path) -> None:
    result = sdbot("run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "SDBOT_DISCORD_TOKEN is not set" in result.stderr


def test_invalid_setting_names_the_variable_and_hides_the_token(tmp_path: Path) -> None:
    result = sdbot("run", env={"SDBOT_MAX_BATCH": "zero", "SDBOT_DISCORD_TOKEN": "s3cret.token"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "SDBOT_MAX_BATCH" in result.stderr and "Traceback" not in result.stderr
    assert "s3cret.token" not in result.stderr + result.stdout


def test_migrate_creates_the_database_and_is_idempotent(tmp_path: Path) -> None:
    first = sdbot("migrate", cwd=tmp_path)
    second = sdbot("migrate", cwd=tmp_path)
    assert first.returncode == second.returncode == 0
    latest = f"schema version {len(list(bundled_migrations_dir().glob('*.sql')))}"
    assert latest in first.stdout and latest in second.stdout
    assert (tmp_path / "data" / "sdbot.sqlite3").exists()


def test_run_with_a_missing_model_folder_names_the_setting(tmp_path: Path) -> None:
    result = sdbot(
        "run", env={"SDBOT_DISCORD_TOKEN": "x", "SDBOT_MODEL_ID": str(tmp_path / "nope")}, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "SDBOT_MODEL_ID" in result.stderr and "Traceback" not in result.stderr


def test_make_test_model_then_imagine_writes_pngs_with_their_seed(tmp_path: Path, tiny_models: TinyModelPaths) -> None:
    made = sdbot("make-test-model", "models", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "SDBOT_MODEL_ID=" in made.stdout and (tmp_path / "models" / "pipeline" / "model_index.json").exists()
    env = {
        "SDBOT_MODEL_ID": str(tiny_models.pipeline),
        "SDBOT_SAFETY_MODEL_ID": str(tiny_models.safety_checker),
        "SDBOT_UPSCALER_MODEL_ID": str(tiny_models.upscaler),
        "SDBOT_DEVICE": "cpu",
    }
    result = sdbot("imagine", "a tiny test", "--seed", "41", "--count", "2", "--steps", "2", "--out", "out",
                   env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split("\tseed=")[1] for line in lines] == ["41", "42"]
    path = tmp_path / lines[0].split("\t")[0]
    with Image.open(path) as image:
        parsed = parse_parameters(image.text["parameters"])
    assert (parsed["prompt"], parsed["seed"], parsed["steps"]) == ("a tiny test", 41, 2)


def test_imagine_to_files_writes_pngs_with_consecutive_seeds(
    tiny_engine: DiffusionEngine, tiny_models: TinyModelPaths, tmp_path: Path
) -> None:
    args = argparse.Namespace(
        prompt="a tiny robot", negative="", seed=4294967295, count=2, steps=2, guidance=None, width=None, height=None
    )
    limits = RequestLimits.from_settings(tiny_models.settings())
    batches, _ = _imagine_batches(args, limits, 64, tiny_engine.token_counter())
    files = imagine_to_files(tiny_engine, batches, tmp_path / "out")
    assert [seed for _, seed in files] == [4294967295, 0]  # wraps around the seed range
    for path, seed in files:
        parameters = parse_parameters(Image.open(path).text["parameters"])
        assert (parameters["prompt"], parameters["seed"], parameters["steps"]) == ("a tiny robot", seed, 2)
        assert (parameters["width"], parameters["height"]) == (64, 64)


def test_imagine_reads_the_prompt_language(tiny_engine: DiffusionEngine, tiny_models: TinyModelPaths, tmp_path: Path) -> None:
    args = argparse.Namespace(
        prompt="a {red, green} robot --ar 2:1 --tile", negative="", seed=3, count=1, steps=2, guidance=None,
        width=None, height=None,
    )
    limits = RequestLimits.from_settings(tiny_models.settings())
    batches, notes = _imagine_batches(args, limits, 64, tiny_engine.token_counter())
    assert [(b.prompt, b.width, b.height, b.tile) for b in batches] == [
        ("a red robot", 128, 64, True), ("a green robot", 128, 64, True)
    ]
    assert notes == ()
    files = imagine_to_files(tiny_engine, batches, tmp_path / "out")
    assert len({path for path, _ in files}) == 2  # same seed, different prompts: two files
    assert [Image.open(path).size for path, _ in files] == [(128, 64), (128, 64)]
    assert "Tiling: True" in Image.open(files[0][0]).text["parameters"]


def test_imagine_refuses_bad_arguments_before_loading_the_model(tmp_path: Path) -> None:
    """The model folder does not exist: a bad argument must be reported, not the missing model."""
    result = sdbot("imagine", "x", "--steps", "999", env={"SDBOT_MODEL_ID": str(tmp_path / "nope")}, cwd=tmp_path)
    assert result.returncode == 1
    assert "steps must be between 1 and 50" in result.stderr and "SDBOT_MODEL_ID" not in result.stderr


def test_parse_prompt_shows_flags_weights_and_token_chunks(tmp_path: Path, tiny_models: TinyModelPaths) -> None:
    env = {"SDBOT_MODEL_ID": str(tiny_models.pipeline)}
    result = sdbot("parse-prompt", "an (important) word, {red, green} --ar 16:9 --tile", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout)
    assert reading["flags"] == {"ar": "16:9", "tile": ""}
    first, second = reading["prompts"]
    # A1111's documented reading of this example, then the permutation's text at weight 1.
    assert first["fragments"] == [["an ", 1.0], ["important", 1.1], [" word, red", 1.0]]
    assert second["text"] == "an (important) word, green"
    assert first["chunks"] == [len("animportantword,red")] == [first["tokens"]]  # tiny tokenizer: a token per letter

    text = sdbot("parse-prompt", "a BREAK b", env={"SDBOT_MODEL_ID": str(tmp_path / "absent")}, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert '[["a", 1.0], ["BREAK", -1.0], ["b", 1.0]]' in text.stdout and "not on this machine" in text.stdout

    refused = sdbot("parse-prompt", "a [cat:dog:0.5]", env=env, cwd=tmp_path)
    assert refused.returncode == 1 and "prompt editing" in refused.stderr

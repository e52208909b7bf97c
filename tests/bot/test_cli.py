"""The `sdbot` command as an operator runs it (in a subprocess, with a clean environment)."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from bot.cli import _imagine_batches, imagine_to_files
from generation.engine.diffusion import DiffusionEngine
from generation.engine.png_metadata import parse_parameters
from generation.engine.tiny_models import TinyModelPaths
from generation.jobs.image_files import write_file
from generation.jobs.retention import DAY_S
from generation.requests import RequestLimits
from sdbot.migrate import bundled_migrations_dir, load_migrations
from sdbot.store import Store
from sdbot.types import ImageRow, JobKind, NewJob
from tests.fakes.params import text2img

# The checkout under test, not whichever copy of the package the interpreter has installed.
REPO_ROOT = Path(__file__).resolve().parents[2]


def sdbot(*args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SDBOT_")}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=120,
        env=clean | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)} | (env or {}), cwd=cwd,
    )


def _tiny_env(models: TinyModelPaths) -> dict[str, str]:
    return {
        "SDBOT_MODEL_ID": str(models.pipeline),
        "SDBOT_SAFETY_MODEL_ID": str(models.safety_checker),
        "SDBOT_UPSCALER_MODEL_ID": str(models.upscaler),
        "SDBOT_DEVICE": "cpu",
    }


def test_help_lists_the_subcommands(tmp_path: Path) -> None:
    result = sdbot("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("run", "migrate", "imagine", "edit", "prune", "backup", "describe", "make-test-model"):
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
    latest = f"schema version {load_migrations(bundled_migrations_dir())[-1].version}"
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
    assert f"SDBOT_MODEL_ID={Path('models') / 'pipeline-sd3'}" in made.stdout
    env = _tiny_env(tiny_models)
    result = sdbot("imagine", "a tiny test", "--seed", "41", "--count", "2", "--steps", "2", "--out", "out",
                   env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split("\tseed=")[1] for line in lines] == ["41", "42"]
    path = tmp_path / lines[0].split("\t")[0]
    with Image.open(path) as image:
        parsed = parse_parameters(image.text["parameters"])
    assert (parsed["prompt"], parsed["seed"], parsed["steps"]) == ("a tiny test", 41, 2)

    # The catalogue it wrote, named by a path relative to where the operator stands.
    other = sdbot("imagine", "a tiny test", "--model", "tiny-xl", "--steps", "1", "--out", "out",
                  env=env | {"SDBOT_MODELS_FILE": "models/models.toml"}, cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert "seed=" in other.stdout


def test_describe_prints_four_suggestions_and_the_settings_a_picture_carries(
    tmp_path: Path, tiny_models: TinyModelPaths
) -> None:
    env = {
        "SDBOT_MODEL_ID": str(tiny_models.pipeline),
        "SDBOT_SAFETY_MODEL_ID": str(tiny_models.safety_checker),
        "SDBOT_UPSCALER_MODEL_ID": str(tiny_models.upscaler),
        "SDBOT_DESCRIBE_MODEL_ID": str(tiny_models.describer),
        "SDBOT_DEVICE": "cpu",
    }
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a quiet harbour\nSteps: 1, Sampler: Euler, CFG scale: 0, Seed: 9, Size: 64x64")
    Image.new("RGB", (64, 64), "teal").save(tmp_path / "harbour.png", pnginfo=info)
    result = sdbot("describe", "harbour.png", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "prompt: a quiet harbour" in result.stdout and "seed: 9" in result.stdout
    numbered = [line for line in result.stdout.splitlines() if line[:3] in {"1. ", "2. ", "3. ", "4. "}]
    assert [line[:2] for line in numbered] == ["1.", "2.", "3.", "4."]
    (tmp_path / "notes.txt").write_text("not a picture")
    refused = sdbot("describe", "notes.txt", env=env, cwd=tmp_path)
    assert refused.returncode == 1 and "could not be read as a picture" in refused.stderr
    assert "Traceback" not in refused.stderr


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


def test_imagine_refuses_what_the_bot_refuses(tmp_path: Path) -> None:
    """More images than SDBOT_MAX_COUNT, or a seed outside the 32-bit range, are refused (no model loads)."""
    missing_model = {"SDBOT_MODEL_ID": str(tmp_path / "nope")}
    too_many = sdbot("imagine", "x", "--count", "99", env=missing_model, cwd=tmp_path)
    assert too_many.returncode == 1 and "at most 4 images per request (got 99)" in too_many.stderr
    seed = str(2**70)  # the other bounds are in tests/generation/test_requests.py
    wrapped = sdbot("imagine", "x", "--seed", seed, env=missing_model, cwd=tmp_path)
    assert wrapped.returncode == 1
    assert f"seed must be between 0 and 4294967295, or -1 for a random one (got {seed})" in wrapped.stderr


def test_imagine_seed_minus_one_or_empty_is_random(tiny_models: TinyModelPaths) -> None:
    limits = RequestLimits.from_settings(tiny_models.settings())
    for seed in (-1, None):
        args = argparse.Namespace(prompt="x", negative="", seed=seed, count=4, steps=1, guidance=None,
                                  width=None, height=None)
        [params], _ = _imagine_batches(args, limits, 64)
        assert all(0 <= s <= 4294967295 for s in params.seeds) and len(set(params.seeds)) > 1


def test_run_opens_the_database_before_loading_models(tmp_path: Path) -> None:
    """A bad database path is one line naming the file and why, before any model is looked at."""
    env = {"SDBOT_DISCORD_TOKEN": "x", "SDBOT_DATABASE_PATH": "/proc/nope/db.sqlite3",
           "SDBOT_MODEL_ID": str(tmp_path / "no-model")}
    result = sdbot("run", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "sdbot: cannot open the database file /proc/nope/db.sqlite3: No such file or directory; "
        "check SDBOT_DATABASE_PATH"
    )


async def test_prune_and_backup_on_the_command_line(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "data" / "sdbot.sqlite3")
    files = []
    for age_days in (40, 1):  # one job over the 30 days kept, one within them
        ended = time.time() - age_days * DAY_S
        job = await store.create_job(
            NewJob(kind=JobKind.IMAGINE, guild_id=1, channel_id=2, user_id=3, params=text2img(), model_id="m"),
            now=ended,
        )
        path = tmp_path / "data" / "images" / f"{job.id}.png"
        write_file(path, b"png bytes")
        files.append(path)
        await store.finish_job(job.id, [ImageRow(job_id=job.id, idx=0, seed=1, width=64, height=64, path=str(path),
                                                 format="png", flagged=False, nsfw_score=None, record={})], now=ended)
    await store.close()
    keep = {"SDBOT_KEEP_IMAGES_DAYS": "30"}

    unset = sdbot("prune", cwd=tmp_path)
    assert unset.returncode == 2 and "SDBOT_KEEP_IMAGES_DAYS" in unset.stderr
    dry = sdbot("prune", "--dry-run", env=keep, cwd=tmp_path)
    assert dry.returncode == 0 and "would delete 1 image file(s)" in dry.stdout
    assert all(path.exists() for path in files)
    pruned = sdbot("prune", env=keep, cwd=tmp_path)
    assert pruned.returncode == 0 and "deleted 1 image file(s)" in pruned.stdout
    assert [path.exists() for path in files] == [False, True]

    backup = sdbot("backup", "backups/copy.sqlite3", cwd=tmp_path)
    assert backup.returncode == 0, backup.stderr
    with sqlite3.connect(tmp_path / "backups" / "copy.sqlite3") as copy:
        assert copy.execute("SELECT count(*) FROM jobs WHERE status = 'done'").fetchone() == (2,)
        assert copy.execute("SELECT count(*) FROM images WHERE pruned_at IS NOT NULL").fetchone() == (1,)
    missing = sdbot("backup", "x.sqlite3", env={"SDBOT_DATABASE_PATH": "nowhere.sqlite3"}, cwd=tmp_path)
    assert missing.returncode == 1 and "no database" in missing.stderr


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


def test_edit_pans_a_picture_and_keeps_its_pixels(tmp_path: Path, tiny_models: TinyModelPaths) -> None:
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (30, 90, 200)).save(source)
    env = _tiny_env(tiny_models)
    result = sdbot("edit", "source.png", "--pan", "right", "--prompt", "sea", "--seed", "5", "--steps", "2",
                   "--out", "out", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    path, seed = result.stdout.strip().split("\tseed=")
    assert seed == "5"
    with Image.open(tmp_path / path) as image:
        assert image.size == (96, 64)
        kept = np.asarray(image.convert("RGB"), dtype=np.int16)[:, :64]
        assert np.abs(kept - np.array([30, 90, 200])).max() <= 2
    refused = sdbot("edit", "source.png", "--region", "90,0,20,20", env=env, cwd=tmp_path)
    assert refused.returncode == 1 and "reaches past the picture" in refused.stderr
    assert "Traceback" not in refused.stderr

"""The container recipe, checked without a Docker daemon: the Dockerfile runs as a non-root user with
a health check on /healthz, and compose.yaml reserves a GPU, keeps data and the model cache on
volumes, checks /healthz and adds a Ray head under the "ray" profile."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sdbot.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def image_env() -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(instructions("ENV"))))


def test_the_image_is_cuda_torch_and_runs_as_a_non_root_user() -> None:
    [base] = instructions("FROM")
    assert re.fullmatch(r"pytorch/pytorch:\S*cuda\S*-runtime", base)
    users = instructions("USER")
    assert users and users[-1] not in {"root", "0"}
    assert instructions("CMD") == ['["sdbot", "run"]']


def test_the_image_keeps_data_and_model_cache_on_volumes_and_checks_healthz() -> None:
    env = image_env()
    volumes = " ".join(instructions("VOLUME"))
    for path in (Path(env["SDBOT_DATABASE_PATH"]).parent, Path(env["SDBOT_OUTPUT_DIR"]).parent, env["HF_HOME"]):
        assert str(path) in volumes
    [check] = instructions("HEALTHCHECK")
    assert f"127.0.0.1:{env['SDBOT_METRICS_PORT']}/healthz" in check
    assert env["SDBOT_METRICS_HOST"] == "0.0.0.0"  # reachable from outside the container


def test_compose_reserves_a_gpu_keeps_volumes_and_checks_healthz() -> None:
    config = compose()
    bot = config["services"]["sdbot"]
    [gpu] = bot["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    mounts = dict(volume.split(":", 1)[::-1] for volume in bot["volumes"])
    env = bot["environment"]
    assert str(Path(env["SDBOT_DATABASE_PATH"]).parent) in mounts
    assert image_env()["HF_HOME"] in mounts
    assert set(mounts.values()) <= set(config["volumes"])  # named volumes, declared
    assert f"127.0.0.1:{env['SDBOT_METRICS_PORT']}/healthz" in " ".join(bot["healthcheck"]["test"])
    assert "profiles" not in bot  # `docker compose up` starts the bot


def test_the_ray_profile_adds_a_ray_head_on_the_gpu() -> None:
    services = compose()["services"]
    head = services["ray-head"]
    assert head["profiles"] == ["ray"]
    assert head["command"][:3] == ["ray", "start", "--head"]
    assert "--ray-client-server-port=10001" in head["command"]
    assert head["image"] == services["sdbot"]["image"]  # Ray client and head must be the same version
    assert services["sdbot"]["build"]["args"]["EXTRAS"] == "ray"
    assert head["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_every_sdbot_variable_in_the_recipes_is_a_setting() -> None:
    text = (ROOT / "Dockerfile").read_text() + (ROOT / "compose.yaml").read_text()
    known = {f"SDBOT_{name.upper()}" for name in Settings.model_fields}
    assert set(re.findall(r"SDBOT_[A-Z_]+", text)) <= known


def test_secrets_and_local_data_stay_out_of_the_build_context() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", "data", ".venv", ".git"} <= ignored

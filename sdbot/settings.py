"""All configuration, read from `SDBOT_*` environment variables and an optional `.env` file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "SDBOT_"
# Settings that hold lists, and how they may be written.
LIST_SETTINGS = ("dev_guild_ids", "blocked_words")
LIST_FORMS = "write a comma-separated list (1,2) or a JSON list ([1, 2])"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore",
        # `SDBOT_X=` (as in .env.example) means "use the default", not an empty value.
        env_ignore_empty=True,
    )

    # Discord
    discord_token: SecretStr | None = None
    dev_guild_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)

    # Models
    model_id: str = "stabilityai/sd-turbo"
    model_revision: str | None = None
    # Several models and LoRAs (README: "Several models"); None: models.toml here if present.
    models_file: Path | None = None
    # Memory the resident models may take, in GB; None: 80% of the GPU's (on a CPU, half the RAM).
    gpu_memory_gb: float | None = Field(None, gt=0)
    safety_model_id: str = "CompVis/stable-diffusion-safety-checker"
    safety_checker: bool = True
    upscaler_model_id: str = "stabilityai/sd-x2-latent-upscaler"
    # /describe's captioning model; "none" turns /describe off.
    describe_model_id: str = "florence-community/Florence-2-base"
    inpaint_model_id: str | None = None
    device: str = "auto"
    # GPU fast path (README: "GPU speed"); auto = on where the device is CUDA.
    compile: Literal["auto", "on", "off"] = "auto"
    fast_path: Literal["auto", "on", "off"] = "auto"
    torch_compile: bool | None = None  # old name of SDBOT_COMPILE: true = on, false = off
    # Live previews (README: "Live previews"): a small decoded picture while a job generates.
    previews: bool = True
    preview_decoder_id: str = "auto"
    preview_interval_s: float = Field(1.5, gt=0.0)

    # Storage
    database_path: Path = Path("data/sdbot.sqlite3")
    output_dir: Path = Path("data/images")
    keep_images_days: float | None = Field(None, gt=0)

    # Generation defaults and limits
    default_steps: int = Field(4, ge=1)
    default_guidance: float = Field(0.0, ge=0.0, le=30.0)
    max_steps: int = Field(50, ge=1, le=500)
    max_count: int = Field(4, ge=1, le=4)
    min_size: int = Field(64, ge=8)
    max_size: int = Field(1024, ge=64)
    max_prompt_chars: int = Field(1000, ge=1)
    max_prompt_tokens: int = Field(450, ge=75)
    max_expansion: int = Field(4, ge=1, le=25)
    styles_file: Path | None = None
    max_upload_pixels: int = Field(4096 * 4096, ge=64 * 64)
    blocked_words: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Editing (issue 12): the img2img strength of Vary (Subtle) and Vary (Strong)
    vary_subtle_strength: float = Field(0.35, ge=0.1, le=1.0)
    vary_strong_strength: float = Field(0.75, ge=0.1, le=1.0)
    # Queue and worker
    max_queued_per_user: int = Field(4, ge=1)
    queue_capacity: int = Field(100, ge=1)
    max_batch: int = Field(4, ge=1)
    job_timeout_s: float = Field(600.0, gt=0)
    progress_interval_s: float = Field(1.5, ge=0.0)
    queue_update_interval_s: float = Field(5.0, ge=0.0)

    # Quotas
    default_daily_quota: int = Field(50, ge=0)

    # Scaling out (see README: "Scaling past one GPU")
    workers: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_num_workers: int | None = Field(None, ge=1)
    ray_gpus_per_worker: float = Field(1.0, ge=0.0)
    ray_cpus_per_worker: int = Field(1, ge=1)
    ray_start_timeout_s: float = Field(120.0, gt=0)

    # Operations
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator(*LIST_SETTINGS, mode="before")
    @classmethod
    def _list(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("not a valid JSON list") from None
        return [item.strip() for item in value.split(",") if item.strip()]

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value.split(":")[0] not in {"auto", "cuda", "mps", "cpu"}:
            raise ValueError("must be auto, cuda, cuda:N, mps or cpu")
        return value

    @property
    def styles_path(self) -> Path | None:
        """SDBOT_STYLES_FILE, else `styles.csv` in the working folder when there is one."""
        return _given_or_present(self.styles_file, Path("styles.csv"))

    @property
    def models_path(self) -> Path | None:
        """SDBOT_MODELS_FILE, else `models.toml` in the working folder (beside .env) when there is one."""
        return _given_or_present(self.models_file, Path("models.toml"))

    @model_validator(mode="after")
    def _old_compile_name(self) -> Settings:
        if self.torch_compile is not None and "compile" not in self.model_fields_set:
            self.compile = "on" if self.torch_compile else "off"
        return self

    @model_validator(mode="after")
    def _sizes_consistent(self) -> Settings:
        if self.min_size > self.max_size:
            raise ValueError("SDBOT_MIN_SIZE must not exceed SDBOT_MAX_SIZE")
        return self


def _given_or_present(given: Path | None, default: Path) -> Path | None:
    """A file setting: the path given, else `default` when that file exists."""
    if given is not None:
        return given
    return default if default.is_file() else None


class SettingsError(Exception):
    """Configuration that cannot be used; the message names the variables to fix."""


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning pydantic's error report into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems: dict[str, str] = {}  # one line per variable, however many of its items are wrong
        for item in error.errors():
            field = str(item["loc"][0]) if item["loc"] else ""
            name = ENV_PREFIX + field.upper() if field else "settings"
            hint = f"; {LIST_FORMS}" if field in LIST_SETTINGS else ""
            problems.setdefault(name, f"{name}: {item['msg']}{hint}")
        raise SettingsError("invalid configuration: " + "; ".join(problems.values())) from None

"""The model catalogue: the models a server offers and the LoRAs that go with them, read from the
TOML file `SDBOT_MODELS_FILE` (`models.toml` in the working folder when there is one; see
`models.example.toml`). Without a file the catalogue is the one model of `SDBOT_MODEL_ID`, and jobs
name no model, exactly as before catalogues existed.

A model entry names a hub id or folder, a revision, its family (sd, sdxl, sd3, flux: read from
the folder's `model_index.json` when not given) and its defaults and limits (steps, guidance,
size). A LoRA belongs to a family and serves every model of it. Pure Python: no model is loaded.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from generation.errors import GenerationError
from sdbot.settings import Settings

T = TypeVar("T")
E = TypeVar("E", bound=BaseModel)

Family = Literal["sd", "sdxl", "sd3", "flux"]
FAMILIES: tuple[Family, ...] = ("sd", "sdxl", "sd3", "flux")
# The side each family was trained at, when an entry gives no `size`.
NATIVE_SIZE: dict[str, int] = {"sd": 512, "sdxl": 1024, "sd3": 1024, "flux": 1024}
# Transformer families patchify 2x2 latents of an 8x VAE: sides must be multiples of 16.
SIZE_STEP: dict[str, int] = {"sd": 8, "sdxl": 8, "sd3": 16, "flux": 16}
AUTOCOMPLETE_LIMIT = 25  # Discord shows at most 25 autocomplete choices
# Names become peft adapter names and Discord choice values: letters, digits, - and _.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")


class CatalogueError(GenerationError):
    """The models file cannot be used; the message names the file and the line."""


def family_of(pipeline_class: str) -> Family | None:
    """The family of a diffusers pipeline class name (`StableDiffusionXLPipeline` -> sdxl)."""
    for prefix, family in (("Flux", "flux"), ("StableDiffusion3", "sd3"), ("StableDiffusionXL", "sdxl"),
                           ("StableDiffusion", "sd")):
        if pipeline_class.startswith(prefix):
            return family  # type: ignore[return-value]
    return None


def detect_family(model_id: str) -> Family | None:
    """The family of a local diffusers folder, from the pipeline class its `model_index.json`
    names; None for hub ids (nothing is downloaded to find out) and unknown classes."""
    index = Path(model_id).expanduser() / "model_index.json"
    try:
        return family_of(str(json.loads(index.read_text("utf-8")).get("_class_name", "")))
    except (OSError, ValueError, AttributeError):
        return None


class LoraEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    source: str  # a hub id (with `weight_name` for the file in it) or a .safetensors file
    weight_name: str | None = None
    family: Family
    weight: float = Field(1.0, ge=-2.0, le=2.0)  # the default weight when a member gives none
    description: str = ""


class ModelEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: str
    model_id: str  # hub id or local folder
    revision: str | None = None
    family: Family | None = None
    description: str = ""
    steps: int | None = Field(None, ge=1)  # default steps; None: SDBOT_DEFAULT_STEPS
    max_steps: int | None = Field(None, ge=1, le=500)
    guidance: float | None = Field(None, ge=0.0, le=30.0)
    size: int | None = Field(None, ge=64, le=4096)  # native side in pixels
    max_size: int | None = Field(None, ge=64, le=4096)
    # The tiny VAE of this model's live previews (hub id or folder); None: SDBOT_PREVIEW_DECODER_ID.
    preview_decoder: str | None = None

    @property
    def size_step(self) -> int:
        return SIZE_STEP.get(self.family or "sd", 8)


class Catalogue(BaseModel):
    """`named` is False for the implicit one-model catalogue of SDBOT_MODEL_ID: jobs then name no
    model (`GenerationParams.model` stays None)."""

    model_config = ConfigDict(frozen=True)

    models: dict[str, ModelEntry]
    loras: dict[str, LoraEntry] = Field(default_factory=dict)
    default: str
    named: bool = True

    @model_validator(mode="after")
    def _default_known(self) -> Catalogue:
        if self.default not in self.models:
            raise ValueError(f"default = {self.default!r} is not one of the models ({', '.join(self.models)})")
        return self

    def entry(self, name: str | None) -> ModelEntry:
        """The entry of a job's model (None: the default). KeyError for an unknown name."""
        return self.models[self.default if name is None else name]

    def lookup(self, name: str) -> ModelEntry | None:
        return _casefolded(self.models).get(name.strip().casefold())

    def lookup_lora(self, name: str) -> LoraEntry | None:
        return _casefolded(self.loras).get(name.strip().casefold())


def _casefolded(items: Mapping[str, T]) -> dict[str, T]:
    return {name.casefold(): item for name, item in items.items()}


def single_model(model_id: str, revision: str | None = None) -> Catalogue:
    """The catalogue of a bot without a models file: SDBOT_MODEL_ID, unnamed."""
    entry = ModelEntry(name=model_id, model_id=model_id, revision=revision, family=detect_family(model_id))
    return Catalogue(models={entry.name: entry}, default=entry.name, named=False)


def catalogue_for(settings: Settings) -> Catalogue:
    """The models file's catalogue, or the single model. Raises CatalogueError."""
    path = settings.models_path
    return single_model(settings.model_id, settings.model_revision) if path is None else load_catalogue(path)


def load_catalogue(path: str | Path) -> Catalogue:
    """Read a models file (format: `models.example.toml`). Raises CatalogueError naming the file
    and the line of the first problem."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CatalogueError(f"{path}: cannot read the models file ({error})") from error
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:  # its message ends "(at line N, column M)"
        raise CatalogueError(f"{path}: not valid TOML: {error}") from None
    models = _entries(path, text, data, "models", ModelEntry)
    loras = _entries(path, text, data, "loras", LoraEntry)
    if not models:
        raise CatalogueError(f"{path}: no models; add a [models.NAME] table with model_id = \"...\"")
    unknown = set(data) - {"models", "loras", "default"}
    if unknown:
        raise CatalogueError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    default = data.get("default", next(iter(models)))
    if default not in models:
        raise CatalogueError(
            f"{path}, line {_line_of(text, 'default')}: default = {default!r} is not one of the models "
            f"({', '.join(models)})"
        )
    for lora in list(loras.values()):
        if Path(lora.source).suffix != ".safetensors":
            continue  # a hub id
        file = Path(lora.source).expanduser()
        if not file.is_absolute():  # relative to the models file, wherever the bot starts
            file = path.parent / file
            loras[lora.name] = lora.model_copy(update={"source": str(file)})
        if not file.is_file():
            raise CatalogueError(f"{path}, line {_line_of(text, f'loras.{lora.name}')}: [loras.{lora.name}]: "
                                 f"there is no file {file}")
    return Catalogue(models=models, loras=loras, default=default)


def _entries(path: Path, text: str, data: dict[str, object], table: str, kind: type[E]) -> dict[str, E]:
    raw = data.get(table, {})
    if not isinstance(raw, dict):
        raise CatalogueError(f"{path}, line {_line_of(text, table)}: `{table}` must be tables: [{table}.NAME]")
    entries: dict[str, E] = {}
    seen: set[str] = set()
    for name, values in raw.items():
        line = _line_of(text, f"{table}.{name}")
        where = f"{path}, line {line}: [{table}.{name}]"
        if not _NAME.match(name):
            raise CatalogueError(f"{where}: names are letters, digits, - and _ (at most 48)")
        if name.casefold() in seen:
            raise CatalogueError(f"{where}: the name is already used (names ignore case)")
        seen.add(name.casefold())
        if not isinstance(values, dict):
            raise CatalogueError(f"{where} must be a table")
        if kind is ModelEntry and "family" not in values and "model_id" in values:
            values = {**values, "family": detect_family(str(values["model_id"]))}
        try:
            entries[name] = kind(name=name, **values)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, item['loc'])) or 'entry'}: {item['msg']}" for item in error.errors()
            )
            raise CatalogueError(f"{where}: {problems}") from None
    return entries


def _line_of(text: str, key: str) -> int:
    """The line of a table header `[models.name]` (or a `key =` line); 1 when not found."""
    *parents, last = key.split(".")
    header = re.compile(rf"^[ \t]*\[{re.escape('.'.join([*parents, last]))}\]", re.MULTILINE)
    assignment = re.compile(rf"^[ \t]*{re.escape(last)}[ \t]*=", re.MULTILINE)
    found = header.search(text) or (assignment.search(text) if not parents else None)
    return text.count("\n", 0, found.start()) + 1 if found else 1


def match(names: Mapping[str, ModelEntry] | Mapping[str, LoraEntry], typed: str) -> list[str]:
    """Names containing `typed`, ignoring case: those starting with it first, catalogue order."""
    needle = typed.strip().casefold()
    starts = [name for name in names if name.casefold().startswith(needle)]
    contains = [name for name in names if needle in name.casefold() and name not in starts]
    return (starts + contains)[:AUTOCOMPLETE_LIMIT]

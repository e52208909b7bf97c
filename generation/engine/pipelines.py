"""Loading the diffusers pipelines and the safety checker, each failure turned into one clear
`ModelLoadError` that names the `SDBOT_*` setting to fix.

Model revisions, for the reproducibility record:
- hub ids resolve to their snapshot folder in the Hugging Face cache, whose name is the commit hash;
- local folders get a 16-hex-digit sha256 fingerprint (`folder_fingerprint`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import diffusers.utils.logging
import torch
import transformers.utils.logging
from diffusers import (
    AutoencoderTiny,
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
    StableDiffusionLatentUpscalePipeline,
)
from diffusers.pipelines.stable_diffusion.safety_checker import (
    StableDiffusionSafetyChecker,
)
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers import CLIPImageProcessor

from generation.catalogue import family_of
from generation.engine.config import EngineConfig
from generation.engine.devices import is_out_of_memory
from generation.engine.fast_path import FastPath, apply_fast_path
from generation.engine.safety import SafetyChecker
from generation.errors import ModelLoadError
from sdbot.settings import ENV_PREFIX

# Per-component "Loading weights" bars are noise in a service log (hub download bars stay on).
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()

log = logging.getLogger(__name__)

T = TypeVar("T")

# Local-folder fingerprint: files that define the model. Weights up to _FULL_HASH_BYTES are hashed
# whole; bigger ones (multi-GB checkpoints) by size plus _SAMPLES evenly spaced 64 KiB slices,
# which include the safetensors header at offset 0 and differ between any two fine-tunes.
_MODEL_SUFFIXES = frozenset({".json", ".txt", ".model", ".safetensors", ".bin", ".pt", ".pth", ".ckpt"})
_FULL_HASH_BYTES = 64 * 2**20
_SAMPLES = 16
_SAMPLE_BYTES = 64 * 2**10


@dataclass(frozen=True)
class LoadedPipeline:
    pipe: DiffusionPipeline
    model_id: str
    revision: str
    fast_path: FastPath = FastPath(compiled=False, applied=())


def load_text2img(
    config: EngineConfig, device: torch.device, dtype: torch.dtype,
    model_id: str | None = None, model_revision: str | None = None,
) -> LoadedPipeline:
    """A text-to-image model (the main one, or `model_id` of the catalogue), through diffusers'
    AutoPipeline so every family it knows (SD, SDXL, SD3, Flux) loads the same way, with diffusers'
    own safety checker left out (ours runs batched, separately)."""
    setting = "model_id"
    if model_id is None:
        model_id, model_revision = config.model_id, config.model_revision
    loaded = _load_auto(AutoPipelineForText2Image, setting, model_id, model_revision, device, dtype)
    fast = _attempt(lambda: apply_fast_path(loaded.pipe, config, device), setting, model_id)
    return replace(loaded, fast_path=fast)


def img2img_from(text2img: LoadedPipeline) -> LoadedPipeline:
    """Image-to-image on the same modules: no second copy of the weights."""
    try:
        pipe = AutoPipelineForImage2Image.from_pipe(text2img.pipe)
    except ValueError as error:  # no image-to-image counterpart for this pipeline class
        raise ModelLoadError(
            f"could not use {_name('model_id')}={text2img.model_id!r} for variations: {_first_line(error)}"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, text2img.model_id, text2img.revision, text2img.fast_path)


def inpaint_from(text2img: LoadedPipeline) -> LoadedPipeline:
    """Inpainting (zoom out, pan, vary region) on the same modules: no second copy of the weights;
    a 4-channel UNet inpaints by re-noising the kept latents at each step."""
    try:
        pipe = AutoPipelineForInpainting.from_pipe(text2img.pipe, requires_safety_checker=False)
    except ValueError as error:  # no inpainting counterpart for this pipeline class
        raise ModelLoadError(
            f"could not use {_name('model_id')}={text2img.model_id!r} for edits: {_first_line(error)}; "
            f"set {_name('inpaint_model_id')} to an inpainting checkpoint"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, text2img.model_id, text2img.revision, text2img.fast_path)


def load_inpainter(config: EngineConfig, device: torch.device, dtype: torch.dtype) -> LoadedPipeline:
    """The dedicated inpainting checkpoint of SDBOT_INPAINT_MODEL_ID (a 9-channel UNet that also
    reads the masked picture), without diffusers' own safety checker."""
    setting = "inpaint_model_id"
    model_id = config.inpaint_model_id
    assert model_id is not None
    return _load_auto(AutoPipelineForInpainting, setting, model_id, None, device, dtype)


def _load_auto(
    auto_class: type[AutoPipelineForText2Image] | type[AutoPipelineForInpainting], setting: str, model_id: str,
    model_revision: str | None, device: torch.device, dtype: torch.dtype,
) -> LoadedPipeline:
    """A pipeline through one of diffusers' AutoPipeline classes, on `device`, without diffusers'
    own safety checker; a failure names `setting`."""
    folder, revision = _resolve_pipeline_folder(model_id, model_revision, setting)
    pipe = _attempt(lambda: auto_class.from_pretrained(folder, dtype=dtype, **_no_safety_checker(folder)),
                    setting, model_id)
    _attempt(lambda: pipe.to(device), setting, model_id)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, model_id, revision)


def _no_safety_checker(folder: Path) -> dict[str, Any]:
    """The arguments that leave diffusers' own safety checker out, for pipelines that have one
    (SD 1.x/2.x); the others (SDXL, SD3, FLUX) would log a warning about them at every load."""
    try:
        components = DiffusionPipeline.load_config(folder)  # its model_index.json, as pipeline_class reads it
    except (OSError, ValueError):  # from_pretrained reports the folder's problem itself
        components = {}
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in components else {}


def load_upscaler(config: EngineConfig, device: torch.device, dtype: torch.dtype) -> LoadedPipeline:
    setting = "upscaler_model_id"
    model_id = config.upscaler_model_id
    folder, revision = _resolve_pipeline_folder(model_id, None, setting)
    pipe = _attempt(
        lambda: StableDiffusionLatentUpscalePipeline.from_pretrained(folder, dtype=dtype), setting, model_id
    )
    _attempt(lambda: pipe.to(device), setting, model_id)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, model_id, revision)


# Tiny preview decoders by model family, told by the pipeline's class name; SD 1.x/2.x otherwise.
_PREVIEW_DECODERS = {
    "sd": "madebyollin/taesd",
    "sdxl": "madebyollin/taesdxl",
    "sd3": "madebyollin/taesd3",
    "flux": "madebyollin/taef1",
}


def preview_decoder_id(config: EngineConfig, pipe: DiffusionPipeline, chosen: str | None = None) -> str | None:
    """The model's own decoder (`chosen`, from the models file), else SDBOT_PREVIEW_DECODER_ID with
    `auto` resolved by family; None when previews are off."""
    configured = (chosen or config.preview_decoder_id).strip()
    if not config.previews or configured.lower() == "none":
        return None
    if configured.lower() != "auto":
        return configured
    return _PREVIEW_DECODERS[family_of(type(pipe).__name__) or "sd"]  # an unknown class: SD's latents


def load_preview_decoder(
    config: EngineConfig, pipe: DiffusionPipeline, device: torch.device, dtype: torch.dtype,
    chosen: str | None = None,
) -> AutoencoderTiny | None:
    """The tiny VAE of live previews (`chosen`: the model's own, see preview_decoder_id), or None
    when previews are off or it cannot be loaded (logged: previews are a nicety, never a reason for
    the bot not to start)."""
    model_id = preview_decoder_id(config, pipe, chosen)
    if model_id is None:
        return None
    setting = "preview_decoder_id"
    try:
        _refuse_missing_folder(model_id, setting)
        decoder = _attempt(lambda: AutoencoderTiny.from_pretrained(model_id, dtype=dtype), setting, model_id)
    except ModelLoadError as error:
        log.warning("%s; live previews are off", error)
        return None
    if decoder.config.latent_channels != pipe.vae.config.latent_channels:
        log.warning(
            "%s=%r decodes %d latent channels, the model makes %d; live previews are off",
            _name(setting), model_id, decoder.config.latent_channels, pipe.vae.config.latent_channels,
        )
        return None
    log.info("live previews decoded with %s", model_id)
    return decoder.to(device).eval()


def check_folders(config: EngineConfig) -> None:
    """Refuse, in a moment and before anything loads, a configured model folder that is not there
    (the upscaler too, though it loads only at the first /upscale)."""
    for entry in config.models.models.values():
        _refuse_missing_folder(entry.model_id, "model_id")
    if config.safety_checker:
        _refuse_missing_folder(config.safety_model_id, "safety_model_id")
    if not config.plain_upscale:
        _refuse_missing_folder(config.upscaler_model_id, "upscaler_model_id")
    if config.inpaint_model_id:
        _refuse_missing_folder(config.inpaint_model_id, "inpaint_model_id")


def to_download(config: EngineConfig) -> list[str]:
    """The hub ids a start would download: those not in the local Hugging Face cache (never folders)."""
    wanted = [(config.model_id, "model_index.json", config.model_revision)]
    if config.safety_checker:
        wanted.append((config.safety_model_id, "config.json", None))
    return [
        model_id
        for model_id, marker, revision in wanted
        if not Path(model_id).expanduser().is_dir() and not _in_cache(model_id, marker, revision)
    ]


def pipeline_class(model_id: str, revision: str | None = None) -> str | None:
    """The pipeline class the model's model_index.json names ("StableDiffusionPipeline",
    "FluxPipeline"...), fetching only that file from the hub if needed; None when it cannot be read."""
    try:
        return str(DiffusionPipeline.load_config(model_id, revision=revision)["_class_name"])
    except (OSError, ValueError, KeyError):
        return None


def native_size_on_disk(model_id: str, revision: str | None = None) -> int | None:
    """The side the model was trained at, read from its UNet and VAE configurations in a folder or
    the local Hugging Face cache without loading weights or downloading; None when they are not here."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.load_config(model_id, subfolder="unet", revision=revision, local_files_only=True)
        vae = AutoencoderKL.load_config(model_id, subfolder="vae", revision=revision, local_files_only=True)
    except (OSError, ValueError):
        return None
    # As diffusers computes it: each VAE block but the last halves the side.
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)  # type: ignore[index]


def _in_cache(model_id: str, marker: str, revision: str | None) -> bool:
    try:
        return isinstance(try_to_load_from_cache(model_id, marker, revision=revision), str)
    except ValueError:  # not a valid hub id either: loading will say so
        return False


def load_safety_checker(config: EngineConfig, device: torch.device, dtype: torch.dtype) -> SafetyChecker:
    setting = "safety_model_id"
    model_id = config.safety_model_id
    _refuse_missing_folder(model_id, setting)
    model = _attempt(
        lambda: StableDiffusionSafetyChecker.from_pretrained(model_id, dtype=dtype), setting, model_id
    )
    processor = _attempt(lambda: CLIPImageProcessor.from_pretrained(model_id), setting, model_id)
    return _attempt(lambda: SafetyChecker(model, processor, device), setting, model_id)


def folder_fingerprint(folder: Path) -> str:
    """sha256 over each model file's relative path and size, plus its contents (whole, or sampled
    for big weights: see _FULL_HASH_BYTES). Hidden folders (caches) are skipped."""
    digest = hashlib.sha256()
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix in _MODEL_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with path.open("rb") as file:
            if size <= _FULL_HASH_BYTES:
                digest.update(file.read())
                continue
            for index in range(_SAMPLES):
                file.seek(index * (size - _SAMPLE_BYTES) // (_SAMPLES - 1))
                digest.update(file.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def _resolve_pipeline_folder(model_id: str, revision: str | None, setting: str) -> tuple[Path, str]:
    """A local folder as is, or a hub id downloaded (or found in the cache) at `revision`."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        if revision:
            log.warning("%s is ignored for the local folder %s", _name("model_revision"), local)
        return local, folder_fingerprint(local)
    _refuse_missing_folder(model_id, setting)
    folder = Path(_attempt(lambda: DiffusionPipeline.download(model_id, revision=revision), setting, model_id))
    # The hub cache keeps each download under snapshots/<commit hash>/.
    return folder, folder.name if folder.parent.name == "snapshots" else folder_fingerprint(folder)


def _refuse_missing_folder(model_id: str, setting: str) -> None:
    """Something that can only be a path (not `org/name`) must exist, or we would ask the hub."""
    if Path(model_id).expanduser().is_dir():
        return
    looks_like_path = model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or "\\" in model_id
    if looks_like_path:
        raise ModelLoadError(f"could not load {_name(setting)}={model_id!r}: there is no such folder")


def _attempt(action: Callable[[], T], setting: str, model_id: str) -> T:
    """Run a load step; any failure becomes one ModelLoadError line naming the setting."""
    try:
        return action()
    except Exception as error:  # noqa: BLE001 - every failure gets the same one-line treatment
        raise ModelLoadError(f"could not load {_name(setting)}={model_id!r}: {_explain(error)}") from None


def _explain(error: Exception) -> str:
    """One line for the most telling error in the chain (diffusers wraps hub errors in OSError)."""
    chain = _chain(error)

    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(item, types) for item in chain)

    def says(*phrases: str) -> bool:
        return any(phrase in str(item).lower() for item in chain for phrase in phrases)

    # Subclasses before their bases: GatedRepoError is a RepositoryNotFoundError, and so on.
    if has(GatedRepoError):
        return "the repository is gated: accept its terms on huggingface.co and log in (`hf auth login`)"
    if has(RepositoryNotFoundError, HFValidationError) or says("neither a valid local path nor a valid repo id"):
        return "not found on the Hugging Face hub and not a local folder"
    if has(RevisionNotFoundError):
        return f"the revision in {_name('model_revision')} does not exist in that repository"
    if has(LocalEntryNotFoundError, ConnectionError) or says("not fully cached", "couldn't connect"):
        reason = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") else "offline?"
        return f"not in the local Hugging Face cache, and the hub could not be reached ({reason})"
    if has(EntryNotFoundError) or says("no file named"):
        return f"files are missing: {_first_line(error)}"
    if has(MemoryError) or any(is_out_of_memory(item) for item in chain):
        return f"not enough memory to load it ({_first_line(error)}); try a smaller model or {_name('device')}"
    return f"{type(error).__name__}: {_first_line(error)}"


def _chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

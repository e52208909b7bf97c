"""LoRAs on a loaded pipeline, through diffusers' peft integration: each LoRA is loaded once per
model as a named adapter (`load_lora_weights`), then every batch turns on exactly its own LoRAs at
their weights (`set_adapters`), or turns them all off."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache

from generation.catalogue import LoraEntry
from generation.errors import ModelLoadError

log = logging.getLogger(__name__)

_DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' file name in a LoRA repository


def lora_revision(lora: LoraEntry) -> str:
    """For the record: a local file's sha256 (16 hex digits), or the hub commit it came from."""
    local = Path(lora.source).expanduser()
    if local.is_file():
        digest = hashlib.sha256()
        with local.open("rb") as file:
            for block in iter(lambda: file.read(2**20), b""):
                digest.update(block)
        return digest.hexdigest()[:16]
    cached = try_to_load_from_cache(lora.source, lora.weight_name or _DEFAULT_WEIGHT_NAME)
    return Path(cached).parent.name if isinstance(cached, str) else "unknown"


class Adapters:
    """The LoRAs loaded on one model's pipeline, by catalogue name -> revision."""

    def __init__(self) -> None:
        self.loaded: dict[str, str] = {}

    def apply(self, pipe: Any, loras: Sequence[tuple[LoraEntry, float]]) -> None:
        """Turn on exactly `loras` at their weights (loading any not yet loaded); none: all off."""
        for lora, _ in loras:
            if lora.name not in self.loaded:
                self._load(pipe, lora)
        if loras:
            pipe.enable_lora()
            pipe.set_adapters([lora.name for lora, _ in loras], [weight for _, weight in loras])
        elif self.loaded:
            pipe.disable_lora()

    def _load(self, pipe: Any, lora: LoraEntry) -> None:
        started = time.perf_counter()
        if getattr(pipe, "fusing_unet", False) or getattr(pipe, "fusing_vae", False):
            # LoRAs on to_q/to_k/to_v would be bypassed by the fused to_qkv projection.
            pipe.unfuse_qkv_projections()
            log.info("QKV projections unfused so LoRAs apply to them")
        options = {"weight_name": lora.weight_name} if lora.weight_name else {}
        try:
            pipe.load_lora_weights(str(Path(lora.source).expanduser()) if Path(lora.source).expanduser().is_file()
                                   else lora.source, adapter_name=lora.name, **options)
        except Exception as error:  # noqa: BLE001 - any failure is one line naming the LoRA
            text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelLoadError(f"could not load LoRA {lora.name} ({lora.source}): {text}") from None
        self.loaded[lora.name] = lora_revision(lora)
        log.info("loaded LoRA %s from %s in %.2f s", lora.name, lora.source, time.perf_counter() - started)

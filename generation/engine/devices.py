"""Which torch device and dtype the engine runs on, and how that device reports running out of memory."""

from __future__ import annotations

import gc

import torch

from generation.catalogue import family_of
from generation.errors import ModelLoadError


def resolve_device(setting: str) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an explicit device must exist."""
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"SDBOT_DEVICE={setting!r}, but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ModelLoadError(
            f"SDBOT_DEVICE={setting!r}, but torch sees only {torch.cuda.device_count()} CUDA GPU(s)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"SDBOT_DEVICE={setting!r}, but MPS is not available; use 'auto' or 'cpu'")
    return device


# Pipeline families trained in bf16, whose activations can overflow fp16 (FLUX; SD3.5, whose model
# cards load it in bf16): bf16 has fp32's range at fp16's speed on CUDA.
_BF16_FAMILIES = frozenset({"flux", "sd3"})


def dtype_for(device: torch.device, pipeline_class: str | None = None) -> torch.dtype:
    """Half precision on accelerators (half the memory, tensor cores): bf16 on CUDA for the families
    that need its range (`pipeline_class` as model_index.json names it, e.g. "FluxPipeline"),
    else fp16. CPUs are fastest in fp32."""
    if device.type == "cpu":
        return torch.float32
    if device.type == "cuda" and pipeline_class is not None and family_of(pipeline_class) in _BF16_FAMILIES:
        return torch.bfloat16
    return torch.float16


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises its own error type; MPS raises a RuntimeError whose message says so."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_memory(device: torch.device) -> None:
    """Return cached blocks to the driver so the next, smaller batch can fit."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def gpu_memory_bytes() -> int:
    """CUDA memory this process holds in tensors, over all devices; 0 before CUDA is used."""
    if not torch.cuda.is_initialized():
        return 0
    return sum(torch.cuda.memory_allocated(index) for index in range(torch.cuda.device_count()))

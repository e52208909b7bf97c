"""The GPU fast path applied to a loaded pipeline: fused QKV projections, channels_last and
`torch.compile` of the denoiser and the VAE decoder (SDPA attention is diffusers' default)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from generation.engine.config import EngineConfig

log = logging.getLogger(__name__)

# A compiled graph per (size, batch bucket): dynamo's default limit of 8 would silently fall back
# to eager once the warm-up has filled it.
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class FastPath:
    """What was applied; `compiled` tells the engine to pad batches to buckets and warm them up."""

    compiled: bool
    applied: tuple[str, ...]


def wanted(setting: Literal["auto", "on", "off"], device: torch.device) -> bool:
    """`auto` means on where it pays off: CUDA."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def denoiser(pipe: Any) -> torch.nn.Module:
    """The UNet (SD, SDXL) or transformer (Flux, SD3) of a pipeline."""
    module = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if module is None:
        raise ValueError(f"{type(pipe).__name__} has neither a UNet nor a transformer")
    return module


def apply_fast_path(pipe: Any, config: EngineConfig, device: torch.device) -> FastPath:
    """Change `pipe`'s modules in place (the image-to-image pipeline shares them)."""
    applied: list[str] = []
    model = denoiser(pipe)
    vae = pipe.vae
    if wanted(config.fast_path, device):
        if hasattr(pipe, "unet") and hasattr(pipe, "fuse_qkv_projections"):
            pipe.fuse_qkv_projections()  # UNet and VAE attention
            applied.append("fused QKV")
        elif hasattr(model, "fuse_qkv_projections") and not getattr(model.config, "dual_attention_layers", ()):
            # Not SD3.5 medium's MMDiT-X: diffusers' fused joint-attention processor would also take
            # its extra self-attention, which has no text stream, and fail at the first step.
            model.fuse_qkv_projections()
            applied.append("fused QKV")
        # Convolutions run fastest in NHWC on tensor cores; linear-only modules are unchanged.
        model.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    # Only the SDXL pipelines honour force_upcast (a whole fp32 VAE decode per call).
    if "XL" in type(pipe).__name__ and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        log.warning(
            "the VAE of %s asks for fp32 (force_upcast), so every decode is upcast; an fp16-fix VAE "
            "(madebyollin/sdxl-vae-fp16-fix for SDXL) avoids it",
            config.model_id,
        )
    compiled = wanted(config.compile, device)
    if compiled:
        if device.type != "cuda":
            log.info("SDBOT_COMPILE=on on %s: compiling, though it mainly pays off on CUDA", device.type)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
        # Static shapes: batches are padded to buckets (generation.engine.buckets), one graph each.
        options: dict[str, Any] = {"dynamic": False, "backend": config.compile_backend}
        if getattr(model, "_repeated_blocks", None) and not hasattr(pipe, "unet"):
            # Regional: one transformer block compiled and reused, a far shorter cold start.
            model.compile_repeated_blocks(fullgraph=True, **options)
        else:
            model.compile(**options)
        vae.decoder.compile(**options)
        applied.append(f"torch.compile ({config.compile_backend})")
    log.info("fast path on %s: %s", device, ", ".join(applied) or "off")
    return FastPath(compiled, tuple(applied))

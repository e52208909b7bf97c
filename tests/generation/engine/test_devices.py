"""Device choice, precision and out-of-memory recognition, as an operator's settings meet this machine."""

from __future__ import annotations

import pytest
import torch

from generation.engine.devices import dtype_for, is_out_of_memory, resolve_device
from generation.engine.pipelines import pipeline_class
from generation.engine.tiny_models import TinyModelPaths
from generation.errors import ModelLoadError


def test_auto_falls_back_to_the_cpu_here_and_the_cpu_runs_in_fp32() -> None:
    assert not torch.cuda.is_available()  # this suite runs on CPU machines
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    assert dtype_for(torch.device("cpu")) is torch.float32
    assert dtype_for(torch.device("cuda")) is torch.float16


def test_flux_and_sd3_run_in_bf16_on_cuda_where_fp16_would_overflow(tiny_models: TinyModelPaths) -> None:
    assert dtype_for(torch.device("cuda"), "FluxPipeline") is torch.bfloat16
    assert dtype_for(torch.device("cuda"), "FluxImg2ImgPipeline") is torch.bfloat16
    assert dtype_for(torch.device("cpu"), "FluxPipeline") is torch.float32
    assert dtype_for(torch.device("cuda"), pipeline_class(str(tiny_models.sd3))) is torch.bfloat16
    # The family is read from the model folder, as the engine does before loading.
    family = pipeline_class(str(tiny_models.pipeline))
    assert family == "StableDiffusionPipeline"
    assert dtype_for(torch.device("cuda"), family) is torch.float16
    assert pipeline_class("/nonexistent/model") is None


@pytest.mark.parametrize(("setting", "message"), [
    ("cuda", "SDBOT_DEVICE='cuda', but torch sees no CUDA GPU; use 'auto' or 'cpu'"),
    ("cuda:1", "SDBOT_DEVICE='cuda:1', but torch sees no CUDA GPU"),
])
def test_a_missing_gpu_is_named_not_crashed_on(setting: str, message: str) -> None:
    with pytest.raises(ModelLoadError) as refused:
        resolve_device(setting)
    assert str(refused.value).startswith(message)


def test_out_of_memory_is_recognised_from_cuda_and_mps_errors_only() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(MemoryError())

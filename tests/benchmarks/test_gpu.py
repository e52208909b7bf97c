"""`python -m benchmarks.gpu`: the shapes build with the published sizes, and the CPU smoke run
(`--shape tiny --quick`) reports every mode with sane numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.gpu import MODES, build_pipeline, main

# Parameters in millions, as the model repositories publish them (see benchmarks/shapes/).
PUBLISHED = {
    "sd-turbo": {"unet": 865.9, "vae": 83.7, "text_encoder": 340.4},
    "sdxl-turbo": {"unet": 2567.5, "text_encoder_2": 694.7, "vae": 83.7},
    "flux-schnell": {"transformer": 11891.2, "text_encoder_2": 4762.3},
}


@pytest.mark.parametrize("shape", sorted(PUBLISHED))
def test_full_size_shapes_build_with_the_published_sizes(shape: str) -> None:
    # On the meta device: the real architecture, no memory, no time.
    pipe = build_pipeline(shape, torch.device("meta"), torch.float16)
    for name, millions in PUBLISHED[shape].items():
        module = getattr(pipe, name)
        assert round(sum(p.numel() for p in module.parameters()) / 1e6, 1) == millions
        assert module.dtype == torch.float16
    if shape == "sdxl-turbo":
        assert pipe.vae.config.force_upcast is False  # the fp16-fix VAE


@pytest.mark.timeout(170)
def test_tiny_quick_run_reports_every_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "report.json"
    result = main(["--shape", "tiny", "--quick", "--device", "cpu", "--json", str(path), "--repeats", "2",
                   "--worker-rounds", "2"])

    report = json.loads(path.read_text())
    assert report == json.loads(json.dumps(result))
    assert report["device"] == "cpu" and report["peak_tflops"] is None
    tiny = report["shapes"]["tiny"]
    assert tiny["skipped"] == []
    rows = tiny["rows"]
    assert {(row["mode"], row["batch"]) for row in rows} == {(mode, batch) for mode in MODES for batch in (1, 4)}
    for row in rows:
        assert (row["size"], row["steps"]) == (64, 1)
        assert 0 < row["images_per_s"] < 10_000
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p95"] < 60_000
        assert "peak_gpu_gib" not in row  # CUDA only
    (flops,) = tiny["flops"]
    assert 1e-4 < flops["tflop_per_image"] < 1e-3  # 0.25 GFLOP: the tiny UNet, VAE decoder, text encoder
    assert flops["tflop_by_module"]["UNet2DConditionModel"] < flops["tflop_per_image"]
    ratios = {ratio["batch"]: ratio for ratio in tiny["ratios"]}
    assert set(ratios[4]) >= {"c_over_a", "b_over_a", "c_over_b", "d_over_b"}
    assert all(0 < ratios[4][key] < 10 for key in ("c_over_a", "d_over_b"))
    table = capsys.readouterr().out
    assert "tiny | c_engine | 64 | 1 | 4 |" in table and "c_over_a" in table


def test_flux_without_a_gpu_is_skipped_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    main(["--shape", "flux-schnell", "--device", "cpu", "--json", str(path)])
    flux = json.loads(path.read_text())["shapes"]["flux-schnell"]
    assert flux["rows"] == [] and flux["skipped"] == ["flux-schnell needs a CUDA GPU"]

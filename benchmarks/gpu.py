"""GPU speed on a bare box: full-size pipelines with random weights, built from the model configs in
benchmarks/shapes/ (no hub, no weights), timed four ways.

    python -m benchmarks.gpu                     # sd-turbo, sdxl-turbo, flux-schnell; < 8 min on one GPU
    python -m benchmarks.gpu --quick             # sd-turbo 512x512, 1 step, batch 4; < 3 min
    python -m benchmarks.gpu --shape tiny --quick --device cpu   # CI smoke test of the code path

Modes, per (shape, size, steps, batch), after warm-up:
  a  the bare diffusers pipeline call, eager;
  b  the same pipeline with the engine's fast path (generation.engine.fast_path);
  c  the project's engine end to end (DiffusionEngine.run_batch: safety check, NSFW handling, PNG
     with metadata, the record), loaded by the production code from a save_pretrained folder;
  d  the worker (JobScheduler + LocalRunner + a real Store) under a queue that never empties.
Timed with CUDA events on CUDA, perf_counter elsewhere. FLOPs per image come from torch's
FlopCounterMode on one eager batch-1 call; the achieved fraction of peak uses the table below.
The run keeps to a time budget: rows that would start after it are reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # see benchmarks/generation.py

import diffusers
import torch
import transformers
from diffusers.pipelines.stable_diffusion.safety_checker import (
    StableDiffusionSafetyChecker,
)
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPConfig, CLIPImageProcessor

from generation.engine.config import EngineConfig
from generation.engine.diffusion import VERSIONS, DiffusionEngine
from generation.engine.fast_path import apply_fast_path
from generation.engine.tiny_models import byte_tokenizer
from generation.jobs.runners import LocalRunner
from generation.jobs.scheduler import JobScheduler
from sdbot.settings import Settings
from sdbot.store import Store
from sdbot.types import (
    GenerationParams,
    ImageRow,
    JobKind,
    JobOutput,
    JobRow,
    JobStatus,
    NewJob,
    PipelineKind,
)

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"
SHAPES = ("sd-turbo", "sdxl-turbo", "flux-schnell", "tiny")
MODES = ("a_bare_eager", "b_fast_path", "c_engine", "d_worker")
SAFETY_CHECKER = {"tiny": "tiny-safety-checker"}  # others: the CompVis checker (CLIP ViT-L/14)
VAE = {"sdxl-turbo": "sdxl-vae-fp16-fix"}  # no fp32 upcast of the VAE on every call
HALF = {"flux-schnell": torch.bfloat16}  # Flux overflows in fp16; the others run in fp16
# Flux at bf16: 23.8 GB transformer + 9.5 GB T5 + activations. Saving it for modes c and d would
# write 34 GB of random weights, most of a short GPU rental, so those modes are left to sd/sdxl.
FLUX_NEEDS_GIB = 40
NO_ENGINE = {"flux-schnell": "saving 34 GB of random weights for the engine would take most of the time budget"}
# Dense fp16/bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets. Longer
# names first: "H100 PCIe" must not match "H100".
PEAK_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("4090", 165.2),  # fp32 accumulate, as PyTorch uses
)
SUBJECTS = ["lighthouse", "red fox", "castle", "harbour", "forest path", "robot", "teapot", "mountain lake"]


@dataclass(frozen=True)
class Grid:
    sizes: tuple[int, ...]
    steps: tuple[int, ...]
    batches: tuple[int, ...]


def grid(shape: str, quick: bool) -> Grid:
    if shape == "tiny":
        return Grid((64,), (1,), (1, 4) if quick else (1, 4, 8))
    if quick:  # one compile per mode: the headline point
        return Grid((1024,) if shape == "flux-schnell" else (512,), (1,), (4,))
    sizes = (512,) if shape == "sd-turbo" else (512, 1024)
    return Grid(sizes, (1, 4), (1, 4, 8))


@dataclass
class Clock:
    """Times calls with CUDA events on CUDA (GPU time, no host sync in between) or perf_counter."""

    device: torch.device
    deadline: float
    repeats: int

    def time(self, call: Callable[[], Any], warm_ups: int = 1) -> list[float]:
        for _ in range(warm_ups):
            call()
        seconds = []
        for _ in range(self.repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                end.synchronize()
                seconds.append(start.elapsed_time(end) / 1000)
            else:
                started = time.perf_counter()
                call()
                seconds.append(time.perf_counter() - started)
        return seconds

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline


@dataclass
class Report:
    rows: list[dict[str, Any]] = field(default_factory=list)
    flops: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse_args(argv)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    shapes = args.shape or (["sd-turbo"] if args.quick else ["sd-turbo", "sdxl-turbo", "flux-schnell"])
    budget = args.budget_s or (150 if args.quick else 420)
    clock = Clock(device, time.monotonic() + budget, args.repeats or (3 if device.type == "cpu" else 7))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((tflops for key, tflops in PEAK_TFLOPS if key in name), None)
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": name,
        "peak_tflops": peak,
        "quick": args.quick,
        "compile": args.compile,
        "versions": VERSIONS,
        "shapes": {},
    }
    started = time.monotonic()
    for shape in shapes:
        _log(f"{shape}: building on {device}")
        report = Report()
        result["shapes"][shape] = report
        if skip := _cannot_run(shape, device):
            report.skipped.append(skip)
            _log(f"{shape}: skipped, {skip}")
            continue
        try:
            _bench_shape(shape, grid(shape, args.quick), device, clock, args, report)
        except torch.cuda.OutOfMemoryError as error:
            report.skipped.append(f"out of GPU memory: {str(error).splitlines()[0]}")
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for row in report.rows:
            tflop = next((f["tflop_per_image"] for f in report.flops if _same_point(f, row)), None)
            if peak and tflop and row.get("images_per_s"):
                row["achieved_peak_fraction"] = round(tflop * row["images_per_s"] / peak, 3)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["shapes"] = {
        shape: {"rows": r.rows, "flops": r.flops, "skipped": r.skipped, "ratios": _ratios(r.rows)}
        for shape, r in result["shapes"].items()
    }
    print(table(result))
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return result


def _cannot_run(shape: str, device: torch.device) -> str | None:
    if shape != "flux-schnell":
        return None
    if device.type != "cuda":
        return "flux-schnell needs a CUDA GPU"
    free = torch.cuda.mem_get_info(device)[0] / 2**30
    if free < FLUX_NEEDS_GIB:
        return f"flux-schnell needs about {FLUX_NEEDS_GIB} GiB of free GPU memory, {free:.0f} GiB is free"
    return None


def _bench_shape(shape: str, points: Grid, device: torch.device, clock: Clock, args: argparse.Namespace,
                 report: Report) -> None:
    dtype = torch.float32 if device.type == "cpu" else HALF.get(shape, torch.float16)
    config = _engine_config(shape, device, args.compile)
    engine_reason = NO_ENGINE.get(shape)
    with tempfile.TemporaryDirectory(prefix=f"sdbot-gpu-{shape}-") as folder:
        saved = None if engine_reason else Path(folder)
        _bare_modes(shape, points, device, dtype, clock, config, saved, report)
        gc.collect()  # the bare pipeline is gone: its memory is the engine's now
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if engine_reason is not None:
            report.skipped.append(f"modes c and d: {engine_reason}")
            return
        engine = DiffusionEngine.load(config.model_copy(update={
            "model_id": str(Path(folder) / "pipeline"), "safety_model_id": str(Path(folder) / "safety-checker")}))
        for size, steps, batch in _points(points):
            jobs = _params(size, steps, batch)
            _row(report, clock, "c_engine", size, steps, batch, device,
                 partial(engine.run_batch, jobs, lambda step, total: None, lambda: False))
        for size, steps, batch in _points(points):
            if clock.out_of_time():
                report.skipped.append(f"d_worker {size}px {steps} step(s) batch {batch}: time budget")
                continue
            _reset_peak(device)
            row = asyncio.run(_worker_row(engine, Path(folder), size, steps, batch, args.worker_rounds))
            report.rows.append(row | _peak(device))
            _log(f"d_worker {size}px {steps} step(s) batch {batch}: {row['images_per_s']} images/s")


def _bare_modes(shape: str, points: Grid, device: torch.device, dtype: torch.dtype, clock: Clock,
                config: EngineConfig, save_to: Path | None, report: Report) -> None:
    """FLOPs, then modes a and b on one pipeline, saved first for the engine when `save_to` is given
    (before the fast path changes its modules)."""
    pipe = build_pipeline(shape, device, dtype)
    if save_to is not None:
        _log(f"{shape}: saving for the engine in {save_to}")
        pipe.save_pretrained(save_to / "pipeline")
        save_safety_checker(shape, save_to / "safety-checker", device, dtype)
    for size in points.sizes:
        for steps in points.steps:
            report.flops.append(_flops(pipe, size, steps))
    for mode in ("a_bare_eager", "b_fast_path"):
        if mode == "b_fast_path":
            applied = apply_fast_path(pipe, config, device)
            _log(f"{shape}: fast path {', '.join(applied.applied) or 'off'}")
        for size, steps, batch in _points(points):
            _row(report, clock, mode, size, steps, batch, device, partial(_bare_call, pipe, size, steps, batch))


def build_pipeline(shape: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The pipeline of `shape` from its configs, weights normal(0, 0.02) made on `device` in
    `dtype`, tokenizers built in code (prompts are padded to a fixed length either way)."""
    folder = SHAPES_DIR / shape
    index = json.loads((folder / "model_index.json").read_text())
    components: dict[str, Any] = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list):
            continue
        library, class_name = spec
        if class_name is None:
            components[name] = None
        elif name.startswith("tokenizer"):
            components[name] = byte_tokenizer()
        elif name == "scheduler":  # host tensors in fp32, as diffusers expects
            scheduler_class = getattr(diffusers, class_name)
            components[name] = scheduler_class.from_config(_json(folder / name / "scheduler_config.json"))
        else:
            source = SHAPES_DIR / VAE[shape] if name == "vae" and shape in VAE else folder / name
            components[name] = _random_module(library, class_name, source / "config.json", device, dtype)
    pipeline_class = getattr(diffusers, index["_class_name"])
    extra = {"requires_safety_checker": False} if "safety_checker" in components else {}
    pipe = pipeline_class(**components, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_safety_checker(shape: str, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
    """The shape's safety checker with random weights and thresholds that flag nothing (so every
    image is PNG-encoded, as most images are in service)."""
    source = SHAPES_DIR / SAFETY_CHECKER.get(shape, "safety-checker")
    with _building(device, dtype):
        checker = StableDiffusionSafetyChecker(CLIPConfig.from_json_file(source / "config.json")).eval()
        _randomise(checker)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(1.0)  # a cosine similarity never exceeds 1
        checker.special_care_embeds_weights.fill_(1.0)
    checker.save_pretrained(folder)
    CLIPImageProcessor.from_pretrained(source).save_pretrained(folder)


def _random_module(library: str, class_name: str, config_path: Path, device: torch.device,
                   dtype: torch.dtype) -> torch.nn.Module:
    module_class = getattr(diffusers if library == "diffusers" else transformers, class_name)
    with _building(device, dtype):
        if library == "diffusers":
            module = module_class.from_config(_json(config_path))
        else:
            module = module_class(module_class.config_class.from_json_file(config_path))
        _randomise(module)
    if module.dtype != dtype:  # a class that pins a dtype of its own
        module.to(dtype)
    return module.eval()


def _randomise(module: torch.nn.Module) -> None:
    # Small weights: fp16 activations stay finite through every layer (speed does not depend on them).
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.02)


@contextmanager
def _building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New modules are allocated on `device` in `dtype` directly (no fp32 copy on the host)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _points(points: Grid) -> Iterator[tuple[int, int, int]]:
    for size in points.sizes:
        for steps in points.steps:
            for batch in points.batches:
                yield size, steps, batch


def _prompts(batch: int) -> list[str]:
    return [f"a photo of a {SUBJECTS[index % len(SUBJECTS)]}, detailed" for index in range(batch)]


def _bare_call(pipe: Any, size: int, steps: int, batch: int) -> Any:
    with torch.inference_mode():
        return pipe(
            prompt=_prompts(batch),
            num_inference_steps=steps,
            guidance_scale=0.0,  # turbo and schnell: no classifier-free guidance
            width=size,
            height=size,
            generator=[torch.Generator("cpu").manual_seed(1000 + index) for index in range(batch)],
            output_type="pil",
        )


def _params(size: int, steps: int, batch: int) -> list[GenerationParams]:
    """`batch` one-image jobs with different prompts and seeds, as the worker batches them."""
    return [
        GenerationParams(pipeline=PipelineKind.TEXT2IMG, prompt=prompt, seeds=(1000 + index,), steps=steps,
                         guidance=0.0, width=size, height=size)
        for index, prompt in enumerate(_prompts(batch))
    ]


def _flops(pipe: Any, size: int, steps: int) -> dict[str, Any]:
    """Model FLOPs of one image (eager, batch 1), in total and per top-level module."""
    counter = FlopCounterMode(display=False)
    with counter:
        _bare_call(pipe, size, steps, 1)
    modules = {
        name: _tera(count)
        for name, count in ((name, sum(ops.values())) for name, ops in counter.get_flop_counts().items())
        if "." not in name and name != "Global"
    }
    return {"size": size, "steps": steps, "tflop_per_image": _tera(counter.get_total_flops()),
            "tflop_by_module": modules}


def _tera(count: int) -> float:
    return float(f"{count / 1e12:.4g}")


def _row(report: Report, clock: Clock, mode: str, size: int, steps: int, batch: int, device: torch.device,
         call: Callable[[], Any]) -> None:
    if clock.out_of_time():
        report.skipped.append(f"{mode} {size}px {steps} step(s) batch {batch}: time budget")
        return
    _reset_peak(device)
    try:
        seconds = clock.time(call, warm_ups=2)  # the first call of a compiled bucket compiles
    except torch.cuda.OutOfMemoryError:
        report.skipped.append(f"{mode} {size}px {steps} step(s) batch {batch}: out of GPU memory")
        gc.collect()
        torch.cuda.empty_cache()
        return
    row = {"mode": mode, "size": size, "steps": steps, "batch": batch,
           "images_per_s": round(batch / statistics.median(seconds), 3), **_latency(seconds)}
    report.rows.append(row | _peak(device))
    _log(f"{mode} {size}px {steps} step(s) batch {batch}: {row['images_per_s']} images/s")


def _latency(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"latency_ms_p50": round(1000 * statistics.median(ordered), 2), "latency_ms_p95": round(1000 * p95, 2)}


class _Finishes:
    """A JobListener that notes when each job finished."""

    def __init__(self) -> None:
        self.finished: list[tuple[float, JobRow]] = []

    async def job_started(self, job: JobRow) -> None:
        pass

    def job_progress(self, job_id: int, step: int, total: int) -> None:
        pass

    async def job_finished(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> None:
        self.finished.append((time.perf_counter(), job))


async def _worker_row(engine: DiffusionEngine, folder: Path, size: int, steps: int, batch: int,
                      rounds: int) -> dict[str, Any]:
    """One-image jobs from as many members, all queued before the worker starts, so every batch
    it takes is full: images/s over the whole drain, p50/p95 of the time between batches."""
    count = batch * (rounds + 1)  # the first round warms up and is not counted
    settings = Settings(output_dir=folder / "images", max_batch=batch, queue_capacity=count,
                        max_queued_per_user=count, job_timeout_s=600.0, progress_interval_s=0.0)
    store = await Store.open(folder / f"worker-{size}-{steps}-{batch}.sqlite3", default_daily_quota=count)
    listener = _Finishes()
    runner = LocalRunner(engine)
    scheduler = JobScheduler(settings, store, [runner], listener)
    try:
        for index, params in enumerate(_params(size, steps, count)):
            await scheduler.submit(NewJob(kind=JobKind.IMAGINE, guild_id=1, channel_id=1, user_id=index + 1,
                                          params=params, model_id=engine.model_id))
        await scheduler.start()
        while len(listener.finished) < count:
            await asyncio.sleep(0.001)
    finally:
        await scheduler.stop(grace_s=1.0)
        await store.close()
    failed = [job.id for _, job in listener.finished if job.status != JobStatus.DONE]
    if failed:
        raise RuntimeError(f"the worker did not finish jobs {failed}")
    times = [moment for moment, _ in listener.finished][batch - 1 :: batch]  # each batch's last job
    gaps = [later - earlier for earlier, later in pairwise(times)]
    return {"mode": "d_worker", "size": size, "steps": steps, "batch": batch,
            "images_per_s": round(batch * len(gaps) / (times[-1] - times[0]), 3), **_latency(gaps)}


def _engine_config(shape: str, device: torch.device, compile_setting: str) -> EngineConfig:
    return EngineConfig(model_id=shape, safety_model_id="", upscaler_model_id="none", device=str(device),
                        compile=compile_setting, fast_path="on")


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}


def _same_point(flops: dict[str, Any], row: dict[str, Any]) -> bool:
    return flops["size"] == row["size"] and flops["steps"] == row["steps"]


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (size, steps, batch): c/a (the engine over bare eager diffusers), b/a (the fast path's
    gain), c/b (engine overhead) and d/b (the worker under a full queue)."""
    by_point: dict[tuple[int, int, int], dict[str, float]] = {}
    for row in rows:
        by_point.setdefault((row["size"], row["steps"], row["batch"]), {})[row["mode"]] = row["images_per_s"]
    ratios = []
    for (size, steps, batch), speeds in by_point.items():
        entry: dict[str, Any] = {"size": size, "steps": steps, "batch": batch}
        for label, top, bottom in (("c_over_a", "c_engine", "a_bare_eager"), ("b_over_a", "b_fast_path", "a_bare_eager"),
                                   ("c_over_b", "c_engine", "b_fast_path"), ("d_over_b", "d_worker", "b_fast_path")):
            if top in speeds and bottom in speeds:
                entry[label] = round(speeds[top] / speeds[bottom], 3)
        ratios.append(entry)
    return ratios


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['device_name']} ({result['device']}), compile={result['compile']}, "
             f"peak {result['peak_tflops'] or '?'} TFLOP/s, {result['seconds']} s"]
    header = "shape | mode | size | steps | batch | images/s | p50 ms | p95 ms | peak GiB | TFLOP/img | of peak"
    for shape, report in result["shapes"].items():
        lines += ["", header, " | ".join("---" for _ in header.split(" | "))]
        for row in report["rows"]:
            tflop = next((f["tflop_per_image"] for f in report["flops"] if _same_point(f, row)), "")
            fraction = row.get("achieved_peak_fraction")
            lines.append(" | ".join(str(cell) for cell in (
                shape, row["mode"], row["size"], row["steps"], row["batch"], row["images_per_s"],
                row["latency_ms_p50"], row["latency_ms_p95"], row.get("peak_gpu_gib", ""), tflop,
                f"{100 * fraction:.1f}%" if fraction is not None else "")))
        for ratio in report["ratios"]:
            cells = ", ".join(f"{key} {value}" for key, value in ratio.items() if "_over_" in key)
            lines.append(f"{shape} {ratio['size']}px {ratio['steps']} step(s) batch {ratio['batch']}: {cells}")
        lines += [f"{shape}: skipped {reason}" for reason in report["skipped"]]
    return "\n".join(lines)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shape", action="append", choices=SHAPES, help="repeatable; default: all but tiny")
    parser.add_argument("--quick", action="store_true", help="a small grid: under 3 minutes on one GPU")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="SDBOT_COMPILE for modes b-d (auto: on with CUDA)")
    parser.add_argument("--json", help="write the JSON report here instead of stdout")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 7, CPU 3)")
    parser.add_argument("--worker-rounds", type=int, default=4, help="full batches timed in mode d")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no row after this many seconds (default 420, --quick 150)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()

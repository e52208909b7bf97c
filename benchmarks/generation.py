"""Throughput of the generation engine: N one-image jobs run in batches of each --batch size, the
time split by stage, and the engine's overhead over a bare diffusers call.

    python -m benchmarks.generation                       # tiny random model, a few seconds
    python -m benchmarks.generation --model sd-turbo-shaped --device cuda --batch 1 4 --steps 1 4

`sd-turbo-shaped` builds SD-Turbo's architecture (SD 2.1-base UNet, VAE and OpenCLIP-H text encoder,
ViT-L/14 safety checker) with random weights: the same compute as the real model, no download.

Stages: text encoding, denoising (UNet) and VAE decode are timed by wrapping those modules (with a
device sync around each, in a separate pass so the throughput figures are unaffected); safety check
and encoding (PNG with metadata) come from the engine's own `last_timings`. Overhead compares the
engine's time without safety and encoding to one bare `pipe(...)` call with the same prompts,
generators and settings: it is what validation, token counting, step callbacks and records cost.

Live previews (issue 13): one batch of --preview-batch images at --preview-steps steps, timed with
previews off, at SDBOT_PREVIEW_INTERVAL_S's default (1.5 s) and at every step (the worst case),
each on its own engine loaded from the same folder. A preview costs one TAESD decode and a safety
check of the batch; `per_preview_ms` divided by the interval bounds the overhead of long jobs.

Prompt encoding (issue 17): `encode_batch` of a plain short prompt against a weighted prompt of
about 300 tokens (four CLIP chunks), and the extra cost as a share of one 4-step image at the
benchmark size.

/describe (issue 19): latency of one caption job (first /describe: three beam-searched captions and
one sampled; 🔄: four sampled) on a 512x384 picture, the model's first load timed apart. The tiny
random Florence-2 by default; `--describe-model florence-community/Florence-2-base` (or a folder)
measures the real one.

Edits (issue 12): a 4-image Zoom Out 2x and Pan right of a benchmark-size picture through the
engine, against one bare call of the same inpainting pipeline with the same canvas, mask, prompt,
generators and steps; the difference is what placing the source, the masks and the paste-back cost
(with the engine's other plumbing), and `prepare_paste_ms` times those geometry steps alone.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import torch
from PIL import Image

if __name__ == "__main__" and not __package__:
    # Run as `python benchmarks/generation.py`, this file's folder comes first on sys.path and this
    # module would shadow the `generation` package; put the repository root there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from generation import requests
from generation.engine.config import EngineConfig
from generation.engine.diffusion import VERSIONS, DiffusionEngine
from generation.engine.inpaint import prepare
from generation.engine.prompt_embeds import count_tokens, encode_batch
from generation.engine.tiny_models import make_tiny_models
from generation.requests import RequestLimits
from sdbot.types import GenerationParams, PipelineKind

SUBJECTS = ["lighthouse", "red fox", "castle", "harbour", "forest path", "robot", "teapot", "mountain lake"]
STAGES = ("text_encoding", "denoising", "vae_decode", "safety", "encode", "other")
PLAIN_PROMPT = "a photo of a lighthouse, detailed"
WEIGHTED_PHRASES = ["(masterpiece:1.2)", "((detailed eyes))", "[blurry]", "a (red fox:1.3) in the snow",
                    "soft morning light", "(film grain:0.8)", "tall pine trees", "[[watermark]]"]
WEIGHTED_TOKENS = 300


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sdbot-bench-") as folder:
        shape = "tiny" if args.model == "tiny" else "sd-turbo"
        print(f"building the {args.model} model in {folder} ...", file=sys.stderr)
        paths = make_tiny_models(Path(folder), shape=shape)
        describer = {"describe_model_id": args.describe_model} if args.describe_model else {}
        engine = DiffusionEngine.load(paths.engine_config(device=args.device, **describer))
        size = args.size or engine.native_size
        rows = [
            _measure(engine, size, batch, steps, args.jobs, args.repeats)
            for steps in args.steps
            for batch in args.batch
        ]
        encoding = _prompt_encoding(engine, size, args.repeats)
        previews = _previews(
            paths.engine_config(device=args.device), size, args.preview_batch, args.preview_steps, args.repeats
        )
        describe = _describe_latency(engine, min(args.repeats, 3))
        edits = _edits(engine, size, args.repeats)
    report = {
        "model": args.model,
        "device": engine.device,
        "dtype": engine.dtype,
        "size": size,
        "jobs": args.jobs,
        "versions": VERSIONS,
        "rows": rows,
        "prompt_encoding": encoding,
        "previews": previews,
        "describe": describe,
        "edits": edits,
    }
    print(_table(report))
    print(
        f"prompt encoding: plain {encoding['plain_ms']} ms, {encoding['weighted_tokens']}-token weighted "
        f"{encoding['weighted_ms']} ms; the difference is {encoding['extra_pct_of_4_step_image']}% of a "
        f"4-step {size}x{size} image ({encoding['image_4_steps_ms']} ms)"
    )
    print(_preview_table(previews, size))
    print(
        f"describe ({describe['model']}): first load {describe['load_s']} s; a /describe "
        f"{describe['first_ms']} ms, a 🔄 {describe['more_ms']} ms (best of {describe['repeats']})"
    )
    for name, edit in edits.items():
        print(
            f"{name}: 4 images {edit['canvas']} in {edit['engine_ms']} ms, bare inpainting call {edit['bare_ms']} ms, "
            f"overhead {edit['overhead_pct']}% (placing, masks and paste-back alone {edit['prepare_paste_ms']} ms)"
        )
    print(json.dumps(report, indent=2))


def _describe_latency(engine: DiffusionEngine, repeats: int) -> dict[str, Any]:
    """Seconds to load the captioner (its first job minus a warm one), then best-of-`repeats` ms of
    a first /describe and of a 🔄."""
    picture = io.BytesIO()
    Image.new("RGB", (512, 384), (40, 90, 160)).save(picture, format="PNG")
    limits = RequestLimits(min_size=64, max_size=1024, max_steps=50, max_count=4, max_prompt_chars=1000)
    first = requests.describe(limits, engine.native_size, 512, 384).model_copy(
        update={"source_image": picture.getvalue(), "seeds": (1,)}
    )
    more = first.model_copy(update={"steps": requests.DESCRIBE_SUGGESTIONS})

    def run(params: GenerationParams) -> float:
        started = time.perf_counter()
        engine.run_batch([params], lambda step, total: None, lambda: False)
        return time.perf_counter() - started

    cold = run(first)
    first_s = min(run(first) for _ in range(repeats))
    more_s = min(run(more) for _ in range(repeats))
    return {
        "model": engine.config.describe_model_id,
        "load_s": round(max(0.0, cold - first_s), 2),
        "first_ms": round(1000 * first_s, 1),
        "more_ms": round(1000 * more_s, 1),
        "repeats": repeats,
    }


def _measure(engine: DiffusionEngine, size: int, batch: int, steps: int, jobs: int, repeats: int) -> dict[str, Any]:
    params = [
        GenerationParams(
            pipeline=PipelineKind.TEXT2IMG,
            prompt=f"a photo of a {SUBJECTS[index % len(SUBJECTS)]}, detailed",
            seeds=(1000 + index,),
            steps=steps,
            guidance=0.0,
            width=size,
            height=size,
        )
        for index in range(jobs)
    ]
    groups = [params[start : start + batch] for start in range(0, jobs, batch)]
    sync = _synchronizer(engine)

    def engine_pass() -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for group in groups:
            engine.run_batch(group, lambda step, total: None, lambda: False)
            sync()
            for key, seconds in engine.last_timings.items():
                totals[key] += seconds
        return totals

    def bare_pass() -> float:
        pipe = engine.text2img_pipeline  # the very modules the engine uses
        started = time.perf_counter()
        for group in groups:
            with torch.inference_mode():
                pipe(
                    prompt=[job.prompt for job in group],
                    negative_prompt=[job.negative_prompt for job in group],
                    num_inference_steps=steps,
                    guidance_scale=0.0,
                    width=size,
                    height=size,
                    generator=[torch.Generator("cpu").manual_seed(job.seeds[0]) for job in group],
                    output_type="pil",
                )
        sync()
        return time.perf_counter() - started

    if engine.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    engine_pass()  # warm-up: kernels, allocator, lazy imports
    bare_pass()
    # Interleaved repeats so slow drifts hit both sides alike; the best of each is kept, as
    # shared machines have occasional stalls that say nothing about the code.
    engine_runs, bare_runs = [], []
    for _ in range(repeats):
        engine_runs.append(engine_pass())
        bare_runs.append(bare_pass())
    best = min(engine_runs, key=lambda run: run["total"])
    bare = min(bare_runs)
    plumbing = best["total"] - best["safety"] - best["encode"]
    split_runs = []
    with _stage_timers(engine, sync) as stages:
        for _ in range(repeats):
            stages.clear()
            totals = engine_pass()
            split_runs.append({**stages, **{key: totals[key] for key in ("safety", "encode", "total")}})
    timed = min(split_runs, key=lambda run: run["total"])
    split = {stage: timed.get(stage, 0.0) for stage in STAGES[:-1]}
    split["other"] = max(timed["total"] - sum(split.values()), 0.0)
    row: dict[str, Any] = {
        "batch": batch,
        "steps": steps,
        "images_per_s": round(jobs / best["total"], 2),
        "bare_images_per_s": round(jobs / bare, 2),
        "ms_per_image": {stage: round(1000 * seconds / jobs, 2) for stage, seconds in split.items()},
        "overhead_pct": round(100 * (plumbing - bare) / bare, 1),
    }
    if engine.device.startswith("cuda"):
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def _prompt_encoding(engine: DiffusionEngine, size: int, repeats: int) -> dict[str, Any]:
    """Best-of-`repeats` times of encode_batch for a plain and a ~300-token weighted prompt, and of
    one 4-step image, to put the difference in proportion."""
    pipe = engine.text2img_pipeline
    sync = _synchronizer(engine)
    phrases: list[str] = []
    while count_tokens(pipe.tokenizer, ", ".join(phrases)) < WEIGHTED_TOKENS:
        phrases.append(WEIGHTED_PHRASES[len(phrases) % len(WEIGHTED_PHRASES)])
    weighted = ", ".join(phrases)

    def best(run: Callable[[], object]) -> float:
        run()  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - started)
        return min(times)

    plain_s = best(lambda: encode_batch(pipe, [PLAIN_PROMPT], [""]))
    weighted_s = best(lambda: encode_batch(pipe, [weighted], [""]))
    image = GenerationParams(pipeline=PipelineKind.TEXT2IMG, prompt=PLAIN_PROMPT, seeds=(1,), steps=4,
                             guidance=0.0, width=size, height=size)
    image_s = best(lambda: engine.run_batch([image], lambda step, total: None, lambda: False))
    return {
        "plain_ms": round(1000 * plain_s, 2),
        "weighted_ms": round(1000 * weighted_s, 2),
        "weighted_tokens": count_tokens(pipe.tokenizer, weighted),
        "image_4_steps_ms": round(1000 * image_s, 2),
        "extra_pct_of_4_step_image": round(100 * (weighted_s - plain_s) / image_s, 2),
    }


def _previews(config: EngineConfig, size: int, batch: int, steps: int, repeats: int) -> dict[str, Any]:
    """Best-of-`repeats` time of one batch with previews off, at the default interval and at every
    step; runs interleaved so drifts hit all three alike."""
    default_interval = EngineConfig.model_fields["preview_interval_s"].default
    engines = {
        "off": DiffusionEngine.load(config.model_copy(update={"previews": False})),
        f"every {default_interval:g} s": DiffusionEngine.load(config.model_copy(update={"preview_interval_s": default_interval})),
        "every step": DiffusionEngine.load(config.model_copy(update={"preview_interval_s": 1e-9})),
    }
    job = GenerationParams(pipeline=PipelineKind.TEXT2IMG, prompt=PLAIN_PROMPT, seeds=tuple(range(batch)),
                           steps=steps, guidance=0.0, width=size, height=size)
    sync = _synchronizer(engines["off"])
    times: dict[str, list[float]] = defaultdict(list)
    made: dict[str, int] = {}

    def run(name: str) -> None:
        count = 0

        def on_preview(step: int, total: int, previews: Any) -> None:
            nonlocal count
            count += 1

        started = time.perf_counter()
        engines[name].run_batch([job], lambda step, total: None, lambda: False, on_preview)
        sync()
        times[name].append(time.perf_counter() - started)
        made[name] = count

    for name in engines:  # warm-up
        run(name)
    times.clear()
    for _ in range(repeats):
        for name in engines:
            run(name)
    best = {name: min(runs) for name, runs in times.items()}
    off = best["off"]
    every = best["every step"]
    return {
        "batch": batch,
        "steps": steps,
        "rows": [
            {"previews": name, "ms": round(1000 * seconds, 1), "previews_made": made[name],
             "overhead_pct": round(100 * (seconds - off) / off, 1)}
            for name, seconds in best.items()
        ],
        "per_preview_ms": round(1000 * (every - off) / max(made["every step"], 1), 2),
        "bound_at_default_interval_pct": round(100 * (every - off) / max(made["every step"], 1) / default_interval, 2),
    }


def _preview_table(previews: dict[str, Any], size: int) -> str:
    lines = [
        f"live previews: one batch of {previews['batch']} at {size}x{size}, {previews['steps']} steps",
        "previews | ms | previews made | overhead",
    ]
    for row in previews["rows"]:
        lines.append(f"{row['previews']} | {row['ms']} | {row['previews_made']} | {row['overhead_pct']}%")
    lines.append(
        f"one preview costs {previews['per_preview_ms']} ms: at most {previews['bound_at_default_interval_pct']}% "
        "of generation time at the default interval"
    )
    return "\n".join(lines)


def _edits(engine: DiffusionEngine, size: int, repeats: int, steps: int = 4) -> dict[str, Any]:
    """Zoom Out 2x and Pan right of one picture, 4 images each: the engine (without safety check
    and PNG encoding) against a bare inpainting call on the prepared canvas and mask."""
    source_params = GenerationParams(pipeline=PipelineKind.TEXT2IMG, prompt=PLAIN_PROMPT, seeds=(7,), steps=steps,
                                     guidance=0.0, width=size, height=size)
    (made,) = engine.run_batch([source_params], lambda step, total: None, lambda: False)
    data = made.images[0].data
    assert data is not None
    picture = Image.open(BytesIO(data)).convert("RGB")
    limits = RequestLimits(max_size=2 * size, max_count=4)
    base = requests.EditSource(width=size, height=size, prompt=PLAIN_PROMPT, steps=steps, guidance=0.0)
    pipe, sync = engine.inpaint_pipeline, _synchronizer(engine)
    results: dict[str, Any] = {}
    for name, params in (("zoom_out_2x", requests.zoom_out(limits, base, "2x")),
                         ("pan_right", requests.pan(limits, base, "right"))):
        params = params.model_copy(update={"source_image": data, "seeds": (1, 2, 3, 4)})
        edit = params.edit
        assert edit is not None

        def through_engine() -> float:
            engine.run_batch([params], lambda step, total: None, lambda: False)
            sync()
            timings = engine.last_timings
            return timings["total"] - timings["safety"] - timings["encode"]

        def bare() -> float:
            prepared = prepare(picture, edit, params.width, params.height)  # the inputs, untimed
            started = time.perf_counter()
            with torch.inference_mode():
                pipe(prompt=[params.prompt] * 4, image=[prepared.canvas] * 4, mask_image=[prepared.mask] * 4,
                     strength=params.strength, width=params.width, height=params.height, num_inference_steps=steps,
                     guidance_scale=0.0, generator=[torch.Generator("cpu").manual_seed(s) for s in params.seeds],
                     output_type="pil")
            sync()
            return time.perf_counter() - started

        def geometry() -> float:
            started = time.perf_counter()
            for _ in params.seeds:
                prepared = prepare(picture, edit, params.width, params.height)
                prepared.finish(prepared.canvas)
            return time.perf_counter() - started

        through_engine(), bare()  # warm-up
        engine_runs, bare_runs = [], []
        for _ in range(repeats):  # interleaved, best of each kept, as in _measure
            engine_runs.append(through_engine())
            bare_runs.append(bare())
        best_engine, best_bare = min(engine_runs), min(bare_runs)
        results[name] = {
            "canvas": f"{params.width}x{params.height}",
            "engine_ms": round(1000 * best_engine, 1),
            "bare_ms": round(1000 * best_bare, 1),
            "overhead_pct": round(100 * (best_engine - best_bare) / best_bare, 1),
            "prepare_paste_ms": round(1000 * min(geometry() for _ in range(repeats)), 2),
        }
    return results


@contextmanager
def _stage_timers(engine: DiffusionEngine, sync: Callable[[], None]) -> Iterator[dict[str, float]]:
    """Time the text encoder, UNet and VAE decoder by wrapping them on the instance."""
    pipe = engine.text2img_pipeline
    totals: dict[str, float] = defaultdict(float)
    targets = [
        (pipe.text_encoder, "forward", "text_encoding"),
        (pipe.unet, "forward", "denoising"),
        (pipe.vae, "decode", "vae_decode"),
    ]

    def timed(original: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            sync()
            started = time.perf_counter()
            result = original(*args, **kwargs)
            sync()
            totals[stage] += time.perf_counter() - started
            return result

        return wrapper

    for module, method, stage in targets:
        setattr(module, method, timed(getattr(module, method), stage))
    try:
        yield totals
    finally:
        for module, method, _ in targets:
            delattr(module, method)  # back to the class's method


def _synchronizer(engine: DiffusionEngine) -> Callable[[], None]:
    if engine.device.startswith("cuda"):
        return torch.cuda.synchronize
    if engine.device.startswith("mps"):
        return torch.mps.synchronize
    return lambda: None


def _table(report: dict[str, Any]) -> str:
    header = ["batch", "steps", "img/s", "bare img/s", "overhead", *[f"{s} ms" for s in STAGES]]
    if any("peak_gpu_gib" in row for row in report["rows"]):
        header.append("peak GiB")
    lines = [
        f"{report['model']} model, {report['size']}x{report['size']}, {report['jobs']} one-image jobs, "
        f"{report['device']} {report['dtype']} (times per image)",
        " | ".join(header),
    ]
    for row in report["rows"]:
        cells = [row["batch"], row["steps"], row["images_per_s"], row["bare_images_per_s"], f"{row['overhead_pct']}%"]
        cells += [row["ms_per_image"][stage] for stage in STAGES]
        if "peak_gpu_gib" in row:
            cells.append(row["peak_gpu_gib"])
        lines.append(" | ".join(str(cell) for cell in cells))
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "sd-turbo-shaped"], default="tiny")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes to compare")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--jobs", type=int, default=8, help="one-image jobs per measurement")
    parser.add_argument("--size", type=int, default=None, help="image side; default: the model's native size")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per setting (best is kept)")
    parser.add_argument("--preview-batch", type=int, default=4, help="images in the live-preview batch")
    parser.add_argument("--preview-steps", type=int, default=30, help="steps of the live-preview batch")
    parser.add_argument("--describe-model", help="Florence-2 hub id or folder for /describe (default: tiny random)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()

"""Scaling over Ray actors: images/s with one and with several generation workers, and what a
RayRunner round trip costs on top of the engine.

    python -m benchmarks.scale                          # tiny model, 1 and 2 CPU actors, 1 thread each
    python -m benchmarks.scale --model sd-turbo-shaped  # on a GPU machine: 1 actor, then one per GPU
    python -m benchmarks.scale --address auto --model-dir /shared/sdbot-bench   # an existing cluster

Each measurement starts its actors through the production `start_ray_runners`, warms each up with
one batch, then drives them as the scheduler does (one task per runner, pulling the next batch of
one-image jobs from a shared list) and keeps the best of --repeats passes. Dispatch overhead per
batch is the runner's round trip minus the engine's own time inside the actor (the sum of the
outputs' `elapsed_s`, which the engine sets from the same clock as its `last_timings["total"]`);
the empty-batch round trip is Ray's dispatch alone, with no engine work. `sd-turbo-shaped` is
SD-Turbo's architecture with random weights (see benchmarks/generation.py). On a multi-host cluster
--model-dir must be a folder every host can read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:
    # Run as `python benchmarks/scale.py`, this folder comes first on sys.path and
    # benchmarks/generation.py would shadow the `generation` package; use the repository root.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import ray

from generation.engine.diffusion import VERSIONS
from generation.engine.tiny_models import make_tiny_models
from generation.jobs.ray_runner import RayRunner, start_ray_runners
from sdbot.settings import Settings
from sdbot.types import GenerationParams, PipelineKind

PROBES = 20  # empty-batch round trips timed per measurement


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sdbot-scale-") as scratch:
        folder = args.model_dir or Path(scratch)
        print(f"building the {args.model} model in {folder} ...", file=sys.stderr)
        paths = make_tiny_models(folder, shape="tiny" if args.model == "tiny" else "sd-turbo")
        ray.init(address=args.address or "local", include_dashboard=False)
        try:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            device = args.device or ("cuda" if gpus else "cpu")
            counts = args.workers or ([1, gpus] if device == "cuda" else [1, 2])
            # On the GPU one actor per GPU; on the CPU actors reserve none, whatever the cluster has.
            settings = paths.settings(device=device, ray_gpus_per_worker=1.0 if device == "cuda" else 0.0)
            rows = [_measure(settings, count, args) for count in dict.fromkeys(counts)]
        finally:
            ray.shutdown()
    for row in rows:
        row["speedup"] = round(row["images_per_s"] / rows[0]["images_per_s"], 2)
    report = {
        "model": args.model,
        "device": device,
        "steps": args.steps,
        "batch": args.batch,
        "jobs": args.jobs,
        "cpus_per_worker": args.cpus_per_worker,
        "versions": {**VERSIONS, "ray": ray.__version__},
        "rows": rows,
    }
    print(_table(report))
    print(json.dumps(report, indent=2))


def _measure(settings: Settings, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    print(f"starting {workers} actor(s) ...", file=sys.stderr)
    runners = start_ray_runners(
        settings.model_copy(update={"ray_num_workers": workers, "ray_cpus_per_worker": args.cpus_per_worker})
    )
    try:
        size = runners[0].info.native_size
        params = [
            GenerationParams(pipeline=PipelineKind.TEXT2IMG, prompt=f"a lighthouse, study {index}",
                             seeds=(1000 + index,), steps=args.steps, guidance=0.0, width=size, height=size)
            for index in range(args.jobs)
        ]
        batches = [params[start : start + args.batch] for start in range(0, args.jobs, args.batch)]
        return asyncio.run(_drive(runners, batches, args.repeats)) | {"workers": workers, "size": size}
    finally:
        for runner in runners:
            runner.close()  # frees its CPUs or GPU for the next measurement's actors


async def _drive(runners: Sequence[RayRunner], batches: list[list[GenerationParams]], repeats: int) -> dict[str, Any]:
    await asyncio.gather(*(_round_trip(runner, batches[0]) for runner in runners))  # warm-up
    empty = [(await _round_trip(runners[0], []))[0] for _ in range(PROBES)]
    passes: list[float] = []
    timings: list[tuple[float, float]] = []  # (round trip, engine) per batch

    async def serve(runner: RayRunner, pending: deque[list[GenerationParams]]) -> None:
        while pending:
            timings.append(await _round_trip(runner, pending.popleft()))

    for _ in range(repeats):
        pending = deque(batches)
        started = time.perf_counter()
        await asyncio.gather(*(serve(runner, pending) for runner in runners))
        passes.append(time.perf_counter() - started)
    overheads = [trip - engine for trip, engine in timings]
    return {
        "images_per_s": round(sum(len(batch) for batch in batches) / min(passes), 2),
        "engine_ms_per_batch": _ms(statistics.median(engine for _, engine in timings)),
        "round_trip_ms_per_batch": _ms(statistics.median(trip for trip, _ in timings)),
        "overhead_ms_per_batch": _ms(statistics.median(overheads)),
        "overhead_ms_p90": _ms(statistics.quantiles(overheads, n=10)[-1]),
        "empty_round_trip_ms": _ms(statistics.median(empty)),
    }


async def _round_trip(runner: RayRunner, batch: list[GenerationParams]) -> tuple[float, float]:
    """(seconds for runner.run, seconds the engine spent inside the actor)."""
    started = time.perf_counter()
    outputs = await runner.run(batch, lambda step, total: None, lambda: False)
    return time.perf_counter() - started, sum(output.elapsed_s for output in outputs)


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


def _table(report: dict[str, Any]) -> str:
    header = ["workers", "img/s", "speed-up", "engine ms", "round trip ms", "overhead ms", "overhead p90",
              "empty trip ms"]
    keys = ["workers", "images_per_s", "speedup", "engine_ms_per_batch", "round_trip_ms_per_batch",
            "overhead_ms_per_batch", "overhead_ms_p90", "empty_round_trip_ms"]
    lines = [
        f"{report['model']} model on {report['device']} Ray actors ({report['cpus_per_worker']} CPU / torch "
        f"thread(s) each), {report['jobs']} one-image jobs, {report['batch']} per batch, {report['steps']} steps "
        "(ms per batch, medians)",
        " | ".join(header),
    ]
    lines += [" | ".join(str(row[key]) for key in keys) for row in report["rows"]]
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "sd-turbo-shaped"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="the actors' device; default: cuda if the cluster has GPUs")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="actor counts to compare; default: 1 and 2 on the CPU, 1 and one per GPU on cuda")
    parser.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (and torch threads) per actor")
    parser.add_argument("--address", default=None, help="Ray cluster to join ('auto'); default: a local one")
    parser.add_argument("--model-dir", type=Path, default=None, help="where to write the model (default: temp)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2, help="one-image jobs per engine call")
    parser.add_argument("--jobs", type=int, default=64, help="one-image jobs per pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per actor count (best is kept)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()

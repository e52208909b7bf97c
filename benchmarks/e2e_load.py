"""End-to-end load: a burst of /imagine commands from many members through the fake Discord.

    python -m benchmarks.e2e_load                  # 50 members, 200 commands in 2 s, 4 images each
    python -m benchmarks.e2e_load --count 1 --json-only

The production bot (`bot.app.build_bot`, as in tests/bot_fixtures.py) runs on the tiny random-weight
model (generation.engine.tiny_models, on the CPU, offline) against the loopback fake Discord, with settings
that admit the whole burst. Commands go out spread uniformly over the window, member i % members
sending command i. Measured, from the moment each command is sent:

- acknowledgement: the fake receives the bot's first interaction callback (deferral or refusal);
- result: the original response is edited with the images attached.

Both are stamped inside the fake as its state changes (no polling), so they do not include the
benchmark's own wake-up delays. Also reported: refusals and their reasons, jobs that ended without
images, jobs lost (accepted, yet neither images nor an end message within --result-timeout-s),
jobs-table rows against accepted commands, how late the senders fired and the event loop's lag
(bot, fake and benchmark share one loop; the engine runs on its own thread).

Exit status 1 when a job was lost or the jobs table does not hold one row per accepted command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import sqlite3
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before anything imports huggingface_hub, which reads these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

if __name__ == "__main__" and not __package__:
    # Run as `python benchmarks/e2e_load.py`, this file's folder comes first on sys.path and
    # `benchmarks/generation.py` would shadow the `generation` package; use the repository root.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths, make_tiny_models
from tests.fakes.bot import BotHarness, bot_settings
from tests.fakes.fake_discord.client_api import FakeDiscord
from tests.fakes.fake_discord.running import serve_fake_discord
from tests.fakes.fake_discord.state import FakeMember, InteractionHandle, Notifier

SUBJECTS = ["lighthouse", "red fox", "castle", "harbour", "forest path", "robot", "teapot", "mountain lake"]
ACK_P99_TARGET_S = 0.5
ACK_MAX_TARGET_S = 3.0
LAG_TICK_S = 0.01


# ---------------------------------------------------------------------------- what each command saw


@dataclass
class Command:
    """One /imagine sent by the benchmark; times are time.monotonic() seconds."""

    index: int
    member: FakeMember
    offset_s: float  # when to send, from the start of the window
    sent_at: float | None = None
    handle: InteractionHandle | None = None
    acked_at: float | None = None
    result_at: float | None = None
    images: int = 0
    refusal: str | None = None  # the ephemeral reply that refused it
    ended: str | None = None  # a failure or cancellation message in place of images
    deadline_missed: bool = False

    @property
    def accepted(self) -> bool:
        return self.acked_at is not None and self.refusal is None

    @property
    def settled(self) -> bool:
        return self.deadline_missed or self.refusal is not None or self.result_at is not None or self.ended is not None

    def observe(self, now: float) -> None:
        """Update from the fake's current state of the interaction."""
        handle = self.handle
        if handle is None or self.settled:
            return
        if handle.deadline_missed:
            self.deadline_missed = True
            return
        if handle.response_type is not None and self.acked_at is None:
            self.acked_at = now
        original = handle.original
        if original is not None and original.ephemeral:
            self.refusal = original.content  # refused before the deferral
        elif handle.followups:
            # A deferral resolved by an ephemeral followup: refused after the deferral.
            self.refusal = handle.followups[-1].content
        elif original is not None and not original.loading and not original.deleted:
            if original.attachments:
                self.result_at, self.images = now, len(original.attachments)
            elif "refunded" in original.content:  # bot.render.ended_text: failed or cancelled
                self.ended = original.content


class Tracker:
    """Stamps each command's acknowledgement and result the moment the fake's state changes."""

    def __init__(self) -> None:
        self._open: list[Command] = []
        self.all_settled = asyncio.Event()
        self.sending_done = False
        self.closed = False  # results after the wait ended count as lost

    def sent(self, command: Command) -> None:
        self._open.append(command)
        self.observe()

    def observe(self) -> None:
        if self.closed:
            return
        now = time.monotonic()
        for command in self._open:
            command.observe(now)
        self._open = [c for c in self._open if not c.settled]
        if self.sending_done and not self._open:
            self.all_settled.set()

    def finish_sending(self) -> None:
        self.sending_done = True
        self.observe()


class StampingNotifier(Notifier):
    """The fake's change notifier, also calling `on_change` after every REST request it serves."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        super().__init__()
        self._on_change = on_change

    def changed(self) -> None:
        super().changed()
        self._on_change()


class LagProbe:
    """A ticker on the event loop: how late each LAG_TICK_S sleep wakes up."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (woke at, lateness)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick(), name="lag-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            now = time.monotonic()
            self.samples.append((now, now - before - LAG_TICK_S))

    def between(self, start: float, end: float) -> list[float]:
        return [lag for at, lag in self.samples if start <= at <= end]


# ---------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    commands: list[Command]
    window_start: float
    window_end: float  # the last command was sent
    acks_done: float  # the last acknowledgement (or the window end)
    finished: float  # every command settled, or the result timeout
    lag: LagProbe
    member_ids: list[int]
    steps: int
    violations: Counter[str] = field(default_factory=Counter)


async def _send(fake: FakeDiscord, tracker: Tracker, command: Command, start: float, count: int) -> None:
    await asyncio.sleep(max(0.0, start + command.offset_s - time.monotonic()))
    command.sent_at = time.monotonic()
    prompt = f"{SUBJECTS[command.index % len(SUBJECTS)]} {command.index}"
    command.handle = await fake.slash(command.member, "imagine", prompt=prompt, count=count)
    tracker.sent(command)


async def _warm_up(fake: FakeDiscord) -> None:
    """One job through the whole path first (torch, PNG encoding, discord.py), not measured."""
    handle = await fake.slash(fake.member, "imagine", prompt="warm-up", count=1)
    await handle.wait_original(lambda m: bool(m.attachments), timeout=60)


async def run_load(args: argparse.Namespace, models: TinyModelPaths, engine: DiffusionEngine, data: Path) -> RunResult:
    per_member = math.ceil(args.commands / args.members)
    async with serve_fake_discord() as fake:
        settings = bot_settings(
            models, data, fake,
            max_queued_per_user=max(per_member, 4),
            queue_capacity=max(args.commands, 100),
            default_daily_quota=1_000_000,
            progress_interval_s=args.progress_interval_s,
        )
        harness = BotHarness(fake, settings, engine)
        await harness.start()
        try:
            await _warm_up(fake)
            members = [fake.add_member(f"load-{n:03d}") for n in range(args.members)]
            spacing = args.window_s / args.commands
            commands = [Command(n, members[n % args.members], n * spacing) for n in range(args.commands)]
            tracker = Tracker()
            fake.notifier = StampingNotifier(tracker.observe)  # nothing waits on the old one now
            lag = LagProbe()
            lag.start()
            await asyncio.sleep(0.05)  # let the probe and the new member events settle
            start = time.monotonic()
            await asyncio.gather(*(_send(fake, tracker, c, start, args.count) for c in commands))
            window_end = time.monotonic()
            tracker.finish_sending()
            try:
                await asyncio.wait_for(tracker.all_settled.wait(), args.result_timeout_s)
            except TimeoutError:
                pass
            tracker.closed = True
            finished = time.monotonic()
            await lag.stop()
        finally:
            await harness.stop()
        acks = [c.acked_at for c in commands if c.acked_at is not None]
        return RunResult(
            commands=commands, window_start=start, window_end=window_end,
            acks_done=max([window_end, *acks]), finished=finished, lag=lag,
            member_ids=[m.id for m in members], steps=settings.default_steps,
            violations=Counter(v.kind for v in fake.violations),
        )


def count_rows(database: Path, member_ids: Sequence[int]) -> tuple[int, dict[str, int]]:
    """Jobs of the benchmark's members (the warm-up job is not one): total and by status."""
    marks = ",".join("?" * len(member_ids))
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            f"SELECT status, COUNT(*) FROM jobs WHERE user_id IN ({marks}) GROUP BY status", list(member_ids)
        ).fetchall()
    statuses = {status: n for status, n in rows}
    return sum(statuses.values()), statuses


# ---------------------------------------------------------------------------- report


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _summary(values: Sequence[float], qs: Sequence[int], scale: float, digits: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in qs:
        value = percentile(values, q)
        out[f"p{q}"] = None if value is None else round(value * scale, digits)
    out["max"] = round(max(values) * scale, digits) if values else None
    return out


def _reason(text: str) -> str:
    """A refusal message with its numbers and Discord timestamps blanked, so equal reasons group."""
    return re.sub(r"\d+", "N", re.sub(r"<t:\d+:\w>", "<time>", text)).strip()


def build_report(args: argparse.Namespace, run: RunResult, rows: int, statuses: dict[str, int]) -> dict[str, Any]:
    commands = run.commands
    ack = [c.acked_at - c.sent_at for c in commands if c.acked_at is not None and c.sent_at is not None]
    results = [c.result_at - c.sent_at for c in commands if c.result_at is not None and c.sent_at is not None]
    send_lag = [c.sent_at - run.window_start - c.offset_s for c in commands if c.sent_at is not None]
    accepted = [c for c in commands if c.accepted]
    delivered = [c for c in accepted if c.result_at is not None]
    ended = [c for c in accepted if c.ended is not None]
    lost = [c for c in accepted if c.result_at is None and c.ended is None]
    refused = [c for c in commands if c.refusal is not None]
    images = sum(c.images for c in delivered)
    last_result = max((c.result_at for c in delivered if c.result_at is not None), default=run.window_start)
    ack_summary = _summary(ack, (50, 99), 1000, 1)
    ack_ok = (
        len(ack) == len(commands)
        and (ack_summary["p99"] or 0) < ACK_P99_TARGET_S * 1000
        and (ack_summary["max"] or 0) < ACK_MAX_TARGET_S * 1000
    )
    return {
        "config": {
            "members": args.members, "commands": args.commands, "window_s": args.window_s,
            "count": args.count, "steps": run.steps, "progress_interval_s": args.progress_interval_s,
            "result_timeout_s": args.result_timeout_s, "model": "tiny (random weights, CPU)",
        },
        "ack_latency_ms": ack_summary,
        "ack_missing": len(commands) - len(ack),
        "ack_targets_met": ack_ok,
        "result_latency_s": _summary(results, (50, 95), 1, 3),
        "accepted": len(accepted),
        "refused": len(refused),
        "refusal_reasons": dict(Counter(_reason(c.refusal or "") for c in refused).most_common()),
        "jobs_delivered": len(delivered),
        "images_delivered": images,
        "images_expected": len(accepted) * args.count,
        "jobs_ended_without_images": len(ended),
        "jobs_lost": len(lost),
        "lost_replies_sample": [c.handle.original.content if c.handle and c.handle.original else None
                                for c in lost[:5]],
        "jobs_rows": rows,
        "jobs_by_status": statuses,
        "rows_match_accepted": rows == len(accepted),
        "send_lateness_ms": _summary(send_lag, (50, 99), 1000, 1),
        "loop_lag_ms": {
            "until_last_ack": _summary(run.lag.between(run.window_start, run.acks_done), (50, 99), 1000, 1),
            "whole_run": _summary([lag for _, lag in run.lag.samples], (50, 99), 1000, 1),
        },
        "images_per_s": round(images / (last_result - run.window_start), 2) if delivered else 0.0,
        "run_s": round(run.finished - run.window_start, 2),
        "fake_violations": dict(run.violations),
        "ok": not lost and rows == len(accepted),
    }


def _fmt(summary: dict[str, float | None], unit: str) -> str:
    return "  ".join(f"{k} {'-' if v is None else v} {unit}" for k, v in summary.items())


def print_table(report: dict[str, Any]) -> None:
    cfg = report["config"]
    lines = [
        ("load", (f"{cfg['commands']} /imagine from {cfg['members']} members in {cfg['window_s']} s, "
                  f"{cfg['count']} image(s) each, {cfg['steps']} steps, {cfg['model']}")),
        ("ack latency", _fmt(report["ack_latency_ms"], "ms")
         + f"  (missing {report['ack_missing']}; target p99 < {ACK_P99_TARGET_S * 1000:.0f} ms, "
           f"max < {ACK_MAX_TARGET_S:.0f} s: {'met' if report['ack_targets_met'] else 'MISSED'})"),
        ("result latency", _fmt(report["result_latency_s"], "s")),
        ("accepted / refused", f"{report['accepted']} / {report['refused']}"),
        *[(f"  refused x{n}", reason) for reason, n in report["refusal_reasons"].items()],
        ("jobs delivered", (f"{report['jobs_delivered']} ({report['images_delivered']} of "
                            f"{report['images_expected']} images)")),
        ("ended without images", str(report["jobs_ended_without_images"])),
        ("jobs lost", str(report["jobs_lost"])),
        ("jobs rows", (f"{report['jobs_rows']} (accepted {report['accepted']}: "
                       f"{'match' if report['rows_match_accepted'] else 'MISMATCH'}) {report['jobs_by_status']}")),
        ("sender lateness", _fmt(report["send_lateness_ms"], "ms")),
        ("loop lag to last ack", _fmt(report["loop_lag_ms"]["until_last_ack"], "ms")),
        ("loop lag, whole run", _fmt(report["loop_lag_ms"]["whole_run"], "ms")),
        ("throughput", f"{report['images_per_s']} images/s; run {report['run_s']} s"),
        ("fake violations", json.dumps(report["fake_violations"]) if report["fake_violations"] else "none"),
        ("verdict", "OK" if report["ok"] else "FAILED (jobs lost or rows != accepted)"),
    ]
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label:<{width}}  {value}")


# ---------------------------------------------------------------------------- entry point


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--window-s", type=float, default=2.0, help="send the commands uniformly over this")
    parser.add_argument("--count", type=int, default=4, choices=range(1, 5), help="images per command")
    parser.add_argument("--progress-interval-s", type=float, default=1.5,
                        help="the bot's progress edit interval (production default 1.5)")
    parser.add_argument("--result-timeout-s", type=float, default=300.0,
                        help="after the last command, how long to wait for every result")
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args(argv)
    if args.members < 1 or args.commands < 1 or args.window_s < 0:
        parser.error("--members and --commands must be positive, --window-s not negative")
    return args


def _quiet_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # discord.py warns about voice support (PyNaCl, davey) that the bot never uses.
    logging.getLogger("discord").setLevel(logging.ERROR)
    for noisy in ("diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    _quiet_logging()
    with tempfile.TemporaryDirectory(prefix="sdbot-e2e-") as folder:
        data = Path(folder)
        if not args.json_only:
            print(f"building the tiny model in {folder} ...", file=sys.stderr)
        models = make_tiny_models(data / "models")
        engine = DiffusionEngine.load(models.engine_config())
        run = asyncio.run(run_load(args, models, engine, data))
        rows, statuses = count_rows(data / "data" / "sdbot.sqlite3", run.member_ids)
    report = build_report(args, run, rows, statuses)
    if not args.json_only:
        print_table(report)
        print()
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

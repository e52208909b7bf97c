"""Runners: the blocking engine runs off the event loop, and progress comes back onto it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from generation.engine.diffusion import DiffusionEngine
from generation.jobs.runners import LocalRunner
from sdbot.store import Store
from tests.fakes.engine import FakeEngine, make_settings, new_job, running_scheduler


async def test_local_runner_reports_steps_on_the_event_loop_thread() -> None:
    seen: list[int] = []
    runner = LocalRunner(FakeEngine())
    params = new_job(1, steps=3).params
    outputs = await runner.run([params], lambda step, total: seen.append(threading.get_ident()),
                               lambda: False)
    runner.close()
    assert len(outputs) == 1 and seen == [threading.get_ident()] * 3


async def test_event_loop_stays_responsive_while_the_tiny_pipeline_runs(
    store: Store, tmp_path: Path, tiny_engine: DiffusionEngine
) -> None:
    settings = make_settings(tmp_path)
    async with running_scheduler(store, settings, tiny_engine) as (scheduler, listener):
        ids = [(await scheduler.submit(new_job(user, seeds=(user,), steps=4))).job.id for user in (1, 2, 3)]
        worst = 0.0
        while not all(job_id in listener.finished for job_id in ids):
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            worst = max(worst, time.perf_counter() - before - 0.01)
    assert [listener.status(job_id) for job_id in ids] == ["done"] * 3
    assert worst < 0.5

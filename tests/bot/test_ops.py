"""Operating the bot: /healthz and /metrics on SDBOT_METRICS_PORT, and one log line per job."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.app import build_bot
from generation.engine.diffusion import DiffusionEngine
from generation.engine.tiny_models import TinyModelPaths
from generation.errors import WorkerLost
from sdbot.logs import FIELDS, JsonFormatter
from sdbot.store import Store
from tests.fakes.bot import BotHarness, bot_settings
from tests.fakes.fake_discord.client_api import FakeDiscord


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def health(port: int) -> tuple[int, dict[str, Any]]:
    status, text = await get(port, "/healthz")
    return status, json.loads(text)


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


class _DyingEngine:
    """The real engine until a prompt says "power cut": from then on every call, the worker's
    probes included, fails as a dead worker process would."""

    def __init__(self, engine: DiffusionEngine) -> None:
        self._engine, self.dead = engine, False

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def run_batch(self, batch, on_step, should_stop, on_preview=None):  # type: ignore[no-untyped-def]
        if self.dead or any("power cut" in params.prompt for params in batch):
            self.dead = True
            raise WorkerLost("the worker process is gone")
        return self._engine.run_batch(batch, on_step, should_stop, on_preview)


@pytest.fixture
async def ops(
    fake_discord: FakeDiscord, tiny_models: TinyModelPaths, tiny_engine: DiffusionEngine, tmp_path: Path
) -> AsyncIterator[BotHarness]:
    """A harness whose bot serves the operations port; not started."""
    settings = bot_settings(tiny_models, tmp_path, fake_discord, metrics_port=free_port())
    running = BotHarness(fake_discord, settings, tiny_engine)
    yield running
    await running.stop()


async def test_healthz_is_503_before_the_gateway_is_ready_then_200(ops: BotHarness) -> None:
    port = ops.settings.metrics_port
    store = await Store.open(ops.settings.database_path)
    bot = build_bot(ops.settings, store, ops.engine)
    try:
        await bot.login(ops.fake.token)  # runs setup_hook: workers and the port are up, no gateway yet
        status, body = await health(port)
        assert status == 503
        assert body["problems"] == ["not connected to the Discord gateway"]
    finally:
        await bot.close()
        await store.close()
    await ops.start()
    status, body = await health(port)
    assert (status, body["status"], body["workers_up"]) == (200, "ok", 1)


async def test_healthz_is_503_once_the_worker_died(ops: BotHarness, tiny_engine: DiffusionEngine) -> None:
    await ops.start(_DyingEngine(tiny_engine))  # type: ignore[arg-type]
    port = ops.settings.metrics_port
    assert (await health(port))[0] == 200
    fake = ops.fake
    handle = await fake.slash(fake.member, "imagine", prompt="power cut", count=1)
    await handle.wait_original(lambda m: "queued" in m.content or "generating" in m.content, timeout=10)
    for _ in range(100):
        status, body = await health(port)
        if status == 503:
            break
        await asyncio.sleep(0.05)
    assert status == 503
    assert body["problems"] == ["no generation worker is up (0 of 1)"]


async def test_metrics_count_the_jobs_run(ops: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    await ops.start()
    fake = ops.fake
    caplog.set_level(logging.INFO, logger="bot.metrics")
    for count in (2, 1):
        handle = await fake.slash(fake.member, "imagine", prompt=f"{count} foxes", count=count)
        await handle.wait_original(lambda m: bool(m.attachments), timeout=30)
    missing = await fake.slash(fake.member, "job", id=999)
    await missing.wait_response()
    assert missing.ephemeral

    status, text = await get(ops.settings.metrics_port, "/metrics")
    assert status == 200
    found = samples(text)
    assert found[("sdbot_jobs_total", (("kind", "imagine"), ("status", "done")))] == 2
    assert found[("sdbot_images_total", ())] == 3
    assert found[("sdbot_nsfw_withheld_total", ())] == 0
    assert found[("sdbot_queue_depth", ())] == 0
    assert found[("sdbot_queue_wait_seconds_count", ())] == 2
    assert found[("sdbot_job_duration_seconds_count", ())] == 2
    assert found[("sdbot_batch_size_count", ())] == 2 and found[("sdbot_batch_size_sum", ())] == 2
    assert found[("sdbot_command_errors_total", (("command", "job"),))] == 1
    assert found[("sdbot_gpu_memory_bytes", ())] == 0  # CPU here
    assert 0 <= found[("sdbot_gateway_latency_seconds", ())] < 5

    # One line per job end, with every field also in the JSON form.
    ended = [record for record in caplog.records if hasattr(record, FIELDS)]
    assert len(ended) == 2
    line = ended[0].getMessage()
    for part in ("done", f"user={fake.member.id}", "kind=imagine", "images=2", "wait=", "run=", "batch=1",
                 f"model={ops.settings.model_id}"):
        assert part in line
    entry = json.loads(JsonFormatter().format(ended[1]))
    assert entry["message"] == ended[1].getMessage()
    assert (entry["kind"], entry["images"], entry["batch_size"], entry["status"]) == ("imagine", 1, 1, "done")
    assert entry["run_s"] > 0 and entry["wait_s"] >= 0 and entry["user_id"] == fake.member.id

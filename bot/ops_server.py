"""The operations endpoint on SDBOT_METRICS_PORT: `/metrics` for Prometheus and `/healthz`, which is
200 only while the gateway is connected, a worker is up and the database answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bot.metrics import Metrics

log = logging.getLogger(__name__)

DATABASE_TIMEOUT_S = 2.0


class OpsServerError(Exception):
    """The metrics port cannot be opened (taken, or not allowed)."""


@dataclass(frozen=True)
class HealthProbes:
    gateway_connected: Callable[[], bool]
    workers: Callable[[], tuple[int, int]]  # (up, all)
    ping_database: Callable[[], Awaitable[None]]


async def check_health(probes: HealthProbes) -> list[str]:
    """What is wrong, in words; empty when healthy."""
    problems = []
    if not probes.gateway_connected():
        problems.append("not connected to the Discord gateway")
    up, total = probes.workers()
    if up == 0:
        problems.append(f"no generation worker is up (0 of {total})")
    try:
        await asyncio.wait_for(probes.ping_database(), DATABASE_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - any failure means the database does not answer
        problems.append(f"the database does not answer ({type(error).__name__}: {error})")
    return problems


class OpsServer:
    def __init__(self, metrics: Metrics, probes: HealthProbes) -> None:
        self._metrics = metrics
        self._probes = probes
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError as error:
            await self.stop()
            raise OpsServerError(f"SDBOT_METRICS_PORT: cannot listen on {host}:{port} ({error})") from None
        log.info("serving /metrics and /healthz on http://%s:%d", host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        # Collected on the loop: every gauge reads in-memory state, nothing blocks.
        response = web.Response(body=self._metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _serve_health(self, request: web.Request) -> web.Response:
        problems = await check_health(self._probes)
        up, total = self._probes.workers()
        body = {"status": "unhealthy" if problems else "ok", "problems": problems,
                "workers_up": up, "workers": total}
        return web.json_response(body, status=503 if problems else 200)

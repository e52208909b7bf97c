"""Nothing lost under a hard kill: bot processes SIGKILLed at random points during bursts of
/imagine, each restarted, and every job Discord acknowledged is delivered exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from generation.engine.tiny_models import TinyModelPaths
from sdbot.settings import Settings
from sdbot.store import Store
from sdbot.types import JobStatus
from tests.fakes.bot import bot_settings
from tests.fakes.fake_discord.client_api import FakeDiscord

ROOT = Path(__file__).resolve().parents[2]
CYCLES, BURST = 20, 20
RESULT_FILE = re.compile(r"sdbot-(\d+)-\d+-\d+\.png")


class BotProcesses:
    """Real bot processes forked by `tests.fakes.bot_process`; each can be killed with SIGKILL."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    async def start(self) -> int:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(b"start\n")
        await self._process.stdin.drain()
        return int(await asyncio.wait_for(self._process.stdout.readline(), 60))


@asynccontextmanager
async def bot_processes(fake: FakeDiscord, settings: Settings, log: Path) -> AsyncIterator[BotProcesses]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.fakes.bot_process", fake.api_base, fake.ws_url, fake.token,
            settings.model_dump_json(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=stderr, cwd=settings.database_path.parent, env=env,
        )
        try:
            yield BotProcesses(process)
        finally:
            assert process.stdin is not None
            process.stdin.close()
            with suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 30)
            if process.returncode is None:
                process.kill()


async def gone(pid: int) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.01)


async def test_every_acknowledged_job_is_delivered_exactly_once_across_sigkills(
    fake_discord: FakeDiscord, tiny_models: TinyModelPaths, tmp_path: Path
) -> None:
    fake = fake_discord
    # Commands sent while no bot runs, or that a kill interrupts before the acknowledgement, time out;
    # a job stored just before such a kill is first tried as an edit of its reply (the new process
    # cannot know whether the acknowledgement went out), refused, and then posted to the channel.
    # A kill in the middle of an upload leaves the fake a cut request.
    fake.expect_violations("interaction_deadline", "not_acknowledged", "malformed_request")
    settings = bot_settings(
        tiny_models, tmp_path, fake, default_steps=1, max_queued_per_user=CYCLES * BURST,
        queue_capacity=CYCLES * BURST, default_daily_quota=CYCLES * BURST,
    )
    settings.database_path.parent.mkdir(parents=True)
    rng = random.Random(14)
    handles = []
    async with bot_processes(fake, settings, tmp_path / "bots.log") as bots:
        for cycle in range(CYCLES):
            pid = await bots.start()
            await fake.gateway.wait_connected(identifies=cycle + 1, timeout=30)
            kill = asyncio.get_running_loop().call_later(rng.uniform(0.0, 0.5), os.kill, pid, signal.SIGKILL)
            for n in range(BURST):
                handles.append(await fake.slash(fake.member, "imagine", prompt=f"cycle {cycle} job {n}", count=1))
                await asyncio.sleep(rng.uniform(0.0, 0.02))
            await asyncio.sleep(max(0.0, kill.when() - asyncio.get_running_loop().time()))
            await asyncio.wait_for(gone(pid), 10)
        survivor = await bots.start()
        await fake.gateway.wait_connected(identifies=CYCLES + 1, timeout=30)
        acknowledged = [handle for handle in handles if handle.acknowledged]
        for handle in acknowledged:
            await handle.wait_original(lambda m: bool(m.attachments), timeout=60)
        store = await Store.open(settings.database_path)
        try:
            for _ in range(600):  # jobs stored but never acknowledged are posted to the channel
                if not await store.undelivered_jobs() and not await store.jobs_with_status(
                    JobStatus.QUEUED, JobStatus.RUNNING
                ):
                    break
                await asyncio.sleep(0.1)
            jobs = await store.recent_jobs(fake.guild.id, fake.member.id, limit=CYCLES * BURST + 1)
        finally:
            await store.close()
        os.kill(survivor, signal.SIGTERM)
        await asyncio.wait_for(gone(survivor), 30)

    assert 0 < len(acknowledged) < len(handles)  # the kills did interrupt bursts
    tokens = Counter(job.interaction_token for job in jobs)
    assert all(tokens[handle.token] == 1 for handle in acknowledged)  # each acknowledged: one job
    assert all(job.status == JobStatus.DONE and job.delivered_at is not None for job in jobs)
    posted = Counter(
        int(match.group(1))
        for message in fake.channel_messages(fake.channel().id)
        for attachment in message.attachments
        if (match := RESULT_FILE.fullmatch(attachment.filename))
    )
    assert posted == Counter({job.id: 1 for job in jobs})  # every job once: no loss, no duplicate

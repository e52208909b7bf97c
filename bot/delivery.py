"""Delivers what the worker reports to Discord: throttled progress edits, then the result.

While the interaction token is valid (15 minutes) the bot edits its own response; after that, or
after a restart that outlived the token, it posts to the channel with a mention instead, so a job a
member was told is queued always ends with a message.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import discord

from bot import render
from bot.files import read_if_present
from bot.views import result_view
from generation.types import JobOutput, JobStatus
from sdbot.store import ImageRow, JobRow

if TYPE_CHECKING:
    from bot.client import SDBot

log = logging.getLogger(__name__)

TOKEN_LIFETIME_S = 15 * 60
# Leave room for the upload itself: a token about to expire is treated as expired.
TOKEN_MARGIN_S = 60
ACK_TIMEOUT_S = 10.0


class Delivery:
    """The worker's listener (generation.worker.JobListener) for the Discord bot."""

    def __init__(self, bot: SDBot) -> None:
        self._bot = bot
        # Interaction tokens whose "queued" reply is still being written: results wait for it,
        # so a fast job's result is never overwritten by the older "queued" text.
        self._pending_replies: dict[str, asyncio.Event] = {}
        self._running: dict[int, JobRow] = {}
        self._last_progress_edit: dict[int, float] = {}
        self._progress_tasks: dict[int, asyncio.Task[None]] = {}
        self._deliveries: set[asyncio.Task[None]] = set()

    # Submission side

    def hold(self, token: str) -> None:
        self._pending_replies[token] = asyncio.Event()

    def release(self, token: str) -> None:
        event = self._pending_replies.pop(token, None)
        if event is not None:
            event.set()

    async def _after_reply(self, job: JobRow) -> JobRow:
        """Wait until the job's first reply is written, then re-read it (it has the message id)."""
        event = self._pending_replies.get(job.interaction_token or "")
        if event is not None:
            try:
                await asyncio.wait_for(event.wait(), ACK_TIMEOUT_S)
            except TimeoutError:
                log.warning("job %s: its queued reply took over %s s", job.id, ACK_TIMEOUT_S)
        return await self._bot.store.get_job(job.id) or job

    # Worker side. Each report is handled in a task of its own: the worker goes on with the next
    # batch while Discord uploads (and rate limits) happen; `drain` waits for them at shutdown.

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def drain(self, timeout_s: float) -> None:
        """Let deliveries in flight finish before the bot disconnects."""
        if self._deliveries:
            await asyncio.wait(self._deliveries, timeout=timeout_s)

    async def job_started(self, job: JobRow) -> None:
        self._spawn(self._track(job), name=f"started-{job.id}")

    async def _track(self, job: JobRow) -> None:
        job = await self._after_reply(job)
        if job.status == JobStatus.RUNNING:  # not already over by the time its reply was written
            self._running[job.id] = job

    def job_progress(self, job_id: int, step: int, total: int) -> None:
        job = self._running.get(job_id)
        if job is None or not self._token_valid(job) or job.response_message_id is None:
            return
        now = time.monotonic()
        last = self._last_progress_edit.get(job_id, 0.0)
        in_flight = self._progress_tasks.get(job_id)
        if now - last < self._bot.settings.progress_interval_s or (in_flight and not in_flight.done()):
            return
        self._last_progress_edit[job_id] = now
        self._progress_tasks[job_id] = asyncio.create_task(
            self._edit_reply(job, content=render.progress_text(job, step, total)),
            name=f"progress-{job_id}",
        )

    async def job_finished(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> None:
        self._spawn(self._deliver(job, images, output), name=f"deliver-{job.id}")

    async def _deliver(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> None:
        self._running.pop(job.id, None)
        self._last_progress_edit.pop(job.id, None)
        progress = self._progress_tasks.pop(job.id, None)
        if progress is not None:
            progress.cancel()
        job = await self._after_reply(job)
        try:
            if job.status == JobStatus.DONE:
                await self._post_result(job, images, output)
            else:
                await self._post(job, content=render.ended_text(job), embed=None, files=[], view=None)
        except Exception:
            log.exception("job %s: could not deliver its result", job.id)

    async def _post_result(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> None:
        posted, withheld, files = [], [], []
        for image in images:
            data = await read_if_present(image.path)
            if data is None:
                withheld.append(image)
                why = "flagged by the safety checker" if image.flagged else "its file could not be read"
                log.info("job %s image %s withheld: %s", job.id, image.idx + 1, why)
                continue
            if image.flagged:
                log.info("job %s image %s posted as a spoiler: flagged, allowed here", job.id, image.idx + 1)
            posted.append(image)
            filename = f"sdbot-{job.id}-{image.idx + 1}-{image.seed}.{image.format or 'png'}"
            files.append(discord.File(io.BytesIO(data), filename=filename, spoiler=image.flagged))
        content = f"<@{job.user_id}>"
        if output is not None and output.warnings:
            content += "\n" + "\n".join(f"-# {render.clip(warning, 300)}" for warning in output.warnings)
        await self._post(
            job,
            content=render.clip(content, 2000),
            embed=render.result_embed(job, posted, withheld),
            files=files,
            view=result_view(job, posted),
        )

    async def _post(
        self,
        job: JobRow,
        *,
        content: str,
        embed: discord.Embed | None,
        files: list[discord.File],
        view: discord.ui.View | None,
    ) -> None:
        """Edit the job's reply while its token lives; otherwise post to the channel."""
        if self._token_valid(job) and job.response_message_id is not None:
            try:
                message = await self._edit_reply(
                    job, content=content, embeds=[embed] if embed else [], attachments=files,
                    view=view,
                )
                if message is not None:
                    await self._bot.store.set_message_ids(job.id, result_message_id=message.id)
                    return
            except discord.HTTPException as error:
                log.warning("job %s: editing the reply failed (%s); posting to the channel", job.id, error)
            for file in files:
                file.reset()
        channel = self._bot.get_channel(job.channel_id) or await self._bot.fetch_channel(job.channel_id)
        assert isinstance(channel, discord.abc.Messageable)
        kwargs: dict[str, Any] = {"content": content, "files": files}
        if embed is not None:
            kwargs["embed"] = embed
        if view is not None:
            kwargs["view"] = view
        message = await channel.send(**kwargs)
        await self._bot.store.set_message_ids(job.id, result_message_id=message.id)

    async def _edit_reply(self, job: JobRow, **changes: Any) -> discord.WebhookMessage | None:
        assert job.application_id and job.interaction_token and job.response_message_id
        webhook = discord.Webhook.partial(job.application_id, job.interaction_token, client=self._bot)
        try:
            return await webhook.edit_message(job.response_message_id, **changes)
        except discord.HTTPException as error:
            if "attachments" in changes:
                raise
            log.debug("job %s: progress edit failed: %s", job.id, error)
            return None

    @staticmethod
    def _token_valid(job: JobRow) -> bool:
        return (
            job.interaction_token is not None
            and time.time() < job.created_at + TOKEN_LIFETIME_S - TOKEN_MARGIN_S
        )

"""The life of one job's public reply, start to end: the acknowledgement and the "queued" text,
throttled progress edits, then the result or what went wrong.

While the interaction token is valid (15 minutes) the bot edits its own response; after that, or
after a restart that outlived the token, it posts to the channel with a mention instead, so a job a
member was told is queued always ends with a message. `Delivery` is the worker's `JobListener`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import discord

from bot import render
from bot.errors import explain
from bot.views import queued_view, result_view
from generation.errors import QueueRefused
from generation.jobs.image_files import read_if_present
from generation.jobs.scheduler import SubmitReceipt
from sdbot.store import QuotaExceeded, Store
from sdbot.types import ImageRow, JobOutput, JobRow, JobStatus

log = logging.getLogger(__name__)

TOKEN_LIFETIME_S = 15 * 60
# Leave room for the upload itself: a token about to expire is treated as expired.
TOKEN_MARGIN_S = 60
ACK_TIMEOUT_S = 10.0


class Delivery:
    def __init__(self, client: discord.Client, store: Store, *, progress_interval_s: float) -> None:
        self._client = client
        self._store = store
        self._progress_interval_s = progress_interval_s
        # Interaction tokens whose "queued" reply is still being written: events wait for it, so a
        # fast job's result is never overwritten by the older "queued" text.
        self._pending_replies: dict[str, asyncio.Event] = {}
        self._reply_ids: dict[int, int] = {}  # job id -> its reply's message id, once written
        # Notes on how a request was read (an option won over a flag in the prompt), shown with the
        # queued text and again with the result; kept in memory only, so a restart drops them.
        self._notes: dict[int, Sequence[str]] = {}
        self._tracking: dict[int, asyncio.Task[None]] = {}  # started jobs waiting for their reply
        self._running: dict[int, JobRow] = {}
        self._last_progress_edit: dict[int, float] = {}
        self._progress_tasks: dict[int, asyncio.Task[None]] = {}
        self._deliveries: set[asyncio.Task[None]] = set()

    # Acknowledgement

    async def accept(
        self,
        interaction: discord.Interaction,
        queues: Sequence[Callable[[], Awaitable[SubmitReceipt]]],
        notes: Sequence[str] = (),
    ) -> list[JobRow]:
        """Acknowledge publicly, queue each job with its `queue()` and show its place in line: the
        first job in the deferred reply (with `notes`), the others (a prompt's {a, b} choices and
        repeats) in follow-up messages that they then edit like the first.

        Every way out resolves the public "thinking..." reply: a refusal found only now (the queue
        filled meanwhile) removes it and answers privately; any other failure is written into it.
        A later job that cannot be queued any more is reported privately; the others go on."""
        await interaction.response.defer(thinking=True)
        token = interaction.token
        self._pending_replies[token] = asyncio.Event()
        accepted: list[JobRow] = []
        try:
            for queue in queues:
                try:
                    receipt = await queue()
                except (QueueRefused, QuotaExceeded) as error:
                    refusal = explain(error) or str(error)
                    if not accepted:
                        await interaction.delete_original_response()
                    else:
                        refusal = f"Only {len(accepted)} of the {len(queues)} jobs were queued: {refusal}"
                    await interaction.followup.send(refusal, ephemeral=True)
                    return accepted
                except Exception as error:  # noqa: BLE001 - whatever it was, the reply must not hang
                    log.exception("could not queue a job for interaction %s", interaction.id)
                    text = render.not_queued_text(_what_failed(error))
                    if not accepted:
                        await interaction.edit_original_response(content=text)
                    else:
                        await interaction.followup.send(text, ephemeral=True)
                    return accepted
                await self._show_queued(interaction, receipt, notes if not accepted else (), first=not accepted)
                accepted.append(receipt.job)
            return accepted
        finally:
            self._pending_replies.pop(token).set()

    async def _show_queued(
        self, interaction: discord.Interaction, receipt: SubmitReceipt, notes: Sequence[str], *, first: bool
    ) -> None:
        job = receipt.job
        if notes:
            self._notes[job.id] = notes
        content = render.queued_text(job, receipt.position, receipt.eta_s) + _small_print(notes)
        try:
            if first:
                message: discord.Message = await interaction.edit_original_response(
                    content=content, view=queued_view(job.id)
                )
            else:
                message = await interaction.followup.send(content, view=queued_view(job.id), wait=True)
        except discord.HTTPException as error:
            # The job is queued and charged: its result will be posted to the channel instead.
            log.warning("job %s: could not show its queue place (%s)", job.id, error)
            return
        self._reply_ids[job.id] = message.id
        try:
            await self._store.set_message_ids(job.id, response_message_id=message.id)
        except sqlite3.Error as error:  # kept in memory: only a restart loses it (then: the channel)
            log.warning("job %s: could not store its reply's id (%s)", job.id, error)

    async def _after_reply(self, job: JobRow) -> JobRow:
        """Wait until the job's first reply is written; the row then carries its message id."""
        event = self._pending_replies.get(job.interaction_token or "")
        if event is not None:
            try:
                await asyncio.wait_for(event.wait(), ACK_TIMEOUT_S)
            except TimeoutError:
                log.warning("job %s: its queued reply took over %s s", job.id, ACK_TIMEOUT_S)
        reply_id = self._reply_ids.get(job.id, job.response_message_id)
        return job.model_copy(update={"response_message_id": reply_id})

    # Worker events (generation.jobs.worker.JobListener). Each is handled in a task of its own: the
    # worker goes on with the next batch while Discord uploads (and rate limits) happen; `drain`
    # waits for them at shutdown.

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def drain(self, timeout_s: float) -> None:
        """Let deliveries in flight finish before the bot disconnects."""
        if self._deliveries:
            await asyncio.wait(self._deliveries, timeout=timeout_s)

    async def job_started(self, job: JobRow) -> None:
        self._tracking[job.id] = asyncio.create_task(self._track(job), name=f"started-{job.id}")

    async def _track(self, job: JobRow) -> None:
        """Progress edits start once the reply exists (the job's end cancels this wait)."""
        try:
            self._running[job.id] = await self._after_reply(job)
        finally:
            self._tracking.pop(job.id, None)

    def job_progress(self, job_id: int, step: int, total: int) -> None:
        job = self._running.get(job_id)
        if job is None or not _token_valid(job) or job.response_message_id is None:
            return
        now = time.monotonic()
        last = self._last_progress_edit.get(job_id, 0.0)
        in_flight = self._progress_tasks.get(job_id)
        if now - last < self._progress_interval_s or (in_flight and not in_flight.done()):
            return
        self._last_progress_edit[job_id] = now
        self._progress_tasks[job_id] = asyncio.create_task(
            self._edit_reply(job, content=render.progress_text(job, step, total)), name=f"progress-{job_id}"
        )

    async def job_finished(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> None:
        self._spawn(self._deliver(job, images, output), name=f"deliver-{job.id}")

    async def _deliver(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> None:
        tracking = self._tracking.pop(job.id, None)
        if tracking is not None:
            tracking.cancel()
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
        finally:
            self._reply_ids.pop(job.id, None)
            self._notes.pop(job.id, None)

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
        warnings = output.warnings if output is not None else []
        content = f"<@{job.user_id}>" + _small_print([*self._notes.get(job.id, ()), *warnings])
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
        if _token_valid(job) and job.response_message_id is not None:
            try:
                message = await self._edit_reply(
                    job, content=content, embeds=[embed] if embed else [], attachments=files, view=view
                )
                if message is not None:
                    await self._store.set_message_ids(job.id, result_message_id=message.id)
                    return
            except discord.HTTPException as error:
                log.warning("job %s: editing the reply failed (%s); posting to the channel", job.id, error)
            for file in files:
                file.reset()
        channel = self._client.get_channel(job.channel_id) or await self._client.fetch_channel(job.channel_id)
        assert isinstance(channel, discord.abc.Messageable)
        kwargs: dict[str, Any] = {"content": content, "files": files}
        if embed is not None:
            kwargs["embed"] = embed
        if view is not None:
            kwargs["view"] = view
        message = await channel.send(**kwargs)
        await self._store.set_message_ids(job.id, result_message_id=message.id)

    async def _edit_reply(self, job: JobRow, **changes: Any) -> discord.WebhookMessage | None:
        assert job.application_id and job.interaction_token and job.response_message_id
        webhook = discord.Webhook.partial(job.application_id, job.interaction_token, client=self._client)
        try:
            return await webhook.edit_message(job.response_message_id, **changes)
        except discord.HTTPException as error:
            if "attachments" in changes:
                raise
            log.debug("job %s: progress edit failed: %s", job.id, error)
            return None


def _small_print(lines: Sequence[str]) -> str:
    return "".join(f"\n-# {render.clip(line, 300)}" for line in lines)


def _token_valid(job: JobRow) -> bool:
    return job.interaction_token is not None and time.time() < job.created_at + TOKEN_LIFETIME_S - TOKEN_MARGIN_S


def _what_failed(error: BaseException) -> str:
    """The public words for an unexpected failure while queueing: a full disk is named as such."""
    text = str(error).lower()
    if isinstance(error, sqlite3.Error | OSError) and ("disk is full" in text or "no space left" in text):
        return "the bot's disk is full, so the job could not be saved"
    return "something went wrong on our side (it has been logged)"

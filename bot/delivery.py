"""The life of one job's public reply, start to end: the acknowledgement and the "queued" text,
throttled progress edits (with a live preview picture when the engine makes them), then the result
or what went wrong; the result's edit replaces the preview's attachment.

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
from dataclasses import dataclass
from typing import Any

import discord

from bot import render
from bot.describing import describe_embed, describe_view, thumbnail_png
from bot.errors import explain
from bot.views import queued_view, result_view
from generation.errors import QueueRefused
from generation.jobs.image_files import read_if_present
from generation.jobs.scheduler import SubmitReceipt
from generation.png_info import read_made_with
from sdbot.store import QuotaExceeded, Store
from sdbot.types import ImageRow, JobKind, JobOutput, JobRow, JobStatus

log = logging.getLogger(__name__)

TOKEN_LIFETIME_S = 15 * 60
# Leave room for the upload itself: a token about to expire is treated as expired.
TOKEN_MARGIN_S = 60
ACK_TIMEOUT_S = 10.0
# How far back in a channel a resumed delivery looks for a post the last run made of it.
RESUME_LOOKBACK = 50


# (queued jobs served before it, seconds until done) of a queued job; None once it left the queue.
PositionLookup = Callable[[int], tuple[int, float] | None]


@dataclass
class _QueuedReply:
    """A "queued" reply kept current: the place it shows and when it was last edited."""

    job: JobRow  # with its reply's message id
    ahead: int
    edited_at: float
    task: asyncio.Task[None] | None = None


class Delivery:
    def __init__(
        self,
        client: discord.Client,
        store: Store,
        *,
        progress_interval_s: float,
        queue_update_interval_s: float,
        position: PositionLookup,
        preview_interval_s: float = 0.0,
    ) -> None:
        self._client = client
        self._store = store
        # A running job's message is edited at most this often, previews or not.
        self._progress_interval_s = max(progress_interval_s, preview_interval_s)
        self._queue_update_interval_s = queue_update_interval_s
        self._position = position
        self._queued: dict[int, _QueuedReply] = {}  # job id -> its "queued" reply, while it waits
        self._waiting: str | None = None  # why the queue does not move yet, shown instead of an ETA
        self._queue_edits: set[asyncio.Task[None]] = set()
        # Interaction tokens whose "queued" reply is still being written: events wait for it, so a
        # fast job's result is never overwritten by the older "queued" text.
        self._pending_replies: dict[str, asyncio.Event] = {}
        self._reply_ids: dict[int, int] = {}  # job id -> its reply's message id, once written
        # Notes on how a request was read (an option won over a flag in the prompt), shown with the
        # queued text and again with the result; kept in memory only, so a restart drops them.
        self._notes: dict[int, Sequence[str]] = {}
        self._tracking: dict[int, asyncio.Task[None]] = {}  # started jobs waiting for their reply
        self._running: dict[int, JobRow] = {}
        # job id -> when its message was last edited (the edit's end, moved later by a rate limit)
        self._last_progress_edit: dict[int, float] = {}
        self._progress_tasks: dict[int, asyncio.Task[None]] = {}
        self._previews: dict[int, bytes] = {}  # job id -> its newest preview not yet shown
        self._deliveries: set[asyncio.Task[None]] = set()
        # Jobs the last run ended but had not recorded as posted: it may have posted them just before.
        self._resumed: set[int] = set()

    # Acknowledgement

    async def accept(
        self,
        interaction: discord.Interaction,
        queues: Sequence[Callable[[], Awaitable[SubmitReceipt]]],
        notes: Sequence[str] = (),
    ) -> list[JobRow]:
        """Queue each job with its `queue()`, acknowledge publicly and show each place in line: the
        first job in the deferred reply (with `notes`), the others (a prompt's {a, b} choices and
        repeats) in follow-up messages that they then edit like the first.

        The first job's row (with the interaction token) is committed before Discord hears
        anything, so a hard kill after the public "thinking..." loses nothing: the next start runs
        the job and edits that reply. A refusal found only now (the queue filled meanwhile) or a
        failure to store the first job (a full disk) is answered privately, with nothing
        acknowledged or charged. A later job that cannot be queued is reported privately; the
        others go on."""
        token = interaction.token
        # Registered before the job can start: its result waits for the "queued" text to be written.
        self._pending_replies[token] = asyncio.Event()
        accepted: list[JobRow] = []
        try:
            first, *rest = queues
            try:
                receipt = await first()
            except (QueueRefused, QuotaExceeded) as error:
                await interaction.response.send_message(explain(error) or str(error), ephemeral=True)
                return accepted
            except Exception as error:  # whatever it was, the member gets an answer
                log.exception("could not queue a job for interaction %s", interaction.id)
                await interaction.response.send_message(render.not_queued_text(_what_failed(error)), ephemeral=True)
                return accepted
            accepted.append(receipt.job)
            try:
                await interaction.response.defer(thinking=True)
            except discord.HTTPException as error:
                # Discord gave up waiting: the job is queued and charged, its result goes to the channel.
                log.warning("job %s: could not acknowledge its interaction (%s)", receipt.job.id, error)
                return accepted
            await self._show_queued(interaction, receipt, notes, first=True)
            for queue in rest:
                try:
                    receipt = await queue()
                except Exception as error:  # the first is queued: say what became of the others
                    if isinstance(error, QueueRefused | QuotaExceeded):
                        why = explain(error) or str(error)
                    else:
                        log.exception("could not queue a job for interaction %s", interaction.id)
                        why = _what_failed(error)
                    await interaction.followup.send(
                        f"Only {len(accepted)} of the {len(queues)} jobs were queued: {why}", ephemeral=True
                    )
                    return accepted
                await self._show_queued(interaction, receipt, (), first=False)
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
        content = render.queued_text(job, receipt.position, receipt.eta_s, self._waiting) + _small_print(notes)
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
        # Still queued (no await since the check): its reply follows the queue from now on.
        if self._position(job.id) is not None:
            shown = job.model_copy(update={"response_message_id": message.id})
            self._queued[job.id] = _QueuedReply(shown, receipt.position, time.monotonic())
            self._queue_moved()  # a newcomer can go ahead of others (fair shares)
        try:
            await self._store.set_reply_id(job.id, message.id)
        except sqlite3.Error as error:  # kept in memory: only a restart loses it (then: the channel)
            log.warning("job %s: could not store its reply's id (%s)", job.id, error)

    # The live queue: every "queued" reply shows its current place, edited when it changes, at most
    # once per SDBOT_QUEUE_UPDATE_INTERVAL_S per message (Discord rate-limits webhook edits).

    @property
    def waiting(self) -> str | None:
        """Why the queue does not move yet (no engine serves it), else None."""
        return self._waiting

    def queue_waiting(self, why: str | None) -> None:
        """No engine serves the queue yet (`why` is said instead of an ETA), or None: it does now.
        Every "queued" reply is edited to say so."""
        if why == self._waiting:
            return
        self._waiting = why
        for reply in self._queued.values():
            reply.ahead = -1  # differs from any place: the next look at the queue edits the reply
        self._queue_moved()

    def _queue_moved(self) -> None:
        for reply in self._queued.values():
            if reply.task is None or reply.task.done():
                reply.task = asyncio.create_task(self._follow_queue(reply), name=f"queued-{reply.job.id}")
                self._queue_edits.add(reply.task)
                reply.task.add_done_callback(self._queue_edits.discard)

    async def _follow_queue(self, reply: _QueuedReply) -> None:
        """Edit the reply while its place differs from the one shown; ends once they agree."""
        while True:
            await asyncio.sleep(max(0.0, reply.edited_at + self._queue_update_interval_s - time.monotonic()))
            place = self._position(reply.job.id)
            if place is None or place[0] == reply.ahead or not _token_valid(reply.job):
                return
            reply.ahead, reply.edited_at = place[0], time.monotonic()
            await self._edit_reply(reply.job, content=render.queued_text(reply.job, *place, self._waiting))

    def _stop_following(self, job_id: int) -> asyncio.Task[None] | None:
        """The job left the queue. Await the returned task before the reply's next edit, so an
        older "queued" text never lands after it."""
        reply = self._queued.pop(job_id, None)
        if reply is None or reply.task is None:
            return None
        reply.task.cancel()
        return reply.task

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
        """Let deliveries in flight finish before the bot disconnects; queue edits are dropped."""
        for task in list(self._queue_edits):
            task.cancel()
        if self._deliveries:
            await asyncio.wait(self._deliveries, timeout=timeout_s)

    async def job_started(self, job: JobRow) -> None:
        queue_edit = self._stop_following(job.id)
        self._tracking[job.id] = asyncio.create_task(self._track(job, queue_edit), name=f"started-{job.id}")
        self._queue_moved()

    async def _track(self, job: JobRow, queue_edit: asyncio.Task[None] | None) -> None:
        """Progress edits start once the reply exists (the job's end cancels this wait)."""
        try:
            await _settled(queue_edit)
            self._running[job.id] = await self._after_reply(job)
        finally:
            self._tracking.pop(job.id, None)

    def job_progress(self, job_id: int, step: int, total: int) -> None:
        self._show_progress(job_id, step, total)

    def job_preview(self, job_id: int, step: int, total: int, image: bytes) -> None:
        """Keep the newest preview; the next progress edit the rate allows carries it."""
        if job_id in self._running:
            self._previews[job_id] = image
            self._show_progress(job_id, step, total)

    def _show_progress(self, job_id: int, step: int, total: int) -> None:
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
            self._edit_progress(job, step, total, self._previews.pop(job_id, None)), name=f"progress-{job_id}"
        )

    async def _edit_progress(self, job: JobRow, step: int, total: int, preview: bytes | None) -> None:
        """One progress edit; with a preview, its picture replaces the one shown. The next edit
        waits a whole interval from this one's end, so a 429 that discord.py waits out (its
        `retry_after`) pauses this message's edits; one it raises instead pauses them for the
        `Retry-After` it names."""
        changes: dict[str, Any] = {"content": render.progress_text(job, step, total)}
        if preview is not None:
            changes["attachments"] = [discord.File(io.BytesIO(preview), filename=f"sdbot-{job.id}-preview.jpg")]
        pause = 0.0
        try:
            await self._edit_reply(job, **changes)
        except discord.HTTPException as error:  # `_edit_reply` raises for edits with files; a preview may fail
            log.debug("job %s: preview edit failed: %s", job.id, error)
            if error.status == 429:
                pause = float(error.response.headers.get("Retry-After", 1.0))
        if job.id in self._running:
            self._last_progress_edit[job.id] = time.monotonic() + pause

    async def job_finished(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> None:
        self._spawn(self._deliver(job, images, output), name=f"deliver-{job.id}")
        self._queue_moved()  # a job cancelled while queued leaves a gap

    async def _deliver(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> None:
        tracking = self._tracking.pop(job.id, None)
        if tracking is not None:
            tracking.cancel()
        self._running.pop(job.id, None)
        self._last_progress_edit.pop(job.id, None)
        self._previews.pop(job.id, None)
        progress = self._progress_tasks.pop(job.id, None)
        if progress is not None:
            progress.cancel()
            await _settled(progress)  # no progress or preview edit lands after the result
        await _settled(self._stop_following(job.id))
        job = await self._after_reply(job)
        try:
            if job.status == JobStatus.DONE:
                message_id = await self._post_result(job, images, output)
            else:
                message_id = await self._post(job, content=render.ended_text(job), embed=None, files=[], view=None)
        except (discord.Forbidden, discord.NotFound) as error:
            # No retry at the next start would fare better (the channel is gone or closed to the bot).
            log.warning("job %s: its result cannot be posted (%s)", job.id, error)
            await self._store.mark_delivered(job.id, None)
        except Exception:
            log.exception("job %s: could not deliver its result; the next start tries again", job.id)
        else:
            await self._store.mark_delivered(job.id, message_id)
        finally:
            self._reply_ids.pop(job.id, None)
            self._resumed.discard(job.id)
            self._notes.pop(job.id, None)

    async def resume(self) -> None:
        """Post the ends the last run stored but had not posted yet (it was killed in between)."""
        for job in await self._store.undelivered_jobs():
            images = await self._store.images(job.id) if job.status == JobStatus.DONE else []
            self._resumed.add(job.id)
            self._spawn(self._deliver(job, images, None), name=f"deliver-{job.id}")

    async def _post_result(self, job: JobRow, images: list[ImageRow], output: JobOutput | None) -> int:
        if job.kind is JobKind.DESCRIBE:
            return await self._post_description(job)
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
        # The engine repeats on the result what the queued reply noted (FLUX's limits): once is enough.
        content = f"<@{job.user_id}>" + _small_print(list(dict.fromkeys([*self._notes.get(job.id, ()), *warnings])))
        source = await self._store.get_job(job.source_job_id) if job.source_job_id is not None else None
        return await self._post(
            job,
            content=render.clip(content, 2000),
            embed=render.result_embed(job, posted, withheld, source),
            files=files,
            view=result_view(job, posted),
        )

    async def _post_description(self, job: JobRow) -> int:
        """A /describe answer: the picture's metadata (if any), the suggestions and their buttons."""
        suggestions = await self._store.suggestions(job.id)
        source = await read_if_present(job.source_path)
        made_with, files, thumbnail = None, [], None
        if source is not None:
            made_with = await asyncio.to_thread(read_made_with, source)
            thumbnail = f"describe-{job.id}.png"
            files.append(discord.File(io.BytesIO(await asyncio.to_thread(thumbnail_png, source)), filename=thumbnail))
        content = f"<@{job.user_id}>" + _small_print(self._notes.get(job.id, ()))
        return await self._post(
            job,
            content=render.clip(content, 2000),
            embed=describe_embed(job, suggestions, made_with, thumbnail),
            files=files,
            view=describe_view(job, suggestions, made_with),
        )

    async def _post(
        self,
        job: JobRow,
        *,
        content: str,
        embed: discord.Embed | None,
        files: list[discord.File],
        view: discord.ui.View | None,
    ) -> int:
        """Edit the job's reply while its token lives; otherwise post to the channel. Returns the
        message's id. Editing is idempotent: a result posted again after a restart replaces itself."""
        if _token_valid(job):
            try:
                message = await self._edit_reply(
                    job, content=content, embeds=[embed] if embed else [], attachments=files, view=view
                )
                if message is not None:
                    return message.id
            except discord.HTTPException as error:
                log.warning("job %s: editing the reply failed (%s); posting to the channel", job.id, error)
            for file in files:
                file.reset()
        channel = self._client.get_channel(job.channel_id) or await self._client.fetch_channel(job.channel_id)
        assert isinstance(channel, discord.abc.Messageable)
        if job.id in self._resumed and (earlier := await self._posted_before(channel, job)) is not None:
            return earlier.id  # a channel post cannot be edited into itself: look before posting again
        kwargs: dict[str, Any] = {"content": content, "files": files}
        if embed is not None:
            kwargs["embed"] = embed
        if view is not None:
            kwargs["view"] = view
        return (await channel.send(**kwargs)).id

    async def _posted_before(self, channel: discord.abc.Messageable, job: JobRow) -> discord.Message | None:
        """The bot's own recent channel message naming this job, if the last run posted it."""
        name = render.describe(job)
        async for message in channel.history(limit=RESUME_LOOKBACK):
            if message.author == self._client.user and (
                name in message.content or any(embed.title == name for embed in message.embeds)
            ):
                return message
        return None

    async def _edit_reply(self, job: JobRow, **changes: Any) -> discord.WebhookMessage | None:
        """Edit the reply by its id, or, when this process never learnt it (killed after the
        acknowledgement), as the interaction's original response."""
        assert job.application_id and job.interaction_token
        webhook = discord.Webhook.partial(job.application_id, job.interaction_token, client=self._client)
        # discord.py puts the id into the URL as it is; Discord accepts "@original" there.
        message_id: Any = job.response_message_id or "@original"
        try:
            return await webhook.edit_message(message_id, **changes)
        except discord.HTTPException as error:
            if "attachments" in changes:
                raise
            log.debug("job %s: progress edit failed: %s", job.id, error)
            return None


async def _settled(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)


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

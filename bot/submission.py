"""Turning a member's request (a command or a button) into a queued job.

Every path goes through `submit`: the checks that can refuse (prompt, parameters, queue limit,
quota) run before anything is answered, so a refusal is an ephemeral message that changes nothing;
an accepted job is stored, charged and queued, and the member sees its place in the queue.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import discord

from bot import render
from bot.attachments import save_upload
from bot.errors import UserError, explain, reply_with_error
from bot.files import read_if_present
from bot.permissions import is_moderator
from bot.views import Action, queued_view
from generation.errors import QueueRefused
from generation.prompt_check import check_prompt
from generation.types import MAX_SEED, GenerationParams, JobKind, JobStatus, PipelineKind
from sdbot.store import ImageRow, JobRow, NewJob, QuotaExceeded

if TYPE_CHECKING:
    from bot.client import SDBot

log = logging.getLogger(__name__)

ASPECTS = {"1:1": (1, 1), "2:3": (2, 3), "3:2": (3, 2), "16:9": (16, 9), "9:16": (9, 16)}
DEFAULT_STRENGTH = 0.6
UPSCALE_STEPS = 20  # what the x2 latent upscaler is tuned for
SIZE_MULTIPLE = 64


def random_seeds(count: int, first: int | None = None) -> tuple[int, ...]:
    """`first`, `first + 1`, ... (so a seed names a whole job), or independent random seeds."""
    if first is None:
        return tuple(secrets.randbelow(MAX_SEED + 1) for _ in range(count))
    return tuple((first + offset) % (MAX_SEED + 1) for offset in range(count))


def size_for(aspect: str, native: int, *, min_size: int, max_size: int) -> tuple[int, int]:
    """Width and height with about the model's native pixel count, in multiples of 64."""
    if aspect not in ASPECTS:
        raise UserError(f"`{aspect}` is not an aspect ratio I know; choose one of {', '.join(ASPECTS)}.")
    ratio_w, ratio_h = ASPECTS[aspect]
    return fit(native * native, ratio_w / ratio_h, min_size=min_size, max_size=max_size)


def fit(area: float, ratio: float, *, min_size: int, max_size: int) -> tuple[int, int]:
    width, height = math.sqrt(area * ratio), math.sqrt(area / ratio)

    def snap(side: float) -> int:
        snapped = max(SIZE_MULTIPLE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE)
        return min(max(snapped, min_size), max_size)

    return snap(width), snap(height)


def _bot(interaction: discord.Interaction) -> SDBot:
    return cast("SDBot", interaction.client)


def _allow_flagged(interaction: discord.Interaction, spoilers_allowed: bool) -> bool:
    """Flagged images may be shown (as spoilers) only in age-restricted channels that allow it."""
    channel = interaction.channel
    is_nsfw = bool(channel is not None and getattr(channel, "is_nsfw", lambda: False)())
    return is_nsfw and spoilers_allowed


async def submit(
    interaction: discord.Interaction,
    *,
    kind: JobKind,
    params: GenerationParams,
    source: ImageRow | None = None,
    source_path: Path | None = None,
) -> JobRow | None:
    """Check, store, charge and queue one job, answering the interaction. None when refused."""
    bot = _bot(interaction)
    assert interaction.guild_id is not None
    settings = bot.settings
    check_prompt(params.prompt, settings.blocked_words)
    params = params.model_copy(
        update={
            "max_file_bytes": interaction.filesize_limit,
            "return_flagged": _allow_flagged(
                interaction, await bot.store.nsfw_spoilers_allowed(interaction.guild_id)
            ),
        }
    )
    source_image = await read_if_present(source_path)
    if source_path is None or source_image is not None:
        # A missing source file is regenerated from its seed by the worker, which checks it then.
        bot.validate(params.model_copy(update={"source_image": source_image}))
    flow = (interaction.guild_id, interaction.user.id)
    # One member's requests are checked and queued one at a time, so a burst of commands sees the
    # jobs queued just before it and is refused up front rather than after the reply started.
    async with bot.member_locks[flow]:
        bot.scheduler.check_can_submit(flow)
        quota = await bot.store.quota(*flow)
        if quota.limit is not None and quota.used + params.image_count > quota.limit:
            raise QuotaExceeded(quota.limit, quota.used, params.image_count, quota.resets_at)
        await interaction.response.defer(thinking=True)
        token = interaction.token
        bot.delivery.hold(token)
        try:
            return await _queue(interaction, bot, kind, params, source, source_path)
        finally:
            bot.delivery.release(token)


async def _queue(
    interaction: discord.Interaction,
    bot: SDBot,
    kind: JobKind,
    params: GenerationParams,
    source: ImageRow | None,
    source_path: Path | None,
) -> JobRow | None:
    assert interaction.guild_id is not None
    try:
        receipt = await bot.scheduler.submit(
            NewJob(
                kind=kind,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id or 0,
                user_id=interaction.user.id,
                params=params,
                model_id=bot.model.model_id,
                source_job_id=source.job_id if source else None,
                source_index=source.idx if source else None,
                source_path=str(source_path) if source_path else None,
                application_id=interaction.application_id,
                interaction_token=interaction.token,
            )
        )
    except (QueueRefused, QuotaExceeded) as error:
        # The queue filled up with other members' jobs since the check: still nothing charged.
        await interaction.delete_original_response()
        await interaction.followup.send(explain(error) or str(error), ephemeral=True)
        return None
    try:
        message = await interaction.edit_original_response(
            content=render.queued_text(receipt.job, receipt.position, receipt.eta_s),
            view=queued_view(receipt.job.id),
        )
    except discord.HTTPException as error:
        # The job is queued and charged: its result will be posted to the channel instead.
        log.warning("job %s: could not show its queue place (%s)", receipt.job.id, error)
        return receipt.job
    await bot.store.set_message_ids(receipt.job.id, response_message_id=message.id)
    return receipt.job


async def find_job(interaction: discord.Interaction, job_id: int) -> JobRow:
    """A job of this guild, or a friendly "not found" (ids of other guilds are not found)."""
    job = await _bot(interaction).store.get_job(job_id, guild_id=interaction.guild_id)
    if job is None:
        raise UserError(f"There is no job #{job_id} in this server. `/history` lists your jobs.")
    return job


async def find_image(
    interaction: discord.Interaction, job_id: int, number: int
) -> tuple[JobRow, ImageRow, Path]:
    """A posted image of a job, with its file (which the worker regenerates if it went missing)."""
    job = await find_job(interaction, job_id)
    if job.status != JobStatus.DONE:
        raise UserError(f"Job #{job_id} is {job.status.value}; it has no images yet.")
    images = await _bot(interaction).store.images(job.id)
    if not 1 <= number <= len(images):
        raise UserError(f"Job #{job_id} has {len(images)} image(s); pick a number from 1 to {len(images)}.")
    image = images[number - 1]
    if image.path is None:
        raise UserError(f"Image {number} of job #{job_id} was withheld by the safety checker.")
    return job, image, Path(image.path)


@dataclass(frozen=True)
class Upload:
    """A picture a member uploaded, checked and stored as PNG."""

    path: Path
    width: int
    height: int


async def pick_source(
    interaction: discord.Interaction,
    job: int | None,
    index: int | None,
    image: discord.Attachment | None,
) -> tuple[JobRow, ImageRow, Path] | Upload:
    """The picture /variations or /upscale works on: an image of a job here, or an upload."""
    if (job is None) == (image is None):
        raise UserError("Give either `job` and `index` (an image made here) or `image` (an upload).")
    if job is not None:
        if index is None:
            raise UserError(f"Which image of job #{job}? Add `index` (1-4).")
        return await find_image(interaction, job, index)
    assert image is not None
    settings = _bot(interaction).settings
    return Upload(
        *await save_upload(image, max_pixels=settings.max_upload_pixels, folder=settings.output_dir / "uploads")
    )


async def submit_variations(
    interaction: discord.Interaction,
    job: JobRow,
    image: ImageRow,
    path: Path,
    *,
    prompt: str | None = None,
    strength: float | None = None,
    count: int | None = None,
) -> None:
    bot = _bot(interaction)
    params = GenerationParams(
        pipeline=PipelineKind.IMG2IMG,
        prompt=prompt if prompt is not None else job.prompt,
        negative_prompt=job.negative_prompt,
        seeds=random_seeds(count or bot.settings.max_count),
        steps=job.steps,
        guidance=job.guidance,
        width=image.width,
        height=image.height,
        strength=DEFAULT_STRENGTH if strength is None else strength,
    )
    await submit(interaction, kind=JobKind.VARIATION, params=params, source=image,
                 source_path=path)


async def submit_upscale(
    interaction: discord.Interaction, job: JobRow, image: ImageRow, path: Path
) -> None:
    params = GenerationParams(
        pipeline=PipelineKind.UPSCALE,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        seeds=random_seeds(1),
        steps=UPSCALE_STEPS,
        guidance=0.0,
        # The upscaler takes the source size and returns twice that.
        width=image.width,
        height=image.height,
    )
    await submit(interaction, kind=JobKind.UPSCALE, params=params, source=image,
                 source_path=path)


async def submit_reroll(interaction: discord.Interaction, job: JobRow, seed: int | None = None) -> None:
    """The same parameters again: with `seed`, one image that reproduces that seed's image."""
    if job.pipeline != PipelineKind.TEXT2IMG and job.source_path is None:
        raise UserError(f"Job #{job.id} has no source picture left to reroll from.")
    seeds = (seed,) if seed is not None else random_seeds(job.image_count)
    params = job.params().model_copy(update={"seeds": seeds})
    source = None
    if job.source_job_id is not None and job.source_index is not None:
        images = await _bot(interaction).store.images(job.source_job_id)
        source = next((i for i in images if i.idx == job.source_index), None)
    await submit(interaction, kind=JobKind.REROLL, params=params, source=source,
                 source_path=Path(job.source_path) if job.source_path else None)


async def cancel(interaction: discord.Interaction, job_id: int) -> None:
    """Cancel a queued or running job: the owner's own, or anyone's for a moderator."""
    bot = _bot(interaction)
    job = await find_job(interaction, job_id)
    is_owner = job.user_id == interaction.user.id
    if not (is_owner or is_moderator(interaction.user)):
        raise UserError(f"Job #{job_id} belongs to someone else; only they or a moderator can cancel it.")
    if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        raise UserError(f"Job #{job_id} has already ended ({job.status.value}).")
    reason = "by its owner" if is_owner else f"by moderator {interaction.user.display_name}"
    if not await bot.scheduler.cancel(job_id, reason):
        raise UserError(f"Job #{job_id} has just ended; there is nothing to cancel.")
    if not is_owner:
        await bot.store.audit(job.guild_id, interaction.user.id, "job.cancel", job.user_id, {"job_id": job_id})
    await interaction.response.send_message(
        f"Cancelled job #{job_id}; its images were refunded.", ephemeral=True
    )


async def handle_button(interaction: discord.Interaction, action: Action, job_id: int, number: int | None) -> None:
    """A result or queue button: a new job for whoever pressed it, with the same checks."""
    try:
        if action == Action.CANCEL:
            await cancel(interaction, job_id)
        elif action == Action.REROLL:
            await submit_reroll(interaction, await find_job(interaction, job_id))
        else:
            found = await find_image(interaction, job_id, number or 1)
            if action == Action.UPSCALE:
                await submit_upscale(interaction, *found)
            else:
                await submit_variations(interaction, *found)
    except Exception as error:  # noqa: BLE001 - buttons have no command tree: same error path
        await reply_with_error(interaction, error)

"""What the bot's messages say: queue status, progress, results and job records."""

from __future__ import annotations

import discord

from generation.requests import lora_text
from sdbot.types import Edit, EditOp, ImageRow, JobKind, JobRow, JobStatus

EMBED_COLOUR = discord.Colour.from_rgb(88, 101, 242)
_KIND_VERB = {
    JobKind.IMAGINE: "Imagine",
    JobKind.VARIATION: "Variations",
    JobKind.UPSCALE: "Upscale",
    JobKind.REROLL: "Reroll",
    JobKind.DESCRIBE: "Describe",
}


def edit_name(edit: Edit) -> str:
    """What the member pressed or typed: `Zoom Out 2x`, `Pan right`, `Vary (Region center)`."""
    match edit.op:
        case EditOp.ZOOM_OUT:
            return f"Zoom Out {edit.label}"
        case EditOp.PAN:
            return f"Pan {edit.label}"
        case EditOp.REGION:
            return f"Vary (Region {edit.label})"


def edit_text(edit: Edit, width: int, height: int) -> str:
    """The edit's geometry, for /job: where the source sits on the canvas and what was repainted."""
    x, y, w, h = edit.place
    text = f"{edit_name(edit)}: source at {x},{y} as {w}×{h} on a {width}×{height} canvas"
    if edit.mask is not None:
        mx, my, mw, mh = edit.mask
        text += f", box {mx},{my} {mw}×{mh} repainted"
    elif edit.mask_image is not None:
        text += ", the white of the uploaded mask repainted"
    else:
        text += ", the rest repainted"
    return f"{text}, feather {edit.feather} px"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(job: JobRow) -> str:
    """`Imagine #12 “a cat in a hat”`: how a job is named in every message."""
    subject = f" “{clip(job.prompt, 80)}”" if job.prompt else ""
    verb = edit_name(job.edit) if job.edit is not None and job.kind is JobKind.VARIATION else _KIND_VERB[job.kind]
    return f"{verb} #{job.id}{subject}"


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds} s" if seconds < 90 else f"{seconds // 60} min {seconds % 60:02d} s"


def place_in_line(ahead: int) -> str:
    """The scheduler counts the jobs ahead; people count from 1."""
    return "next in line" if ahead == 0 else f"position {ahead + 1} in the queue"


# Said instead of an ETA while no engine serves the queue (there is no rate to estimate from).
WARMING_UP = "the model is warming up, so it starts as soon as the model has loaded"
LOAD_FAILED = "the model could not be loaded, so it waits until the bot is restarted with a working model"


def queued_text(job: JobRow, ahead: int, eta_s: float, waiting: str | None = None) -> str:
    """`waiting`: why the queue does not move yet (WARMING_UP, LOAD_FAILED), said instead of an ETA."""
    if waiting:
        return f"⏳ {describe(job)} is queued: {place_in_line(ahead)}; {waiting}."
    return f"⏳ {describe(job)} is queued: {place_in_line(ahead)}, ready in about {duration(eta_s)}."


def not_queued_text(what_failed: str) -> str:
    """A request that could not be stored and queued (said privately, before any acknowledgement)."""
    return f"⚠️ This request could not be queued: {what_failed}. Nothing was charged; please try again later."


def progress_text(job: JobRow, step: int, total: int) -> str:
    filled = round(10 * step / total) if total else 0
    bar = "▰" * filled + "▱" * (10 - filled)
    return f"🎨 {describe(job)}: generating {bar} step {step}/{total}"


def ended_text(job: JobRow) -> str:
    """Failed or cancelled: what happened and that nothing was charged."""
    images = f"{job.image_count} image was" if job.image_count == 1 else f"{job.image_count} images were"
    refund = "Nothing was charged" if job.kind is JobKind.DESCRIBE else f"Your {images} refunded"
    if job.status == JobStatus.CANCELLED:
        return f"🛑 {describe(job)} was cancelled ({job.status_reason}). {refund}."
    again = "/describe again" if job.kind is JobKind.DESCRIBE else f"`/reroll job:{job.id}`"
    return f"⚠️ {describe(job)} failed: {job.status_reason}. {refund}; use {again} to try again."


def message_link(job: JobRow) -> str | None:
    """A link that opens the message with the job's result, once it is posted."""
    if job.result_message_id is None:
        return None
    return f"https://discord.com/channels/{job.guild_id}/{job.channel_id}/{job.result_message_id}"


def _add_source(embed: discord.Embed, job: JobRow, source: JobRow | None) -> None:
    """Which image a variation, upscale or edit was made from, linked to its message if posted."""
    if job.source_job_id is None:
        return
    text = f"job #{job.source_job_id}, image {(job.source_index or 0) + 1}"
    link = message_link(source) if source is not None else None
    embed.add_field(name="From", value=f"[{text}]({link})" if link else text)


def result_embed(
    job: JobRow, images: list[ImageRow], withheld: list[ImageRow], source: JobRow | None = None
) -> discord.Embed:
    """A posted result; `source` is the job it was made from, if any."""
    embed = discord.Embed(
        title=clip(describe(job), 256),
        description=clip(job.prompt, 4000) if job.prompt else None,
        colour=EMBED_COLOUR,
    )
    if job.negative_prompt:
        embed.add_field(name="Negative prompt", value=clip(job.negative_prompt, 1024), inline=False)
    seeds = ", ".join(f"{image.idx + 1}: `{image.seed}`" for image in images + withheld)
    embed.add_field(name="Seeds", value=clip(seeds, 1024), inline=False)
    shown = images[0] if images else job  # an upscale's images are larger than the job's input
    embed.add_field(name="Size", value=f"{shown.width}×{shown.height}")
    embed.add_field(name="Steps", value=str(job.steps))
    embed.add_field(name="Guidance", value=f"{job.guidance:g}")
    if job.strength is not None:
        embed.add_field(name="Strength", value=f"{job.strength:g}")
    _add_source(embed, job, source)
    embed.add_field(name="Model", value=clip(job.model or job.model_id, 1024))
    if job.loras:
        embed.add_field(name="LoRA", value=clip(lora_text(job.loras), 1024))
    if job.started_at and job.finished_at:
        embed.add_field(name="Time", value=f"{job.finished_at - job.started_at:.1f} s")
    for flagged, reason in ((True, "was flagged by the safety checker"), (False, "could not be read from disk")):
        numbers = ", ".join(str(image.idx + 1) for image in withheld if image.flagged == flagged)
        if numbers:
            embed.add_field(name="Withheld", value=f"Image {numbers} {reason} and is not shown.", inline=False)
    embed.set_footer(text=f"Job #{job.id} · /job id:{job.id} shows how to reproduce it")
    return embed


def record_embed(
    job: JobRow, images: list[ImageRow], chunks: list[int] | None = None, source: JobRow | None = None
) -> discord.Embed:
    """The full reproducibility record of a job, for /job: the prompt as run (styles applied, flags
    taken out), as typed when that differs, and the tokens of each 75-token chunk the text encoder
    read, when the model could tell; links to its result and to the result it was made from."""
    embed = discord.Embed(title=clip(describe(job), 256), colour=EMBED_COLOUR)
    embed.description = clip(job.prompt, 2000) if job.prompt else None
    if job.typed_prompt is not None and job.typed_prompt != job.prompt:
        embed.add_field(name="As typed", value=clip(job.typed_prompt, 1024), inline=False)
    if job.styles:
        embed.add_field(name="Styles", value=clip(", ".join(job.styles), 1024), inline=False)
    status = job.status.value + (f" ({job.status_reason})" if job.status_reason else "")
    embed.add_field(name="Status", value=clip(status, 1024))
    embed.add_field(name="By", value=f"<@{job.user_id}>")
    embed.add_field(name="Created", value=f"<t:{int(job.created_at)}:f>")
    if job.negative_prompt:
        embed.add_field(name="Negative prompt", value=clip(job.negative_prompt, 1024), inline=False)
    params = f"steps {job.steps} · guidance {job.guidance:g} · {job.width}×{job.height}"
    if job.strength is not None:
        params += f" · strength {job.strength:g}"
    if job.tile:
        params += " · seamless tiling"
    if chunks:
        params += f" · {sum(chunks)} prompt tokens"
        if len(chunks) > 1:
            params += f" in {len(chunks)} chunks ({' + '.join(map(str, chunks))})"
    embed.add_field(name="Parameters", value=params, inline=False)
    if job.edit is not None:
        embed.add_field(name="Edit", value=clip(edit_text(job.edit, job.width, job.height), 1024), inline=False)
    seeds = images or []
    seed_text = ", ".join(f"{i.idx + 1}: `{i.seed}`" + (" (flagged)" if i.flagged else "") for i in seeds)
    embed.add_field(
        name="Seeds", value=clip(seed_text or ", ".join(f"`{s}`" for s in job.seeds), 1024), inline=False
    )
    record = images[0].record if images else {}
    model = f"{job.model_id} @ {job.model_revision or record.get('model_revision', '?')}"
    if job.model is not None:
        model = f"{job.model} ({model})"
    embed.add_field(name="Model", value=clip(model, 1024), inline=False)
    if job.loras:
        revisions = {lora["name"]: lora.get("revision", "?") for lora in record.get("extra", {}).get("loras", [])}
        loras = ", ".join(f"{name}:{weight:g}" + (f" @ {revisions[name]}" if name in revisions else "")
                          for name, weight in job.loras)
        embed.add_field(name="LoRA", value=clip(loras, 1024), inline=False)
    if record:
        embed.add_field(name="Scheduler", value=str(record.get("scheduler", "?")))
        embed.add_field(name="Device", value=f"{record.get('device', '?')} · {record.get('dtype', '?')}")
        versions = record.get("versions", {})
        embed.add_field(
            name="Versions",
            value=clip(" · ".join(f"{name} {version}" for name, version in versions.items()), 1024),
            inline=False,
        )
    _add_source(embed, job, source)
    if (link := message_link(job)) is not None:
        embed.add_field(name="Posted", value=f"[go to the result]({link})")
    pruned = [image for image in images if image.pruned_at is not None]
    if pruned:
        numbers = ", ".join(str(image.idx + 1) for image in pruned)
        embed.add_field(
            name="Files pruned",
            value=f"The file of image {numbers} was deleted <t:{int(pruned[0].pruned_at or 0)}:R> (retention); "
            "the U and V buttons make it again from its seed.",
            inline=False,
        )
    if images:
        embed.set_footer(
            text=f"/reroll job:{job.id} seed:{images[0].seed} reproduces image 1"
        )
    return embed

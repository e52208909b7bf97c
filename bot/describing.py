"""The /describe answer: the picture's thumbnail, what its metadata says it was made with, four
numbered prompt suggestions, and the buttons `1`-`4`, `🔄` and "Reuse these settings".

Everything shown comes from an upload or a captioner, so it is data: inside code blocks (backticks
cannot close them) in an embed (which never pings anyone). The buttons are `bot.views.JobButton`s:
persistent, pressed like the result buttons.
"""

from __future__ import annotations

import io

import discord
from PIL import Image

from bot.render import EMBED_COLOUR, clip, describe
from bot.views import Action, JobButton
from generation.png_info import MadeWith
from sdbot.types import JobRow

THUMBNAIL_SIDE = 256
_NUMBERS = ("1️⃣", "2️⃣", "3️⃣", "4️⃣")
# A code block is closed by a backtick: uploaded text gets a look-alike instead (U+02CB).
_BACKTICK_STANDIN = "ˋ"


def describe_view(job: JobRow, suggestions: list[str], made_with: MadeWith | None) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for number in range(1, len(suggestions) + 1):
        view.add_item(JobButton(Action.PROMPT, job.id, number, row=0))
    view.add_item(JobButton(Action.DESCRIBE, job.id, row=0))
    if made_with is not None and made_with.prompt:
        view.add_item(JobButton(Action.REUSE, job.id, row=1))
    return view


def code_block(text: str, limit: int) -> str:
    """`text` as an inert code block of at most `limit` characters."""
    return f"```\n{clip(text.replace('`', _BACKTICK_STANDIN), limit - 8)}\n```"


def made_with_lines(made_with: MadeWith) -> str:
    """prompt, negative, then seed, steps, sampler, size, model: one line each, as plain text."""
    lines = [f"prompt: {made_with.prompt}"]
    if made_with.negative_prompt:
        lines.append(f"negative: {made_with.negative_prompt}")
    size = f"{made_with.width}x{made_with.height}" if made_with.width and made_with.height else None
    for name, value in (("seed", made_with.seed), ("steps", made_with.steps), ("guidance", made_with.guidance),
                        ("sampler", made_with.sampler), ("size", size), ("model", made_with.model)):
        if value is not None:
            lines.append(f"{name}: {value:g}" if isinstance(value, float) else f"{name}: {value}")
    return "\n".join(lines)


def describe_embed(
    job: JobRow, suggestions: list[str], made_with: MadeWith | None, thumbnail: str | None
) -> discord.Embed:
    parts = []
    if made_with is not None:
        parts.append(f"**Made with** ({clip(made_with.generator, 40)}):\n{code_block(made_with_lines(made_with), 1500)}")
    if suggestions:
        parts.append("**Prompts** (press a number to imagine one):")
        parts += [f"{_NUMBERS[index]} {code_block(text, 550)}" for index, text in enumerate(suggestions)]
    else:
        parts.append("No prompt could be made from this picture; press 🔄 to try again.")
    embed = discord.Embed(title=clip(describe(job), 256), description="\n".join(parts), colour=EMBED_COLOUR)
    if thumbnail is not None:
        embed.set_thumbnail(url=f"attachment://{thumbnail}")
    embed.set_footer(text=f"Job #{job.id} · the buttons imagine in the picture's shape ({job.width}×{job.height})")
    return embed


def thumbnail_png(data: bytes) -> bytes:
    """A small PNG of the picture's first frame (blocking: run it on a thread)."""
    with Image.open(io.BytesIO(data)) as image:
        picture = image.convert("RGB")
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()

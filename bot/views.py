"""Result and queue buttons. Each carries its action and job in its custom_id
(`sd:<action>:<job>[:<n>]`), so they are persistent: registered once as a dynamic item, they keep
working after a restart. A press is dispatched to the bot as the `job_button` event
(`bot.exts.buttons` handles it), so this module imports nothing above it."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Self

import discord

from sdbot.types import ImageRow, JobRow


class Action(StrEnum):
    UPSCALE = "upscale"
    VARY = "vary"
    REROLL = "reroll"
    CANCEL = "cancel"
    # Under a /describe answer: imagine suggestion n, four more suggestions, the picture's settings.
    PROMPT = "prompt"
    DESCRIBE = "describe"
    REUSE = "reuse"


_STYLE = {
    Action.REROLL: discord.ButtonStyle.primary,
    Action.CANCEL: discord.ButtonStyle.danger,
    Action.REUSE: discord.ButtonStyle.primary,
}


def _label(action: Action, number: int | None) -> str:
    match action:
        case Action.UPSCALE:
            return f"U{number}"
        case Action.VARY:
            return f"V{number}"
        case Action.REROLL:
            return "🔄 Reroll"
        case Action.CANCEL:
            return "Cancel"
        case Action.PROMPT:
            return str(number)
        case Action.DESCRIBE:
            return "🔄"
        case Action.REUSE:
            return "Reuse these settings"


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"sd:(?P<action>upscale|vary|reroll|cancel|prompt|describe|reuse):(?P<job>\d+)(?::(?P<n>[1-4]))?",
):
    """A button about one job and, for U, V and a /describe prompt, one of its images or
    suggestions (numbered from 1)."""

    def __init__(self, action: Action, job_id: int, number: int | None = None, *, row: int | None = None) -> None:
        self.action, self.job_id, self.number = action, job_id, number
        suffix = "" if number is None else f":{number}"
        super().__init__(
            discord.ui.Button(
                label=_label(action, number),
                style=_STYLE.get(action, discord.ButtonStyle.secondary),
                custom_id=f"sd:{action}:{job_id}{suffix}",
            ),
            row=row,
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        number = match["n"]
        return cls(Action(match["action"]), int(match["job"]), None if number is None else int(number))

    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        interaction.client.dispatch("job_button", interaction, self.action, self.job_id, self.number)


def result_view(job: JobRow, posted: list[ImageRow]) -> discord.ui.View:
    """U and V buttons for every posted image (none for withheld ones), and reroll."""
    view = discord.ui.View(timeout=None)
    for image in posted:
        view.add_item(JobButton(Action.UPSCALE, job.id, image.idx + 1, row=0))
    for image in posted:
        view.add_item(JobButton(Action.VARY, job.id, image.idx + 1, row=1))
    view.add_item(JobButton(Action.REROLL, job.id, row=1 if posted else 0))
    return view


def queued_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton(Action.CANCEL, job_id))
    return view

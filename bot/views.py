"""Result and queue buttons. Each carries its action and job in its custom_id
(`sd:<action>:<job>[:<n>]`), so they are persistent: registered once as a dynamic item, they keep
working after a restart. A press is dispatched to the bot as the `job_button` event
(`bot.exts.buttons` handles it), so this module imports nothing above it."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Self

import discord

from sdbot.types import ImageRow, JobRow, PipelineKind


class Action(StrEnum):
    UPSCALE = "upscale"
    VARY = "vary"
    REROLL = "reroll"
    CANCEL = "cancel"
    DELETE = "delete"  # the result message, for its owner or a moderator
    # Under a /describe answer: imagine suggestion n, four more suggestions, the picture's settings.
    PROMPT = "prompt"
    DESCRIBE = "describe"
    REUSE = "reuse"
    # The editing row under an upscaled image (issue 12).
    VARY_SUBTLE = "subtle"
    VARY_STRONG = "strong"
    ZOOM_2X = "zoom2"
    ZOOM_1_5X = "zoom15"
    PAN_LEFT = "panleft"
    PAN_RIGHT = "panright"
    PAN_UP = "panup"
    PAN_DOWN = "pandown"
    VARY_REGION = "region"


_STYLE = {
    Action.REROLL: discord.ButtonStyle.primary,
    Action.CANCEL: discord.ButtonStyle.danger,
    Action.REUSE: discord.ButtonStyle.primary,
}
_FIXED_LABELS = {
    Action.REROLL: "🔄 Reroll",
    Action.CANCEL: "Cancel",
    Action.DELETE: "🗑️",
    Action.DESCRIBE: "🔄",
    Action.REUSE: "Reuse these settings",
    Action.VARY_SUBTLE: "Vary (Subtle)",
    Action.VARY_STRONG: "Vary (Strong)",
    Action.ZOOM_2X: "Zoom Out 2x",
    Action.ZOOM_1_5X: "Zoom Out 1.5x",
    Action.PAN_LEFT: "⬅️",
    Action.PAN_RIGHT: "➡️",
    Action.PAN_UP: "⬆️",
    Action.PAN_DOWN: "⬇️",
    Action.VARY_REGION: "Vary (Region)",
}
# The editing buttons, in rows of at most five.
EDIT_ROWS = (
    (Action.VARY_SUBTLE, Action.VARY_STRONG, Action.ZOOM_2X, Action.ZOOM_1_5X, Action.VARY_REGION),
    (Action.PAN_LEFT, Action.PAN_RIGHT, Action.PAN_UP, Action.PAN_DOWN),
)


def _label(action: Action, number: int | None) -> str:
    match action:
        case Action.UPSCALE:
            return f"U{number}"
        case Action.VARY:
            return f"V{number}"
        case Action.PROMPT:
            return str(number)
        case _:
            return _FIXED_LABELS[action]


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"sd:(?P<action>{'|'.join(Action)}):(?P<job>\d+)(?::(?P<n>[1-4]))?",
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
    """U and V buttons for every posted image (none for withheld ones), reroll and delete; under
    an upscaled image, the editing rows too."""
    view = discord.ui.View(timeout=None)
    for image in posted:
        view.add_item(JobButton(Action.UPSCALE, job.id, image.idx + 1, row=0))
    for image in posted:
        view.add_item(JobButton(Action.VARY, job.id, image.idx + 1, row=1))
    view.add_item(JobButton(Action.REROLL, job.id, row=1 if posted else 0))
    view.add_item(JobButton(Action.DELETE, job.id, row=0))  # at most four U beside it
    if job.pipeline is PipelineKind.UPSCALE and len(posted) == 1:
        for row, actions in enumerate(EDIT_ROWS, start=2):
            for action in actions:
                view.add_item(JobButton(action, job.id, posted[0].idx + 1, row=row))
    return view


def queued_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton(Action.CANCEL, job_id))
    return view


class EditModal(discord.ui.Modal):
    """The prompt box of Remix and of Vary (Region) (with the region to repaint), opened by an
    editing button; the submit is dispatched to the bot as the `edit_modal` event."""

    def __init__(self, action: Action, job_id: int, number: int, prompt: str, *, ask_region: bool) -> None:
        super().__init__(title=f"{_FIXED_LABELS[action]} of job #{job_id}"[:45], custom_id=f"sd-edit:{action}:{job_id}")
        self.action, self.job_id, self.number = action, job_id, number
        self.region: discord.ui.TextInput[EditModal] | None = None
        if ask_region:
            self.region = discord.ui.TextInput(
                label="Region to repaint", custom_id="region", default="center", max_length=40,
                placeholder="center, left, right, top, bottom, or x,y,w,h in percent",
            )
            self.add_item(self.region)
        self.prompt: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
            label="Prompt", custom_id="prompt", style=discord.TextStyle.paragraph, default=prompt[:1000] or None,
            required=False, max_length=1000, placeholder="empty: the job's prompt",
        )
        self.add_item(self.prompt)

    async def on_submit(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        region = self.region.value if self.region is not None else None
        interaction.client.dispatch(
            "edit_modal", interaction, self.action, self.job_id, self.number, self.prompt.value, region
        )

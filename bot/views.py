"""Result and queue buttons. Each carries its action and job in its custom_id
(`sd:<action>:<job>[:<n>]`), so they are persistent: registered once as a dynamic item, they keep
working after a restart. A press is dispatched to the bot as the `job_button` event
(`bot.exts.buttons` handles it), so this module imports nothing above it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
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
# How long discord.py keeps an editing modal object it sent (Discord says nothing when a member
# closes one); the submit never needs it, see EditModal.
EDIT_MODAL_TIMEOUT_S = 600.0
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


# An editing modal's custom_id; modals opened before the image number was added to it have none.
_EDIT_MODAL = re.compile(rf"sd-edit:(?P<action>{'|'.join(Action)}):(?P<job>\d+)(?::(?P<n>[1-4]))?")


@dataclass(frozen=True)
class EditSubmit:
    """What a member sent from an editing modal: the edit, the job and image, and their text."""

    action: Action
    job_id: int
    number: int
    prompt: str
    region: str | None  # only Vary (Region) asks for one


class EditModal(discord.ui.Modal):
    """The prompt box of Remix and of Vary (Region) (with the region to repaint), opened by an
    editing button. Its submit is read from the interaction (`edit_submit`), not by this object:
    discord.py hands a submit only to the object that sent the modal, which a restart loses, and
    a member's text must not be lost with it."""

    def __init__(self, action: Action, job_id: int, number: int, prompt: str, *, ask_region: bool) -> None:
        super().__init__(
            title=f"{_FIXED_LABELS[action]} of job #{job_id}"[:45],
            custom_id=f"sd-edit:{action}:{job_id}:{number}",
            timeout=EDIT_MODAL_TIMEOUT_S,
        )
        if ask_region:
            self.add_item(discord.ui.TextInput(
                label="Region to repaint", custom_id="region", default="center", max_length=40,
                placeholder="center, left, right, top, bottom, or x,y,w,h in percent",
            ))
        self.add_item(discord.ui.TextInput(
            label="Prompt", custom_id="prompt", style=discord.TextStyle.paragraph, default=prompt[:1000] or None,
            required=False, max_length=1000, placeholder="empty: the job's prompt",
        ))


def edit_submit(interaction: discord.Interaction) -> EditSubmit | None:
    """The submit of an editing modal, from the interaction's data (also for a modal opened before a
    restart); None for any other interaction."""
    if interaction.type is not discord.InteractionType.modal_submit:
        return None
    data: Any = interaction.data or {}
    match = _EDIT_MODAL.fullmatch(str(data.get("custom_id", "")))
    if match is None:
        return None
    values = dict(_text_inputs(data.get("components") or []))
    return EditSubmit(Action(match["action"]), int(match["job"]), int(match["n"] or 1), values.get("prompt", ""),
                      values.get("region"))


def _text_inputs(components: list[Any]) -> Iterator[tuple[str, str]]:
    """(custom_id, value) of every text input in a modal submit's components, at any depth
    (action rows hold them in `components`, labels in `component`)."""
    for component in components:
        if "value" in component and "custom_id" in component:
            yield component["custom_id"], component["value"]
        yield from _text_inputs(component.get("components") or [])
        if "component" in component:
            yield from _text_inputs([component["component"]])

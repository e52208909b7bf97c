"""One error path to the user: project errors become short, friendly, ephemeral replies."""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.metrics import Metrics
from generation.errors import GenerationError
from sdbot.store import QuotaExceeded

log = logging.getLogger(__name__)


class UserError(Exception):
    """A request the bot refuses; the message tells the member what to do instead."""


def explain(error: BaseException) -> str | None:
    """The message to show for an expected error, or None for a bug (logged, generic reply)."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, QuotaExceeded):
        return (
            f"You have used {error.used} of your {error.limit} images for today and this needs "
            f"{error.requested}. Your quota resets <t:{int(error.resets_at)}:R>; ask a moderator "
            "if you need more."
        )
    if isinstance(error, UserError | GenerationError):
        text = str(error)  # the engine and queue write sentence fragments: make them sentences
        return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")
    if isinstance(error, app_commands.MissingPermissions):
        return "Only moderators with the Manage Server permission can do that."
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command works only in a server."
    if isinstance(error, app_commands.TransformerError):
        return f"That value is not valid here: {error.value!r}."
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f} s."
    return None


async def reply_with_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Answer an interaction with the explanation of `error`, whether or not it was answered."""
    if isinstance(metrics := getattr(interaction.client, "metrics", None), Metrics):
        metrics.command_errors.labels(command=_command_name(interaction)).inc()
    message = explain(error)
    if message is None:
        log.error("unexpected error in %s", _describe(interaction), exc_info=error)
        message = "Something went wrong on our side; it has been logged. Please try again."
    try:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell %s about an error: %s", _describe(interaction), message)


def _command_name(interaction: discord.Interaction) -> str:
    """A bounded metric label: the command, or "button" (custom ids carry job ids)."""
    return interaction.command.qualified_name if interaction.command else "button"


def _describe(interaction: discord.Interaction) -> str:
    name = interaction.command.qualified_name if interaction.command else interaction.data
    return f"interaction {interaction.id} ({name}) from user {interaction.user.id}"


class CommandTree(app_commands.CommandTree):
    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await reply_with_error(interaction, error)

"""Who may see and do what: moderators are members with Manage Server in this guild."""

from __future__ import annotations

import discord

from bot.errors import UserError


def is_moderator(user: discord.User | discord.Member) -> bool:
    return isinstance(user, discord.Member) and user.guild_permissions.manage_guild


def whose(
    interaction: discord.Interaction, member: discord.Member | None, what: str
) -> discord.User | discord.Member:
    """The member a view command is about: yourself, or anyone if you are a moderator."""
    target = member or interaction.user
    if target.id != interaction.user.id and not is_moderator(interaction.user):
        raise UserError(f"Only moderators can see another member's {what}.")
    return target

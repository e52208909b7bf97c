"""Who counts as a moderator: members with Manage Server in this guild."""

from __future__ import annotations

import discord


def is_moderator(user: discord.User | discord.Member) -> bool:
    return isinstance(user, discord.Member) and user.guild_permissions.manage_guild

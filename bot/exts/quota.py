"""/quota: daily image quotas. Everyone sees their own; moderators see and change anyone's.

Discord applies `default_permissions` to whole top-level commands only, and `/quota view` is for
everyone, so `set`, `reset` and `default` are guarded by a run-time Manage Server check.
"""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import SDBot
from bot.errors import UserError
from bot.permissions import whose

MAX_QUOTA = 100_000
AUDIT_LENGTH = 15


def parse_quota(text: str) -> int | None:
    """A daily quota as typed: a whole number, or `unlimited` (None)."""
    cleaned = text.strip().lower()
    if cleaned in {"unlimited", "none", "no limit", "∞"}:
        return None
    if not cleaned.isdigit() or int(cleaned) > MAX_QUOTA:
        raise UserError(f"`{text}` is not a quota: use a whole number from 0 to {MAX_QUOTA:,} or `unlimited`.")
    return int(cleaned)


async def tell(interaction: discord.Interaction, text: str) -> None:
    """Quota answers are private and name members without pinging them."""
    await interaction.response.send_message(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())


def show(limit: int | None) -> str:
    return "unlimited" if limit is None else f"{limit} images per day"


@app_commands.guild_only()
class Quota(commands.GroupCog, group_name="quota", group_description="Daily image quotas"):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(description="How many images you (or a member) can still make today")
    @app_commands.describe(member="Whose quota (moderators only)")
    async def view(self, interaction: discord.Interaction, member: discord.Member | None = None) -> None:
        assert interaction.guild_id is not None
        target = whose(interaction, member, "quota")
        status = await self.bot.store.quota(interaction.guild_id, target.id)
        source = "set for this member" if status.is_override else "server default"
        weight = self.bot.scheduler.weight((interaction.guild_id, target.id))
        share = "" if weight == 1.0 else f" Queue share: {weight:g}×."
        remaining = "no limit" if status.remaining is None else f"**{status.remaining}** left"
        await tell(
            interaction,
            f"{target.mention}: {remaining} today ({status.used} used; quota {show(status.limit)}, "
            f"{source}). Resets <t:{int(status.resets_at)}:R>.{share}",
        )

    @app_commands.command(name="set", description="Set a member's daily quota (Manage Server)")
    @app_commands.describe(member="Member", images_per_day="A number, or `unlimited`")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def set_quota(
        self, interaction: discord.Interaction, member: discord.Member, images_per_day: str
    ) -> None:
        assert interaction.guild_id is not None
        limit = parse_quota(images_per_day)
        await self.bot.store.set_user_quota(interaction.guild_id, interaction.user.id, member.id, limit)
        await tell(
            interaction,
            f"{member.mention} can now make {show(limit)}.",
        )

    @app_commands.command(description="Give a member the server default again and clear today's usage (Manage Server)")
    @app_commands.describe(member="Member")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def reset(self, interaction: discord.Interaction, member: discord.Member) -> None:
        assert interaction.guild_id is not None
        cleared = await self.bot.store.reset_user_quota(interaction.guild_id, interaction.user.id, member.id)
        default = await self.bot.store.guild_default_quota(interaction.guild_id)
        await tell(
            interaction,
            f"{member.mention} is back on the server default ({show(default)}); "
            f"{cleared} image(s) used today were cleared.",
        )

    @app_commands.command(description="Set the server's default daily quota (Manage Server)")
    @app_commands.describe(images_per_day="Images each member may make per day")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def default(
        self, interaction: discord.Interaction, images_per_day: app_commands.Range[int, 0, MAX_QUOTA]
    ) -> None:
        assert interaction.guild_id is not None
        await self.bot.store.set_guild_default_quota(interaction.guild_id, interaction.user.id, images_per_day)
        await tell(interaction, f"Members without their own quota can now make {show(images_per_day)}.")

    @app_commands.command(description="Change a member's share of the queue: 2 = twice an equal share (Manage Server)")
    @app_commands.describe(member="Member", weight="Share of the GPU while others wait (1 = equal; 0.1-10)")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def share(
        self, interaction: discord.Interaction, member: discord.Member, weight: app_commands.Range[float, 0.1, 10.0]
    ) -> None:
        assert interaction.guild_id is not None
        await self.bot.scheduler.set_weight((interaction.guild_id, member.id), weight, moderator_id=interaction.user.id)
        await tell(
            interaction,
            f"{member.mention} now gets {weight:g}× an equal share of the queue while others wait.",
        )

    @app_commands.command(
        name="log",
        description="Recent moderator changes: quotas, shares, cancels, deleted results, NSFW (Manage Server)",
    )
    @app_commands.checks.has_permissions(manage_guild=True)
    async def audit_log(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        entries = await self.bot.store.audit_entries(interaction.guild_id, AUDIT_LENGTH)
        lines = [
            f"<t:{int(entry.created_at)}:R> <@{entry.moderator_id}> `{entry.action}`"
            + (f" → <@{entry.target_user_id}>" if entry.target_user_id else "")
            + "".join(f" · {key} {value}" for key, value in entry.details.items())
            for entry in entries
        ]
        await tell(interaction, "\n".join(lines) if lines else "No moderator changes yet.")


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Quota(cast(SDBot, bot)))

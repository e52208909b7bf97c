"""/settings: a member's own preferences (for now Remix: a prompt box before each Vary, Zoom and Pan)."""

from __future__ import annotations

from typing import Literal, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import SDBot


class MemberSettings(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(description="Your preferences: remix asks for a new prompt before each Vary, Zoom and Pan")
    @app_commands.guild_only()
    @app_commands.describe(remix="on: the editing buttons open a prompt box first; off: they run at once")
    async def settings(self, interaction: discord.Interaction, remix: Literal["on", "off"] | None = None) -> None:
        assert interaction.guild_id is not None
        store = self.bot.store
        if remix is not None:
            await store.set_remix(interaction.guild_id, interaction.user.id, remix == "on")
        on = await store.remix(interaction.guild_id, interaction.user.id)
        text = (
            "Remix is **on**: Vary, Zoom and Pan buttons open a box with the prompt, so you can change it first."
            if on
            else "Remix is **off**: Vary, Zoom and Pan buttons run at once with the image's prompt."
        )
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(MemberSettings(cast(SDBot, bot)))

"""/safety: the server's choice about images the NSFW checker flags."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import SDBot


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Safety(commands.GroupCog, group_name="safety", group_description="NSFW image settings (Manage Server)"):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(
        description="In age-restricted channels, post flagged images as spoilers instead of withholding them"
    )
    @app_commands.describe(allowed="True: spoilers in age-restricted channels; False: always withhold")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def spoilers(self, interaction: discord.Interaction, allowed: bool) -> None:
        assert interaction.guild_id is not None
        await self.bot.store.set_nsfw_spoilers(interaction.guild_id, interaction.user.id, allowed)
        outcome = (
            "Flagged images will be posted as spoilers in age-restricted channels (withheld elsewhere)."
            if allowed
            else "Flagged images will be withheld in every channel."
        )
        await interaction.response.send_message(outcome, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Safety(cast(SDBot, bot)))

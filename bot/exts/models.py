"""/model default: the model /imagine uses in this server when a member names none."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import SDBot
from bot.errors import UserError


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Models(commands.GroupCog, group_name="model", group_description="The server's models (Manage Server)"):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(description="The model /imagine uses here when a member names none")
    @app_commands.describe(name="A model from the list; empty: back to the models file's default")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def default(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 0, 100] | None = None
    ) -> None:
        assert interaction.guild_id is not None
        catalogue = self.bot.admission.model.models
        if not catalogue.named:
            raise UserError("This bot serves one model; list several in a models file (SDBOT_MODELS_FILE) first.")
        entry = catalogue.lookup(name) if name else None
        if name and entry is None:
            raise UserError(f"There is no model called “{name}”; start typing in `name` to see the list.")
        await self.bot.store.set_default_model(interaction.guild_id, interaction.user.id, entry.name if entry else None)
        chosen = entry or catalogue.entry(None)
        outcome = f"/imagine now uses **{chosen.name}** here when no model is named."
        await interaction.response.send_message(outcome, ephemeral=True)

    @default.autocomplete("name")
    async def _model_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=label, value=name)
            for label, name in self.bot.admission.model_choices(current)
        ]


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Models(cast(SDBot, bot)))

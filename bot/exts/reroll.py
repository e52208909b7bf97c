"""/reroll: a job's parameters again, with new seeds or one exact seed."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import SDBot
from generation.requests import RANDOM_SEED
from sdbot.types import MAX_SEED


class Reroll(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(description="Run a job again: new seeds, or one seed to reproduce its image")
    @app_commands.guild_only()
    @app_commands.describe(job="Job id", seed="Reproduce exactly this seed (from the result or /job); -1: new random seeds")
    async def reroll(
        self,
        interaction: discord.Interaction,
        job: app_commands.Range[int, 1],
        seed: app_commands.Range[int, RANDOM_SEED, MAX_SEED] | None = None,
    ) -> None:
        await self.bot.admission.reroll(interaction, job, seed)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Reroll(cast(SDBot, bot)))

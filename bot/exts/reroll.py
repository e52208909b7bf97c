"""/reroll: a job's parameters again, with new seeds or one exact seed."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.submission import find_job, submit_reroll
from generation.types import MAX_SEED


class Reroll(commands.Cog):
    @app_commands.command(description="Run a job again: new seeds, or one seed to reproduce its image")
    @app_commands.guild_only()
    @app_commands.describe(job="Job id", seed="Reproduce exactly this seed (from the result or /job)")
    async def reroll(
        self,
        interaction: discord.Interaction,
        job: app_commands.Range[int, 1],
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
    ) -> None:
        await submit_reroll(interaction, await find_job(interaction, job), seed)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Reroll())

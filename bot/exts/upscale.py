"""/upscale: one image at twice the size."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import SDBot


class Upscale(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(description="Upscale an image x2: give a job and image number, or upload one")
    @app_commands.guild_only()
    @app_commands.describe(
        job="Job id (from the result or /history)",
        index="Which image of the job (1-4)",
        image="Or upload a picture",
    )
    async def upscale(
        self,
        interaction: discord.Interaction,
        job: app_commands.Range[int, 1] | None = None,
        index: app_commands.Range[int, 1, 4] | None = None,
        image: discord.Attachment | None = None,
    ) -> None:
        admission = self.bot.admission
        await admission.upscale(interaction, await admission.pick_source(interaction, job, index, image))


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Upscale(cast(SDBot, bot)))

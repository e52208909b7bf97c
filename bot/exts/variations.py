"""/variations: new images that stay close to one image of a job, or to an uploaded picture."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import SDBot
from bot.errors import UserError


class Variations(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(description="Variations of an image: give a job and image number, or upload one")
    @app_commands.guild_only()
    @app_commands.describe(
        job="Job id (from the result or /history)",
        index="Which image of the job (1-4)",
        image="Or upload a picture (then a prompt is needed)",
        prompt="Prompt for the variations (default: the job's prompt)",
        strength="How far to move away from the image (0.1 subtle - 1.0 new picture; default 0.6)",
        count="How many images (1-4)",
    )
    async def variations(
        self,
        interaction: discord.Interaction,
        job: app_commands.Range[int, 1] | None = None,
        index: app_commands.Range[int, 1, 4] | None = None,
        image: discord.Attachment | None = None,
        prompt: app_commands.Range[str, 1, 1000] | None = None,
        strength: app_commands.Range[float, 0.1, 1.0] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
    ) -> None:
        if image is not None and not prompt:
            raise UserError("Describe the uploaded picture with `prompt` so the variations know what to keep.")
        admission = self.bot.admission
        source = await admission.pick_source(interaction, job, index, image)
        await admission.variations(interaction, source, prompt=prompt, strength=strength, count=count)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Variations(cast(SDBot, bot)))

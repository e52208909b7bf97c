"""/upscale: one image at twice the size."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import SDBot
from bot.submission import UPSCALE_STEPS, Upload, pick_source, random_seeds, submit, submit_upscale
from generation.types import GenerationParams, JobKind, PipelineKind


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
        source = await pick_source(interaction, job, index, image)
        if not isinstance(source, Upload):
            await submit_upscale(interaction, *source)
            return
        params = GenerationParams(
            pipeline=PipelineKind.UPSCALE,
            seeds=random_seeds(1),
            steps=UPSCALE_STEPS,
            guidance=0.0,
            # The source size, down to a multiple of 64 (the engine resizes and says so); output is x2.
            width=max(64, source.width // 64 * 64),
            height=max(64, source.height // 64 * 64),
        )
        await submit(interaction, kind=JobKind.UPSCALE, params=params, source_path=source.path)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Upscale(cast(SDBot, bot)))

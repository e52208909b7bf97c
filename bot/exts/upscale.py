"""/upscale: one image at twice the size."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.attachments import save_upload
from bot.client import SDBot
from bot.errors import UserError
from bot.submission import UPSCALE_STEPS, find_image, random_seeds, submit, submit_upscale
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
        if (job is None) == (image is None):
            raise UserError("Give either `job` and `index` (an image made here) or `image` (an upload).")
        if job is not None:
            if index is None:
                raise UserError(f"Which image of job #{job}? Add `index` (1-4).")
            await submit_upscale(interaction, *await find_image(interaction, job, index))
            return
        assert image is not None
        settings = self.bot.settings
        path, width, height = await save_upload(
            image, max_pixels=settings.max_upload_pixels, folder=settings.output_dir / "uploads"
        )
        params = GenerationParams(
            pipeline=PipelineKind.UPSCALE,
            seeds=random_seeds(1),
            steps=UPSCALE_STEPS,
            guidance=0.0,
            # The source size, down to a multiple of 64 (the engine resizes and says so); output is x2.
            width=max(64, width // 64 * 64),
            height=max(64, height // 64 * 64),
        )
        await submit(interaction, kind=JobKind.UPSCALE, params=params, source_path=path)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Upscale(cast(SDBot, bot)))

"""/job, /history and /cancel: finding and managing jobs."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.client import SDBot
from bot.permissions import whose
from sdbot.types import JobRow

HISTORY_LENGTH = 15


class Jobs(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(name="job", description="How a job was made: prompt, seeds, model and versions")
    @app_commands.guild_only()
    @app_commands.describe(id="Job id")
    async def job(self, interaction: discord.Interaction, id: app_commands.Range[int, 1]) -> None:  # noqa: A002
        found = await self.bot.admission.find_job(interaction, id)
        images = await self.bot.store.images(found.id)
        reading = self.bot.admission.prompt_reading(found)
        chunks = reading.chunk_tokens if reading else None
        source = await self.bot.store.get_job(found.source_job_id) if found.source_job_id is not None else None
        await interaction.response.send_message(
            embed=render.record_embed(found, images, chunks, source), ephemeral=True
        )

    @app_commands.command(description="Your recent jobs (moderators: anyone's)")
    @app_commands.guild_only()
    @app_commands.describe(member="Whose jobs (moderators only)")
    async def history(self, interaction: discord.Interaction, member: discord.Member | None = None) -> None:
        assert interaction.guild_id is not None
        target = whose(interaction, member, "history")
        jobs = await self.bot.store.recent_jobs(interaction.guild_id, target.id, HISTORY_LENGTH)
        if not jobs:
            who = "You have" if target.id == interaction.user.id else f"{target.display_name} has"
            await interaction.response.send_message(f"{who} no jobs here yet. Try `/imagine`!", ephemeral=True)
            return
        lines = [
            f"{_linked_id(job)} {job.kind.value} · {job.status.value} · <t:{int(job.created_at)}:R> · "
            f"{render.clip(job.prompt, 60) or '(uploaded picture)'}"
            for job in jobs
        ]
        embed = discord.Embed(
            title=f"Recent jobs of {target.display_name}",
            description=render.clip("\n".join(lines), 4000),
            colour=render.EMBED_COLOUR,
        )
        embed.set_footer(text="/job id:<id> shows a job's full record")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel your queued or running job")
    @app_commands.guild_only()
    @app_commands.describe(job="Job id")
    async def cancel_job(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        await self.bot.admission.cancel(interaction, job)


def _linked_id(job: JobRow) -> str:
    """`#id`, a link to the job's result once it is posted."""
    link = render.message_link(job)
    return f"[`#{job.id}`]({link})" if link else f"`#{job.id}`"


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Jobs(cast(SDBot, bot)))

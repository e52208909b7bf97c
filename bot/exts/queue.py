"""/queue: where your jobs are and how long the wait is."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.client import SDBot


class Queue(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(description="Your queued jobs with their place and wait, and the queue length")
    @app_commands.guild_only()
    async def queue(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        scheduler = self.bot.scheduler
        lines = []
        for job in scheduler.queued_jobs(interaction.guild_id, interaction.user.id):
            if scheduler.is_running(job.id):
                lines.append(f"`#{job.id}` generating now · {render.clip(job.prompt, 60)}")
                continue
            place = scheduler.position(job.id)
            if place is not None:
                ahead, eta_s = place
                when = self.bot.delivery.waiting or f"done in about {render.duration(eta_s)}"
                lines.append(f"`#{job.id}` {render.place_in_line(ahead)}, {when} · {render.clip(job.prompt, 60)}")
        workers = scheduler.workers_up
        summary = (
            f"{scheduler.queue_length} job(s) waiting in this bot's queue · "
            f"{workers} worker{'s' if workers != 1 else ''} up"
        )
        mine = "\n".join(lines) if lines else "You have no jobs waiting."
        await interaction.response.send_message(f"{mine}\n-# {summary}", ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Queue(cast(SDBot, bot)))

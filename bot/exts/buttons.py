"""Result and queue buttons: `bot.views.JobButton` dispatches each press here as `job_button`, and
the submit of an editing prompt box (`bot.views.EditModal`) is read from the interaction here."""

from __future__ import annotations

from typing import cast

import discord
from discord.ext import commands

from bot.client import SDBot
from bot.errors import reply_with_error
from bot.views import Action, edit_submit


class Buttons(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_job_button(
        self, interaction: discord.Interaction, action: Action, job_id: int, number: int | None
    ) -> None:
        try:
            await self.bot.admission.press(interaction, action, job_id, number)
        except Exception as error:  # noqa: BLE001 - buttons have no command tree: the same error path
            await reply_with_error(interaction, error)

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """The submit of an editing modal, also one opened before a restart (see EditModal)."""
        if (submit := edit_submit(interaction)) is None:
            return
        try:
            await self.bot.admission.submit_modal(interaction, submit)
        except Exception as error:  # noqa: BLE001 - the same error path as the buttons
            await reply_with_error(interaction, error)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Buttons(cast(SDBot, bot)))

"""/describe and the message command "Describe image": prompt suggestions for a picture (its buttons
are result buttons, handled by `bot.exts.buttons`)."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.attachments import ACCEPTED_SUFFIXES
from bot.client import SDBot
from bot.errors import UserError


def first_picture(message: discord.Message) -> discord.Attachment:
    """The message's first attachment that is a picture, or a refusal that says what to do."""
    for attachment in message.attachments:
        is_image = (attachment.content_type or "").startswith("image/")
        if is_image or attachment.filename.lower().endswith(ACCEPTED_SUFFIXES):
            return attachment
    raise UserError("That message has no picture attached; use “Describe image” on a message with one.")


class Describe(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Describe image", callback=self.describe_message)
        self.menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @app_commands.command(description="Prompt suggestions for a picture, and the settings it was made with")
    @app_commands.guild_only()
    @app_commands.describe(image="The picture to describe (PNG, JPEG or WebP)")
    async def describe(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        await self.bot.admission.describe(interaction, image)

    async def describe_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self.bot.admission.describe(interaction, first_picture(message))


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Describe(cast(SDBot, bot)))

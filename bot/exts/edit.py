"""/zoomout, /pan and /inpaint: the editing buttons' work on an uploaded picture."""

from __future__ import annotations

import asyncio
from typing import Literal, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.admission import PANS, ZOOMS
from bot.client import SDBot
from bot.errors import UserError
from bot.views import Action
from generation import edit_geometry

# The option's value -> the button that does the same.
_ZOOM = {factor: action for action, factor in ZOOMS.items()}
_PAN = {direction: action for action, direction in PANS.items()}
_REGION_HELP = f"{', '.join(edit_geometry.NAMED_REGIONS)}, or x,y,w,h in percent (e.g. 25,25,50,50)"


class Edit(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(description="Zoom out of a picture: it shrinks in the middle, the border is painted new")
    @app_commands.guild_only()
    @app_commands.describe(image="The picture", factor="How far to zoom out", prompt="What the new border shows")
    async def zoomout(
        self, interaction: discord.Interaction, image: discord.Attachment, factor: Literal["2x", "1.5x"] = "2x",
        prompt: app_commands.Range[str, 1, 1000] | None = None,
    ) -> None:
        await self._edit(interaction, image, _ZOOM[factor], prompt)

    @app_commands.command(description="Extend a picture by half its size in one direction")
    @app_commands.guild_only()
    @app_commands.describe(image="The picture", direction="Where to extend it", prompt="What the new strip shows")
    async def pan(
        self, interaction: discord.Interaction, image: discord.Attachment,
        direction: Literal["left", "right", "up", "down"], prompt: app_commands.Range[str, 1, 1000] | None = None,
    ) -> None:
        await self._edit(interaction, image, _PAN[direction], prompt)

    @app_commands.command(description="Repaint one region of a picture: a named region or a mask you upload")
    @app_commands.guild_only()
    @app_commands.describe(
        image="The picture", prompt="What the region shows now", region=f"Which part: {_REGION_HELP}",
        mask="Or a black and white picture of the same size: white is repainted",
    )
    async def inpaint(
        self, interaction: discord.Interaction, image: discord.Attachment, prompt: app_commands.Range[str, 1, 1000],
        region: app_commands.Range[str, 1, 40] | None = None, mask: discord.Attachment | None = None,
    ) -> None:
        if (region is None) == (mask is None):
            raise UserError("Give either `region` (left, right, top, bottom, center or x,y,w,h) or a `mask` picture.")
        mask_data = None
        if mask is not None:
            saved = await self.bot.admission.pick_source(interaction, None, None, mask)
            mask_data = await asyncio.to_thread(saved.path.read_bytes)
        await self._edit(interaction, image, Action.VARY_REGION, prompt, region, mask_data)

    async def _edit(
        self, interaction: discord.Interaction, image: discord.Attachment, action: Action, prompt: str | None,
        region: str | None = None, mask: bytes | None = None,
    ) -> None:
        admission = self.bot.admission
        source = await admission.pick_source(interaction, None, None, image)
        await admission.edit(interaction, action, source, prompt=prompt, region=region, mask=mask)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Edit(cast(SDBot, bot)))

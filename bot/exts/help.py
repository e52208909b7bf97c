"""/help: the first five minutes on one private card: how to start, the buttons, the prompt
language in short, and what the member has left today."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.client import SDBot

START = (
    "`/imagine prompt: a lighthouse at dusk, oil painting` makes four images (`count:` 1-4). You get "
    "your place in the queue at once, then progress, then the images."
)
BUTTONS = (
    "**U1-U4** upscale one image · **V1-V4** variations of it · **🔄** new seeds · **🗑️** delete your "
    "result. Under an upscaled image: Vary (Subtle/Strong), Zoom Out, Pan ⬅️➡️⬆️⬇️, Vary (Region)."
)
PROMPT_TIPS = (
    "`(word:1.3)` more of it, `[word]` less · `--ar 16:9` shape · `--no text` leave it out · "
    "`--seed 42` · `a {red, green} bird` one job each · `BREAK` starts a new chunk of a long prompt"
)
STYLE_TIP = " · `style:` ready-made looks"
MORE = (
    "`/queue` your place in line · `/history` your jobs · `/job` how one was made · `/reroll` with "
    "`seed:` reproduces an image · `/describe` prompts from a picture · `/variations`, `/upscale`, "
    "`/zoomout`, `/pan`, `/inpaint` on an upload · `/settings` Remix · `/cancel` a job"
)
MODERATORS = "`/quota` members' daily images · `/model` the server's default model · `/safety` NSFW images"


class Help(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="help", description="How to make images here: first steps, buttons, prompt tips, your quota"
    )
    @app_commands.guild_only()
    async def help_card(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        status = await self.bot.store.quota(interaction.guild_id, interaction.user.id)
        left = "no daily limit" if status.remaining is None else f"**{status.remaining}** images left today"
        today = f"You have {left} (it resets <t:{int(status.resets_at)}:R>)."
        catalogue = self.bot.admission.model.models
        if catalogue.named:
            model = await self.bot.admission.pick_model(interaction, None)
            others = len(catalogue.models) - 1
            today += f" `/imagine` draws with **{model.name}** here" + (
                f"; `model:` picks one of {others} other{'s' if others != 1 else ''}." if others else "."
            )
        embed = discord.Embed(title="Making images here", description=START, colour=render.EMBED_COLOUR)
        embed.add_field(name="Buttons under a result", value=BUTTONS, inline=False)
        tips = PROMPT_TIPS + (STYLE_TIP if self.bot.admission.styles else "")  # only with a styles file
        embed.add_field(name="In the prompt", value=tips, inline=False)
        embed.add_field(name="Today", value=today, inline=False)
        embed.add_field(name="More", value=MORE, inline=False)
        embed.add_field(name="For moderators (Manage Server)", value=MODERATORS, inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Help(cast(SDBot, bot)))

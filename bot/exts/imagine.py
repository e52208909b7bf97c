"""/imagine: text to images."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import SDBot
from generation.requests import ASPECTS, RANDOM_SEED
from sdbot.types import MAX_SEED


class Imagine(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(description="Make images from a text prompt (A1111 weights, --ar, --no, {a, b} work)")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What to draw",
        negative="What to keep out of the picture",
        seed="Seed of the first image (same seed and settings, same picture); -1 or empty: random",
        count="How many images (1-4)",
        steps="Denoising steps (more is slower, sometimes better)",
        guidance="How closely to follow the prompt (CFG scale; 0 for turbo models)",
        aspect="Shape of the images (or type --ar 16:9 in the prompt)",
        style="Up to 3 styles from the server's list, separated by commas",
        model="Which model draws it (the server's default if empty)",
        lora="Up to 3 LoRAs, name or name:weight, separated by commas (pixel:0.8, ink)",
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1000],
        negative: app_commands.Range[str, 0, 1000] = "",
        seed: app_commands.Range[int, RANDOM_SEED, MAX_SEED] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        steps: app_commands.Range[int, 1, 500] | None = None,
        guidance: app_commands.Range[float, 0.0, 30.0] | None = None,
        aspect: str | None = None,
        style: app_commands.Range[str, 0, 300] | None = None,
        model: app_commands.Range[str, 0, 100] | None = None,
        lora: app_commands.Range[str, 0, 300] | None = None,
    ) -> None:
        await self.bot.admission.imagine(
            interaction, prompt=prompt, negative=negative, seed=seed, count=count, steps=steps,
            guidance=guidance, aspect=aspect, style=style, model=model, lora=lora,
        )

    @imagine.autocomplete("style")
    async def _style_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        # Discord takes choice names and values of at most 100 characters.
        return [
            app_commands.Choice(name=choice, value=choice)
            for choice in self.bot.admission.style_choices(current)
            if len(choice) <= 100
        ]


    @imagine.autocomplete("model")
    async def _model_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=label, value=name)
            for label, name in self.bot.admission.model_choices(current)
        ]

    @imagine.autocomplete("lora")
    async def _lora_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        model = getattr(interaction.namespace, "model", None)
        return [
            app_commands.Choice(name=label, value=value)
            for label, value in self.bot.admission.lora_choices(current, model)
            if len(value) <= 100
        ]


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Imagine(cast(SDBot, bot)))

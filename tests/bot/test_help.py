"""/help: the first card a new member reads."""

from __future__ import annotations

import re

from tests.fakes.bot import BotHarness


async def test_help_is_private_names_only_real_commands_and_counts_todays_images(harness: BotHarness) -> None:
    fake = harness.fake
    made = await fake.slash(fake.member, "imagine", prompt="a red fox", count=2)
    await made.wait_original(lambda m: bool(m.attachments), timeout=30)
    shown = await fake.slash(fake.member, "help")
    await shown.wait_response()
    assert shown.ephemeral
    card = shown.embeds[0]
    text = " ".join([card["description"], *(field["value"] for field in card["fields"])])
    assert "/imagine" in text and "🗑️" in text
    # Every command it names is one the bot registered, so the card cannot drift from the bot.
    named = set(re.findall(r"`/([a-z]+)", text))
    assert named >= {"imagine", "queue", "quota", "describe"}
    assert named <= set(fake.synced_commands(guild=True)) | set(fake.synced_commands())
    left = harness.settings.default_daily_quota - 2
    assert f"**{left}** images left today" in text
    # One model and no styles file: nothing to choose, so the card offers no `model:` or `style:`.
    assert "draws with" not in text and "style:" not in text

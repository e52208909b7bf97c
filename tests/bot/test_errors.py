"""One error path: expected errors become friendly sentences; anything else is a logged bug."""

from __future__ import annotations

from discord import app_commands

from bot.errors import UserError, explain
from generation.errors import InvalidRequest, QueueRefused
from sdbot.store import QuotaExceeded


def test_expected_errors_read_as_sentences() -> None:
    assert explain(InvalidRequest("steps must be between 1 and 50 (got 99)")) == "Steps must be between 1 and 50 (got 99)."
    assert explain(UserError("Already a sentence!")) == "Already a sentence!"
    assert explain(QueueRefused("you have 3 jobs waiting")) == "You have 3 jobs waiting."


def test_quota_refusal_says_when_it_resets() -> None:
    message = explain(QuotaExceeded(limit=10, used=9, requested=4, resets_at=1_800_000_000.5))
    assert message is not None
    assert message.startswith("You have used 9 of your 10 images for today and this needs 4.")
    assert "<t:1800000000:R>" in message


def test_command_wrappers_are_unwrapped_and_bugs_are_not_explained() -> None:
    assert explain(app_commands.MissingPermissions(["manage_guild"])) == (
        "Only moderators with the Manage Server permission can do that."
    )
    assert explain(ZeroDivisionError("boom")) is None

"""A strict loopback fake of Discord (REST v10 + gateway) for driving real discord.py clients in tests.

Typical use (see tests/fakes/test_fake_discord.py)::

    async def test_x(fake_discord):
        bot = make_bot()                      # any discord.Client / commands.Bot
        async with run_client(fake_discord, bot):
            handle = await fake_discord.slash(fake_discord.member, "imagine", prompt="a cat")
            msg = await handle.wait_followup(lambda m: m.attachments)
"""

from .client_api import FakeDiscord
from .gateway import ConnectionInfo, GatewayHub
from .running import run_client, serve_fake_discord
from .server import Faults, RequestRecord
from .state import (
    FakeChannel,
    FakeClock,
    FakeDiscordUsageError,
    FakeMember,
    FakeRole,
    FakeUser,
    InteractionFailed,
    InteractionHandle,
    StoredAttachment,
    StoredMessage,
    Violation,
)
from .validation import APIError

__all__ = [
    "APIError", "ConnectionInfo", "FakeChannel", "FakeClock", "FakeDiscord", "FakeDiscordUsageError", "FakeMember",
    "FakeRole", "FakeUser", "Faults", "GatewayHub", "InteractionFailed", "InteractionHandle", "RequestRecord",
    "StoredAttachment", "StoredMessage", "Violation", "run_client", "serve_fake_discord",
]

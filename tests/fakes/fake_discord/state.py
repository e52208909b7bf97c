"""Data model of the fake Discord: clock, snowflakes, guild objects, stored messages and interactions.

Everything here is plain data plus a few helpers for tests to inspect it. Payload builders produce
Discord API v10 shapes, which is what discord.py parses.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from PIL import Image

DISCORD_EPOCH_MS = 1420070400000
MIB = 1024 * 1024

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_EXTERNAL_EMOJIS = 1 << 18
USE_APPLICATION_COMMANDS = 1 << 31
ALL_PERMISSIONS = (1 << 53) - 1
EVERYONE_PERMISSIONS = (
    VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY
    | ADD_REACTIONS | USE_EXTERNAL_EMOJIS | USE_APPLICATION_COMMANDS
)

# Message flags.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_COMPONENTS_V2 = 1 << 15

T = TypeVar("T")


class FakeDiscordUsageError(Exception):
    """The *test* asked the fake for something Discord would never send (unsynced command, bad option...)."""


class InteractionFailed(AssertionError):
    """Waiting on an interaction that Discord already failed (the bot missed the 3-second deadline)."""


class FakeClock:
    """Monotonic clock that tests can move forward; drives token expiry and snowflake timestamps."""

    def __init__(self) -> None:
        self._offset = 0.0

    def advance(self, seconds: float) -> None:
        self._offset += seconds

    def monotonic(self) -> float:
        return time.monotonic() + self._offset

    def time(self) -> float:
        return time.time() + self._offset

    def iso(self) -> str:
        return datetime.fromtimestamp(self.time(), tz=UTC).isoformat()


class SnowflakeFactory:
    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._counter = 0

    def __call__(self) -> int:
        self._counter += 1
        ms = int(self._clock.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (self._counter & 0x3FFFFF)


class Notifier:
    """Wakes waiters whenever the fake's state changes; waiters re-check a predicate."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = check()
            if result is not None and result is not False:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"fake discord: timed out after {timeout}s waiting for {what}")
            event = self._event
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass


@dataclass(frozen=True)
class Violation:
    kind: str
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}"


# --------------------------------------------------------------------------- guild objects


@dataclass(eq=False)
class FakeUser:
    id: int
    username: str
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "username": self.username, "discriminator": "0",
            "global_name": None if self.bot else self.username.title(), "avatar": None,
            "bot": self.bot, "public_flags": 0, "flags": 0,
        }


@dataclass(eq=False)
class FakeRole:
    id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "name": self.name, "permissions": str(self.permissions),
            "position": self.position, "color": 0, "colors": {"primary_color": 0}, "hoist": False,
            "managed": self.managed, "mentionable": False, "icon": None, "unicode_emoji": None, "flags": 0,
        }


@dataclass(eq=False)
class FakeChannel:
    id: int
    name: str
    guild_id: int
    nsfw: bool = False
    position: int = 0
    type: int = 0  # GUILD_TEXT

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "type": self.type, "guild_id": str(self.guild_id), "name": self.name,
            "position": self.position, "permission_overwrites": [], "nsfw": self.nsfw, "topic": None,
            "last_message_id": None, "rate_limit_per_user": 0, "parent_id": None, "flags": 0,
        }


@dataclass(eq=False)
class FakeMember:
    user: FakeUser
    roles: list[FakeRole]
    joined_at: str

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def name(self) -> str:
        return self.user.username

    @property
    def mention(self) -> str:
        return self.user.mention

    def payload(self) -> dict[str, Any]:
        return {
            "user": self.user.payload(), "roles": [str(r.id) for r in self.roles], "joined_at": self.joined_at,
            "nick": None, "avatar": None, "banner": None, "deaf": False, "mute": False, "flags": 0,
            "pending": False, "premium_since": None, "communication_disabled_until": None,
        }


@dataclass(eq=False)
class FakeGuild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)

    @property
    def everyone(self) -> FakeRole:
        return self.roles[self.id]

    def permissions_for(self, member: FakeMember) -> int:
        """Guild-level permissions (the fake has no channel overwrites)."""
        perms = self.everyone.permissions
        for role in member.roles:
            perms |= role.permissions
        if member.id == self.owner_id or perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        return perms

    def payload(self, joined_at: str) -> dict[str, Any]:
        return {
            "id": str(self.id), "name": self.name, "icon": None, "splash": None, "discovery_splash": None,
            "banner": None, "description": None, "owner_id": str(self.owner_id), "region": None,
            "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0,
            "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
            "system_channel_id": None, "system_channel_flags": 0, "rules_channel_id": None,
            "public_updates_channel_id": None, "vanity_url_code": None, "application_id": None,
            "features": [], "max_members": 500000, "max_video_channel_users": 25, "premium_progress_bar_enabled": False,
            "roles": [r.payload() for r in self.roles.values()], "emojis": [], "stickers": [],
            "channels": [c.payload() for c in self.channels.values()], "threads": [],
            "members": [m.payload() for m in self.members.values()], "member_count": len(self.members),
            "presences": [], "voice_states": [], "stage_instances": [], "guild_scheduled_events": [],
            "soundboard_sounds": [], "large": False, "unavailable": False, "joined_at": joined_at, "lazy": True,
        }


# --------------------------------------------------------------------------- messages


@dataclass(eq=False)
class StoredAttachment:
    """A file the bot uploaded (or the test provided); served over loopback at ``url``."""

    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    description: str | None = None
    width: int | None = None
    height: int | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id), "filename": self.filename, "size": self.size, "url": self.url,
            "proxy_url": self.url, "content_type": self.content_type, "ephemeral": self.ephemeral,
        }
        if self.width is not None:
            out.update(width=self.width, height=self.height)
        if self.description is not None:
            out["description"] = self.description
        return out

    def image(self) -> Image.Image:
        from PIL import Image

        img = Image.open(io.BytesIO(self.data))
        img.load()
        return img


_MENTION_RE = re.compile(r"<@!?(\d+)>")


@dataclass(eq=False)
class StoredMessage:
    """A message as the fake stores it. Live object: edits by the bot mutate it in place."""

    id: int
    channel_id: int
    guild_id: int
    author: FakeUser
    timestamp: str
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[StoredAttachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    edited_timestamp: str | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None
    deleted: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # payloads before each edit

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while this is a deferred "Bot is thinking..." placeholder."""
        return bool(self.flags & FLAG_LOADING)

    @property
    def mention_ids(self) -> list[int]:
        return [int(m) for m in _MENTION_RE.findall(self.content)]

    def walk_components(self) -> Iterator[dict[str, Any]]:
        yield from walk_components(self.components)

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [c for c in self.walk_components() if c.get("type") == 2]

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in self.walk_components() if "custom_id" in c]

    def button(self, *, label: str | None = None, custom_id: str | None = None) -> dict[str, Any]:
        for b in self.buttons:
            if (label is None or b.get("label") == label) and (custom_id is None or b.get("custom_id") == custom_id):
                return b
        raise LookupError(f"no button label={label!r} custom_id={custom_id!r} in {self.buttons}")

    def images(self) -> list[Image.Image]:
        return [a.image() for a in self.attachments]

    def payload(self, users: dict[int, FakeUser] | None = None) -> dict[str, Any]:
        mentions = [users[i].payload() for i in self.mention_ids if users and i in users]
        out: dict[str, Any] = {
            "id": str(self.id), "channel_id": str(self.channel_id), "type": self.type, "content": self.content,
            "author": self.author.payload(), "embeds": self.embeds, "components": self.components,
            "attachments": [a.payload() for a in self.attachments], "mentions": mentions, "mention_roles": [],
            "mention_everyone": False, "pinned": False, "tts": False, "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp, "flags": self.flags,
        }
        if self.webhook_id is not None:
            out["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            out["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            out["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            out["message_reference"] = self.message_reference
        return out

    def __repr__(self) -> str:
        return (f"<StoredMessage id={self.id} channel={self.channel_id} flags={self.flags} content={self.content!r} "
                f"embeds={len(self.embeds)} files={[a.filename for a in self.attachments]} "
                f"custom_ids={self.custom_ids}{' deleted' if self.deleted else ''}>")


def walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Depth-first walk over action rows, containers, sections and labels."""
    for comp in components:
        if not isinstance(comp, dict):
            continue
        yield comp
        yield from walk_components(comp.get("components") or [])
        for key in ("component", "accessory"):
            if isinstance(comp.get(key), dict):
                yield from walk_components([comp[key]])


# --------------------------------------------------------------------------- interactions


@dataclass(eq=False)
class InteractionHandle:
    """What the test holds after sending an interaction; reflects the bot's responses to it."""

    id: int
    token: str
    type: int
    user: FakeMember
    channel: FakeChannel
    payload: dict[str, Any]
    created_at: float
    notifier: Notifier = field(repr=False)
    source_message: StoredMessage | None = None  # the message a component lives on
    response_type: int | None = None
    original: StoredMessage | None = None
    followups: list[StoredMessage] = field(default_factory=list)
    modal: dict[str, Any] | None = None
    autocomplete_choices: list[dict[str, Any]] | None = None
    deadline_missed: bool = False

    # ---- inspection shortcuts on the original response
    @property
    def acknowledged(self) -> bool:
        return self.response_type is not None

    @property
    def ephemeral(self) -> bool:
        return self.original is not None and self.original.ephemeral

    @property
    def content(self) -> str:
        return self._original_or_fail().content

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return self._original_or_fail().embeds

    @property
    def components(self) -> list[dict[str, Any]]:
        return self._original_or_fail().components

    @property
    def attachments(self) -> list[StoredAttachment]:
        return self._original_or_fail().attachments

    def _original_or_fail(self) -> StoredMessage:
        if self.original is None:
            raise AssertionError(f"interaction {self.id} has no original response (response_type={self.response_type})")
        return self.original

    def _check_failed(self) -> None:
        if self.deadline_missed:
            raise InteractionFailed(f"interaction {self.id} was not acknowledged within the deadline")

    # ---- waiting
    async def wait_response(self, timeout: float = 5.0) -> int:
        """Wait for the initial response; returns its callback type (4, 5, 6, 7, 9...)."""

        def check() -> int | None:
            self._check_failed()
            return self.response_type

        return await self.notifier.wait_for(check, timeout, f"initial response to interaction {self.id}")

    async def wait_original(
        self, predicate: Callable[[StoredMessage], bool] | None = None, timeout: float = 5.0
    ) -> StoredMessage:
        """Wait until the original response exists, is not a loading placeholder and satisfies ``predicate``."""

        def check() -> StoredMessage | None:
            msg = self.original
            if msg is None or msg.loading or msg.deleted:
                self._check_failed()
                return None
            return msg if predicate is None or predicate(msg) else None

        return await self.notifier.wait_for(check, timeout, f"original response of interaction {self.id}")

    async def wait_followup(
        self, predicate: Callable[[StoredMessage], bool] | None = None, timeout: float = 5.0
    ) -> StoredMessage:
        """Wait for the first followup matching ``predicate`` (a followup that resolved a deferral counts)."""

        def check() -> StoredMessage | None:
            self._check_failed()
            for msg in self.followups:
                if not msg.deleted and (predicate is None or predicate(msg)):
                    return msg
            return None

        return await self.notifier.wait_for(check, timeout, f"followup of interaction {self.id}")

    async def wait_modal(self, timeout: float = 5.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            self._check_failed()
            return self.modal

        return await self.notifier.wait_for(check, timeout, f"modal response to interaction {self.id}")

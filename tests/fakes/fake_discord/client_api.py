"""`FakeDiscord`: the world (one guild, channels, roles, members), its lifecycle, and the test-facing API.

Tests act as Discord users: :meth:`FakeDiscord.slash`, :meth:`click`, :meth:`select`, :meth:`submit_modal`,
:meth:`post_message`; and observe the bot: :class:`InteractionHandle` waits, :meth:`wait_for_message`,
:attr:`violations`, :attr:`requests`.
"""

from __future__ import annotations

import asyncio
import io
import re
import secrets
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .gateway import GatewayHub
from .server import RequestRecord, RestApi
from .state import (
    EVERYONE_PERMISSIONS,
    FLAG_LOADING,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    MIB,
    FakeChannel,
    FakeClock,
    FakeDiscordUsageError,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    InteractionHandle,
    Notifier,
    SnowflakeFactory,
    StoredAttachment,
    StoredMessage,
    Violation,
    walk_components,
)
from .validation import APIError

if TYPE_CHECKING:
    from PIL import Image

# Application command option types.
SUB_COMMAND, SUB_COMMAND_GROUP, STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)


class FakeDiscord:
    """A strict, loopback Discord for one bot and one guild. Start with :meth:`start` (the fixture does)."""

    def __init__(self, *, token: str = "test-token", attachment_size_limit: int = 10 * MIB,
                 interaction_deadline_s: float = 3.0, token_lifetime_s: float = 15 * 60) -> None:
        self.token = token
        self.attachment_size_limit = attachment_size_limit
        self.interaction_deadline_s = interaction_deadline_s
        self.token_lifetime_s = token_lifetime_s
        self.clock = FakeClock()
        self.snowflake = SnowflakeFactory(self.clock)
        self.notifier = Notifier()
        self.violations: list[Violation] = []
        self.expected_violation_kinds: set[str] = set()
        self.gateway = GatewayHub(self)
        self.rest = RestApi(self)
        self.faults = self.rest.faults
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._timers: list[asyncio.TimerHandle] = []

        # Stored state, kept across bot restarts.
        self.commands: dict[int | None, dict[tuple[int, str], dict[str, Any]]] = {None: {}}
        self.interactions: dict[int, InteractionHandle] = {}
        self.interactions_by_token: dict[str, InteractionHandle] = {}
        self.messages: dict[int, StoredMessage] = {}
        self.attachments: dict[int, StoredAttachment] = {}

        # The world.
        self.bot_user = FakeUser(self.snowflake(), "sdbot-test", bot=True)
        self.application_id = self.bot_user.id  # modern apps: bot user id == application id
        self.owner = FakeUser(self.snowflake(), "owner")
        gid = self.snowflake()
        self.guild = FakeGuild(id=gid, name="Fake Guild", owner_id=self.owner.id)
        self.guild.roles[gid] = FakeRole(gid, "@everyone", EVERYONE_PERMISSIONS)
        self.moderator_role = self.add_role("Moderator", MANAGE_GUILD | MANAGE_MESSAGES, position=2)
        self.bot_role = self.add_role("sdbot-test", EVERYONE_PERMISSIONS | MANAGE_MESSAGES, position=1, managed=True)
        self.channels: dict[str, FakeChannel] = {}
        for pos, (name, nsfw) in enumerate([("general", False), ("nsfw", True), ("other", False)]):
            self.channels[name] = FakeChannel(self.snowflake(), name, gid, nsfw=nsfw, position=pos)
            self.guild.channels[self.channels[name].id] = self.channels[name]
        self.bot_joined_at = self.clock.iso()
        self.bot_member = self._new_member(self.bot_user, [self.bot_role])
        self.owner_member = self._new_member(self.owner, [])
        self.members: dict[str, FakeMember] = {}
        self.add_member("member")
        self.add_member("moderator", moderator=True)

    # ------------------------------------------------------------------ lifecycle
    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.http_url}/api/v10"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(self.rest.build_app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ violations
    def violate(self, kind: str, message: str) -> None:
        self.violations.append(Violation(kind, message))
        self.notifier.changed()

    def expect_violations(self, *kinds: str) -> None:
        """Declare violation kinds this test provokes on purpose; the fixture then tolerates them."""
        self.expected_violation_kinds.update(kinds)

    def violations_of(self, kind: str) -> list[Violation]:
        return [v for v in self.violations if v.kind == kind]

    async def wait_for_violation(self, kind: str, timeout: float = 5.0) -> Violation:
        return await self.notifier.wait_for(lambda: next(iter(self.violations_of(kind)), None), timeout,
                                            f"a {kind!r} violation")

    def unexpected_violations(self) -> list[Violation]:
        return [v for v in self.violations if v.kind not in self.expected_violation_kinds]

    @property
    def requests(self) -> list[RequestRecord]:
        """Every REST request received, in order, with its status."""
        return self.rest.requests

    def requests_to(self, method: str, path_regex: str) -> list[RequestRecord]:
        """Logged REST requests whose path (after /api/v10) fully matches ``path_regex``."""
        rx = re.compile(path_regex)
        return [r for r in self.requests if r.method == method and rx.fullmatch(r.path)]

    # ------------------------------------------------------------------ world helpers
    def _new_member(self, user: FakeUser, roles: list[FakeRole]) -> FakeMember:
        member = FakeMember(user, roles, self.clock.iso())
        self.guild.members[user.id] = member
        return member

    @property
    def member(self) -> FakeMember:
        return self.members["member"]

    @property
    def moderator(self) -> FakeMember:
        return self.members["moderator"]

    @property
    def users(self) -> dict[int, FakeUser]:
        return {m.id: m.user for m in self.guild.members.values()}

    def user_by_id(self, user_id: int) -> FakeUser:
        if user_id not in self.users:
            raise APIError(404, 10013, "Unknown User", violation="unknown_user", detail=str(user_id))
        return self.users[user_id]

    def channel(self, name: str = "general") -> FakeChannel:
        return self.channels[name]

    def add_role(self, name: str, permissions: int, *, position: int = 1, managed: bool = False) -> FakeRole:
        role = FakeRole(self.snowflake(), name, permissions, position, managed)
        self.guild.roles[role.id] = role
        return role

    def add_member(self, name: str, *, roles: Sequence[FakeRole] = (), moderator: bool = False) -> FakeMember:
        """Add a human member (dispatches GUILD_MEMBER_ADD to bots with the members intent)."""
        member = self._new_member(FakeUser(self.snowflake(), name), [*roles, *([self.moderator_role] if moderator else [])])
        self.members[name] = member
        self.gateway.dispatch("GUILD_MEMBER_ADD", {**member.payload(), "guild_id": str(self.guild.id)})
        return member

    def make_attachment(self, data: bytes | Image.Image, filename: str = "upload.png",
                        content_type: str | None = None) -> StoredAttachment:
        """A user upload for an ATTACHMENT option; served at a loopback URL so the bot can download it."""
        if not isinstance(data, bytes):
            buf = io.BytesIO()
            data.save(buf, format="PNG")
            data = buf.getvalue()
        return self.rest.store_attachment(self.channel().id, filename, data, content_type, ephemeral=True)

    def command_store(self, guild_id: int | None) -> dict[tuple[int, str], dict[str, Any]]:
        return self.commands.setdefault(guild_id, {})

    def synced_commands(self, guild: bool = False) -> dict[str, dict[str, Any]]:
        """Chat-input commands the bot synced, by name (global, or this guild's with ``guild=True``)."""
        store = self.command_store(self.guild.id if guild else None)
        return {name: cmd for (ctype, name), cmd in store.items() if ctype == 1}

    # ------------------------------------------------------------------ messages
    def publish(self, event: str, msg: StoredMessage) -> None:
        """Dispatch MESSAGE_CREATE/UPDATE for a non-ephemeral message."""
        if msg.ephemeral:
            return
        member = self.guild.members.get(msg.author.id)
        data = {**msg.payload(self.users), "guild_id": str(self.guild.id)}
        if member is not None:
            data["member"] = {k: v for k, v in member.payload().items() if k != "user"}
        self.gateway.dispatch(event, data, message_author_id=msg.author.id)

    def channel_messages(self, channel_id: int) -> list[StoredMessage]:
        """Visible messages of a channel, oldest first (no ephemeral, deleted or loading placeholders)."""
        return [m for m in self.messages.values()
                if m.channel_id == channel_id and not (m.deleted or m.ephemeral or m.flags & FLAG_LOADING)]

    async def wait_for_message(self, *, channel_id: int | None = None,
                               predicate: Callable[[StoredMessage], bool] | None = None,
                               author_id: int | None = None, timeout: float = 5.0) -> StoredMessage:
        """Wait for a visible channel message (by default authored by the bot) matching ``predicate``."""
        author = self.bot_user.id if author_id is None else author_id
        channel = self.channel().id if channel_id is None else channel_id

        def check() -> StoredMessage | None:
            for msg in self.channel_messages(channel):
                if msg.author.id == author and (predicate is None or predicate(msg)):
                    return msg
            return None

        return await self.notifier.wait_for(check, timeout, f"a message in channel {channel}")

    async def post_message(self, user: FakeMember, content: str = "", *, channel: FakeChannel | None = None,
                           files: Sequence[tuple[str, bytes]] = ()) -> StoredMessage:
        """A human posts in a channel (MESSAGE_CREATE; content hidden from bots without MESSAGE_CONTENT)."""
        channel = channel or self.channel()
        msg = StoredMessage(self.snowflake(), channel.id, self.guild.id, user.user, self.clock.iso(), content=content)
        msg.attachments = [self.rest.store_attachment(channel.id, name, data, None) for name, data in files]
        self.messages[msg.id] = msg
        self.publish("MESSAGE_CREATE", msg)
        self.notifier.changed()
        return msg

    # ------------------------------------------------------------------ interactions
    def _interaction(self, itype: int, user: FakeMember, channel: FakeChannel, data: dict[str, Any],
                     message: StoredMessage | None = None, locale: str = "en-US") -> InteractionHandle:
        iid = self.snowflake()
        token = f"aW50ZXJhY3Rpb24:{secrets.token_urlsafe(48)}"
        perms = self.guild.permissions_for(user)
        payload: dict[str, Any] = {
            "id": str(iid), "application_id": str(self.application_id), "type": itype, "token": token,
            "version": 1, "attachment_size_limit": self.attachment_size_limit, "guild_id": str(self.guild.id),
            "guild": {"id": str(self.guild.id), "locale": "en-US", "features": []},
            "channel": {**channel.payload(), "permissions": str(perms)}, "channel_id": str(channel.id),
            "member": {**user.payload(), "permissions": str(perms)},
            "app_permissions": str(self.guild.permissions_for(self.bot_member)), "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild.id)}, "context": 0,
            "locale": locale, "guild_locale": "en-US", "data": data,
        }
        if message is not None:
            payload["message"] = message.payload(self.users)
        handle = InteractionHandle(iid, token, itype, user, channel, payload, self.clock.monotonic(),
                                   self.notifier, source_message=message)
        self.interactions[iid] = handle
        self.interactions_by_token[token] = handle
        self.gateway.dispatch("INTERACTION_CREATE", payload)
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(self.interaction_deadline_s, self._deadline_check, handle))
        return handle

    def _deadline_check(self, handle: InteractionHandle) -> None:
        if handle.response_type is None:
            self.mark_deadline_missed(handle)

    def mark_deadline_missed(self, handle: InteractionHandle) -> None:
        if not handle.deadline_missed:
            handle.deadline_missed = True
            self.violate("interaction_deadline",
                         f"interaction {handle.id} not acknowledged within {self.interaction_deadline_s}s "
                         "(Discord shows 'The application did not respond'; the bot gets 10062)")

    async def slash(self, user: FakeMember, name: str | Sequence[str], /, *, channel: FakeChannel | None = None,
                    options: dict[str, Any] | None = None, locale: str = "en-US",
                    bypass_permissions: bool = False, **kwargs: Any) -> InteractionHandle:
        """Invoke a synced chat-input command as ``user``.

        ``name`` is "imagine", "quota set" or ("quota", "set"). Options come from ``kwargs`` and ``options``
        (use ``options`` for names that clash with this method's parameters, e.g. ``channel``). Values are
        checked against the synced definition; USER/CHANNEL/ROLE take fake objects, ATTACHMENT takes a
        :meth:`make_attachment` result (or raw bytes).
        """
        path = name.split() if isinstance(name, str) else list(name)
        channel = channel or self.channel()
        command = self.synced_commands(guild=True).get(path[0])
        guild_cmd = command is not None
        command = command or self.synced_commands().get(path[0])
        if command is None:
            raise FakeDiscordUsageError(f"/{path[0]} was never synced (synced: {sorted(self.synced_commands())}, "
                                        f"guild: {sorted(self.synced_commands(guild=True))})")
        if not bypass_permissions:
            self._check_command_access(command, user, channel)
        resolved: dict[str, dict[str, Any]] = {}
        values = {**kwargs, **(options or {})}
        data: dict[str, Any] = {
            "id": command["id"], "name": command["name"], "type": 1,
            "options": self._build_options(command.get("options") or [], path[1:], values, resolved, "/" + path[0]),
        }
        if resolved:
            data["resolved"] = resolved
        if guild_cmd:
            data["guild_id"] = str(self.guild.id)
        return self._interaction(2, user, channel, data, locale=locale)

    async def message_command(self, user: FakeMember, name: str, message: StoredMessage, /, *,
                              channel: FakeChannel | None = None) -> InteractionHandle:
        """Use the message context-menu command ``name`` (Apps > name) on ``message``: an APPLICATION_COMMAND
        interaction (type 2) whose data has command type 3, ``target_id`` and the message under ``resolved``."""
        channel = channel or self.guild.channels[message.channel_id]
        if message.deleted or message.ephemeral:
            raise FakeDiscordUsageError(f"message {message.id} cannot be right-clicked (deleted or ephemeral)")
        guild_store = self.command_store(self.guild.id)
        command = guild_store.get((3, name)) or self.command_store(None).get((3, name))
        if command is None:
            synced = [n for store in (guild_store, self.command_store(None)) for (t, n) in store if t == 3]
            raise FakeDiscordUsageError(f"message command {name!r} was never synced (synced: {sorted(synced)})")
        self._check_command_access(command, user, channel)
        data: dict[str, Any] = {
            "id": command["id"], "name": command["name"], "type": 3, "target_id": str(message.id),
            "resolved": {"messages": {str(message.id): message.payload(self.users)}},
        }
        if (3, name) in guild_store:
            data["guild_id"] = str(self.guild.id)
        return self._interaction(2, user, channel, data)

    async def autocomplete(self, user: FakeMember, name: str, focused: str, /, **values: Any) -> list[dict[str, Any]]:
        """The choices the bot offers for option ``focused`` of /``name`` while ``values`` are typed
        (an autocomplete interaction, type 4: partial values, no checks of required options)."""
        guild_command = self.synced_commands(guild=True).get(name)
        command = guild_command or self.synced_commands().get(name)
        if command is None:
            raise FakeDiscordUsageError(f"/{name} was never synced")
        types = {d["name"]: d["type"] for d in command.get("options") or []}
        options = [
            {"name": key, "type": types[key], "value": value, **({"focused": True} if key == focused else {})}
            for key, value in values.items()
        ]
        data: dict[str, Any] = {"id": command["id"], "name": command["name"], "type": 1, "options": options}
        if guild_command is not None:
            data["guild_id"] = str(self.guild.id)
        handle = self._interaction(4, user, self.channel(), data)
        assert await handle.wait_response() == 8
        return handle.autocomplete_choices or []

    def _check_command_access(self, command: dict[str, Any], user: FakeMember, channel: FakeChannel) -> None:
        perms = self.guild.permissions_for(user)
        required = command.get("default_member_permissions")
        if required is not None and perms & int(required) != int(required):
            raise FakeDiscordUsageError(f"{user.name} lacks default_member_permissions={required} for "
                                        f"/{command['name']}; Discord would hide it (pass bypass_permissions=True)")
        if command.get("nsfw") and not channel.nsfw:
            raise FakeDiscordUsageError(f"/{command['name']} is age-restricted; Discord hides it in #{channel.name}")
        contexts = command.get("contexts")
        if contexts is not None and 0 not in contexts:
            raise FakeDiscordUsageError(f"/{command['name']} is not available in guilds (contexts={contexts})")

    def _build_options(self, defs: list[dict[str, Any]], path: list[str], values: dict[str, Any],
                       resolved: dict[str, dict[str, Any]], where: str) -> list[dict[str, Any]]:
        subs = [d for d in defs if d["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)]
        if path:
            sub = next((d for d in subs if d["name"] == path[0]), None)
            if sub is None:
                raise FakeDiscordUsageError(f"{where} has no subcommand {path[0]!r} (has {[d['name'] for d in subs]})")
            return [{"name": sub["name"], "type": sub["type"],
                     "options": self._build_options(sub.get("options") or [], path[1:], values, resolved,
                                                    f"{where} {path[0]}")}]
        if subs:
            raise FakeDiscordUsageError(f"{where} needs a subcommand: one of {[d['name'] for d in subs]}")
        by_name = {d["name"]: d for d in defs}
        out = []
        for key, value in values.items():
            if key not in by_name:
                raise FakeDiscordUsageError(f"{where} has no option {key!r} (has {sorted(by_name)})")
            if value is None:
                continue
            definition = by_name[key]
            out.append({"name": key, "type": definition["type"],
                        "value": self._option_value(definition, value, resolved, where)})
        missing = [d["name"] for d in defs if d.get("required") and values.get(d["name"]) is None]
        if missing:
            raise FakeDiscordUsageError(f"{where} is missing required options {missing}")
        return out

    def _option_value(self, d: dict[str, Any], value: Any, resolved: dict[str, dict[str, Any]], where: str) -> Any:
        otype, label = d["type"], f"{where} option {d['name']!r}"

        def bad(expected: str) -> FakeDiscordUsageError:
            return FakeDiscordUsageError(f"{label} expects {expected}, got {value!r}")

        if otype == STRING:
            if not isinstance(value, str):
                raise bad("str")
            if not d.get("min_length", 0) <= len(value) <= d.get("max_length", 6000):
                raise bad(f"length in [{d.get('min_length', 0)}, {d.get('max_length', 6000)}]")
        elif otype in (INTEGER, NUMBER):
            if isinstance(value, bool) or not isinstance(value, int if otype == INTEGER else (int, float)):
                raise bad("int" if otype == INTEGER else "number")
            if ("min_value" in d and value < d["min_value"]) or ("max_value" in d and value > d["max_value"]):
                raise bad(f"a value in [{d.get('min_value')}, {d.get('max_value')}]")
        elif otype == BOOLEAN:
            if not isinstance(value, bool):
                raise bad("bool")
        elif otype in (USER, MENTIONABLE) and isinstance(value, FakeMember):
            resolved.setdefault("users", {})[str(value.id)] = value.user.payload()
            member = {k: v for k, v in value.payload().items() if k != "user"}
            resolved.setdefault("members", {})[str(value.id)] = {**member, "permissions": str(self.guild.permissions_for(value))}
            return str(value.id)
        elif otype == CHANNEL and isinstance(value, FakeChannel):
            allowed = d.get("channel_types")
            if allowed and value.type not in allowed:
                raise bad(f"a channel of types {allowed}")
            resolved.setdefault("channels", {})[str(value.id)] = {**value.payload(), "permissions": str(
                self.guild.permissions_for(self.bot_member))}
            return str(value.id)
        elif otype in (ROLE, MENTIONABLE) and isinstance(value, FakeRole):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return str(value.id)
        elif otype == ATTACHMENT and isinstance(value, (StoredAttachment, bytes)):
            att = value if isinstance(value, StoredAttachment) else self.make_attachment(value)
            resolved.setdefault("attachments", {})[str(att.id)] = att.payload()
            return str(att.id)
        else:
            raise bad({USER: "a FakeMember", CHANNEL: "a FakeChannel", ROLE: "a FakeRole", MENTIONABLE:
                       "a FakeMember or FakeRole", ATTACHMENT: "make_attachment(...) or bytes"}.get(otype, f"type {otype}"))
        if d.get("choices") and value not in [c["value"] for c in d["choices"]]:
            raise bad(f"one of the choices {[c['value'] for c in d['choices']]}")
        return value

    def _component(self, message: StoredMessage, custom_id: str, types: set[int]) -> dict[str, Any]:
        if message.deleted:
            raise FakeDiscordUsageError(f"message {message.id} was deleted")
        for comp in walk_components(message.components):
            if comp.get("custom_id") == custom_id and comp.get("type") in types:
                if comp.get("disabled"):
                    raise FakeDiscordUsageError(f"component {custom_id!r} is disabled; users cannot use it")
                return comp
        raise FakeDiscordUsageError(f"no component {custom_id!r} of types {types} on {message!r}")

    async def click(self, user: FakeMember, message: StoredMessage, custom_id: str) -> InteractionHandle:
        """Press a button on a message (a type 3 MESSAGE_COMPONENT interaction)."""
        self._component(message, custom_id, {2})
        channel = self.guild.channels[message.channel_id]
        return self._interaction(3, user, channel, {"custom_id": custom_id, "component_type": 2}, message)

    async def select(self, user: FakeMember, message: StoredMessage, custom_id: str,
                     values: Sequence[str]) -> InteractionHandle:
        """Pick options in a string select menu."""
        comp = self._component(message, custom_id, {3})
        known = {o["value"] for o in comp.get("options") or []}
        if not set(values) <= known or not comp.get("min_values", 1) <= len(values) <= comp.get("max_values", 1):
            raise FakeDiscordUsageError(f"invalid selection {values} for {custom_id!r} (options {sorted(known)})")
        channel = self.guild.channels[message.channel_id]
        return self._interaction(3, user, channel, {"custom_id": custom_id, "component_type": 3,
                                                    "values": list(values)}, message)

    async def submit_modal(self, user: FakeMember, shown: InteractionHandle, values: dict[str, str]) -> InteractionHandle:
        """Submit the modal the bot answered ``shown`` with; ``values`` maps text-input custom_id -> text."""
        if shown.modal is None:
            raise FakeDiscordUsageError(f"interaction {shown.id} was not answered with a modal")

        def fill(comp: dict[str, Any]) -> dict[str, Any]:
            if comp.get("type") == 1:
                return {"type": 1, "components": [fill(c) for c in comp.get("components") or []]}
            if comp.get("type") == 18:
                return {"type": 18, "component": fill(comp["component"])}
            if comp.get("type") == 4:
                return {"type": 4, "custom_id": comp["custom_id"], "value": values.get(comp["custom_id"], "")}
            return {"type": comp.get("type"), "custom_id": comp.get("custom_id"), "values": []}

        unknown = set(values) - {c.get("custom_id") for c in walk_components(shown.modal["components"])}
        if unknown:
            raise FakeDiscordUsageError(f"modal has no inputs {sorted(unknown)}")
        data = {"custom_id": shown.modal["custom_id"], "components": [fill(c) for c in shown.modal["components"]]}
        return self._interaction(5, user, shown.channel, data, shown.source_message)

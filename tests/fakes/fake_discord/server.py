"""REST side of the fake: routing, scripted faults, and the /api/v10 endpoints discord.py uses.

Unknown routes, bad tokens and limit breaches are answered the way Discord answers them and are
recorded as violations on the :class:`FakeDiscord`.
"""

from __future__ import annotations

import json
import mimetypes
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from .state import (
    FLAG_COMPONENTS_V2,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    FLAG_SUPPRESS_NOTIFICATIONS,
    FakeChannel,
    FakeUser,
    InteractionHandle,
    StoredAttachment,
    StoredMessage,
)
from .validation import (
    APIError,
    FormErrors,
    UploadedFile,
    validate_commands,
    validate_message,
    validate_modal,
)

if TYPE_CHECKING:
    from .client_api import FakeDiscord

API_PREFIX = "/api/v10"
_FILE_FIELD = re.compile(r"files\[(\d+)\]")


def json_response(body: Any, status: int = 200) -> web.Response:
    # discord.py only parses JSON when Content-Type is exactly "application/json" (no charset).
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json")


@dataclass
class Req:
    method: str
    path: str  # after /api/v10
    query: dict[str, str]
    payload: Any
    files: list[UploadedFile]
    params: dict[str, str]


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    payload: Any = None
    files: list[str] = field(default_factory=list)
    status: int = 0
    at: float = field(default_factory=time.monotonic)  # when it arrived (for rate checks)


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    action: str  # "429" | "5xx" | "gateway:reconnect" | "gateway:drop"
    remaining: int
    status: int = 500
    retry_after: float = 0.05
    is_global: bool = False


class Faults:
    """Scripted failures keyed by method + a regex fully matching the path after /api/v10."""

    def __init__(self) -> None:
        self._faults: list[_Fault] = []

    def rate_limit(self, method: str, path: str, *, times: int = 1, retry_after: float = 0.05,
                   is_global: bool = False) -> None:
        """Answer the next ``times`` matching requests with 429 (JSON ``retry_after`` + ``Via`` header)."""
        self._faults.append(_Fault(method, re.compile(path), "429", times, 429, retry_after, is_global))

    def server_error(self, method: str, path: str, *, times: int = 1, status: int = 500) -> None:
        """Answer the next ``times`` matching requests with a 5xx (discord.py sleeps 1 s, 3 s... and retries)."""
        self._faults.append(_Fault(method, re.compile(path), "5xx", times, status))

    def gateway_on_request(self, method: str, path: str, *, action: str = "reconnect", times: int = 1) -> None:
        """When a matching request arrives, RECONNECT ("reconnect") or cut ("drop") the gateway first."""
        assert action in ("reconnect", "drop")
        self._faults.append(_Fault(method, re.compile(path), f"gateway:{action}", times))

    def take(self, method: str, path: str) -> list[_Fault]:
        """Consume the matching gateway faults and at most one HTTP error fault (applied in that order)."""
        hits: list[_Fault] = []
        for fault in self._faults:
            if fault.remaining > 0 and fault.method == method and fault.path.fullmatch(path):
                is_error = not fault.action.startswith("gateway:")
                if is_error and any(not h.action.startswith("gateway:") for h in hits):
                    continue
                fault.remaining -= 1
                hits.append(fault)
        return sorted(hits, key=lambda f: not f.action.startswith("gateway:"))


Handler = Callable[[Req], Awaitable[tuple[int, Any]]]


class RestApi:
    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        app, snow, msg, wh, ch = r"(?P<app_id>\d+)", r"\d+", r"(?P<message_id>\d+)", r"(?P<token>[^/]+)", r"(?P<channel_id>\d+)"
        # (method, path regex, handler, needs bot auth)
        self.routes: list[tuple[str, re.Pattern[str], Handler, bool]] = [
            (m, re.compile(p), h, auth) for m, p, h, auth in [
                ("GET", "/users/@me", self.get_me, True),
                ("GET", r"/users/(?P<user_id>\d+)", self.get_user, True),
                ("GET", "/oauth2/applications/@me", self.get_application, True),
                ("GET", "/applications/@me", self.get_application, True),
                ("GET", "/gateway", self.get_gateway, False),
                ("GET", "/gateway/bot", self.get_gateway, True),
                ("GET", f"/applications/{app}/commands", self.get_commands, True),
                ("PUT", f"/applications/{app}/commands", self.put_commands, True),
                ("GET", rf"/applications/{app}/guilds/(?P<guild_id>\d+)/commands", self.get_commands, True),
                ("PUT", rf"/applications/{app}/guilds/(?P<guild_id>\d+)/commands", self.put_commands, True),
                ("POST", rf"/interactions/(?P<interaction_id>{snow})/{wh}/callback", self.interaction_callback, False),
                ("POST", f"/webhooks/{app}/{wh}", self.followup, False),
                ("GET", f"/webhooks/{app}/{wh}/messages/(?P<message_id>@original|{snow})", self.webhook_message, False),
                ("PATCH", f"/webhooks/{app}/{wh}/messages/(?P<message_id>@original|{snow})", self.webhook_message, False),
                ("DELETE", f"/webhooks/{app}/{wh}/messages/(?P<message_id>@original|{snow})", self.webhook_message, False),
                ("GET", f"/channels/{ch}", self.get_channel, True),
                ("GET", f"/channels/{ch}/messages", self.list_messages, True),
                ("POST", f"/channels/{ch}/messages", self.create_channel_message, True),
                ("GET", f"/channels/{ch}/messages/{msg}", self.channel_message, True),
                ("PATCH", f"/channels/{ch}/messages/{msg}", self.channel_message, True),
                ("DELETE", f"/channels/{ch}/messages/{msg}", self.channel_message, True),
                ("POST", f"/channels/{ch}/typing", self.typing, True),
                ("GET", r"/guilds/(?P<guild_id>\d+)", self.get_guild, True),
                ("GET", r"/guilds/(?P<guild_id>\d+)/channels", self.get_guild_channels, True),
                ("GET", r"/guilds/(?P<guild_id>\d+)/members/(?P<user_id>\d+)", self.get_member, True),
            ]
        ]

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=512 * 1024 * 1024)
        app.router.add_get("/", self.fake.gateway.handle)
        app.router.add_get("/resume-gateway/", self.fake.gateway.handle)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self.serve_attachment)
        app.router.add_route("*", "/{tail:.*}", self.entry)
        return app

    # ------------------------------------------------------------------ plumbing
    async def entry(self, request: web.Request) -> web.StreamResponse:
        fake = self.fake
        sub = request.path[len(API_PREFIX):] if request.path.startswith(API_PREFIX + "/") else None
        record = RequestRecord(request.method, sub or request.path, dict(request.query))
        self.requests.append(record)
        match = None
        for method, pattern, handler, auth in self.routes:
            if sub is not None and method == request.method and (match := pattern.fullmatch(sub)):
                break
        else:
            fake.violate("unknown_route", f"{request.method} {request.path}")
            record.status = 404
            return json_response({"message": "404: Not Found", "code": 0}, 404)

        for fault in self.faults.take(request.method, sub):
            if fault.action == "429":
                record.status = 429
                body = {"message": "You are being rate limited.", "retry_after": fault.retry_after,
                        "global": fault.is_global}
                resp = json_response(body, 429)
                resp.headers.update({"Via": "1.1 google", "Retry-After": str(max(1, round(fault.retry_after))),
                                     "X-RateLimit-Scope": "global" if fault.is_global else "user"})
                return resp
            if fault.action == "5xx":
                record.status = fault.status
                return json_response({"message": f"{fault.status}: Internal Server Error", "code": 0}, fault.status)
            if fault.action == "gateway:reconnect":
                fake.gateway.reconnect()
            elif fault.action == "gateway:drop":
                fake.gateway.drop()

        if auth and request.headers.get("Authorization") != f"Bot {fake.token}":
            fake.violate("unauthorized", f"{request.method} {sub} without the bot token")
            record.status = 401
            return json_response({"message": "401: Unauthorized", "code": 0}, 401)

        try:
            payload, files = await self._read_body(request)
            record.payload, record.files = payload, [f.filename for f in files]
            status, body = await handler(Req(request.method, sub, dict(request.query), payload, files, match.groupdict()))
        except APIError as err:
            if err.violation:
                fake.violate(err.violation, f"{request.method} {sub}: {err.detail}")
            status, body = err.status, err.body()
        except Exception as exc:  # malformed body or a fake bug: answer 400 so discord.py does not retry a 5xx
            fake.violate("malformed_request", f"{request.method} {sub}: {exc!r}\n{traceback.format_exc()}")
            status, body = 400, {"message": f"Invalid Form Body ({exc!r})", "code": 50035, "errors": {}}
        record.status = status
        fake.notifier.changed()
        return web.Response(status=204) if body is None else json_response(body, status)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[UploadedFile]]:
        if request.method in ("GET", "DELETE") or not request.can_read_body:
            return None, []
        if request.content_type.startswith("multipart/"):
            payload: Any = None
            files: list[UploadedFile] = []
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                data = await part.read(decode=False)  # type: ignore[union-attr]
                name = part.name or ""
                if name == "payload_json":
                    payload = json.loads(data)
                elif m := _FILE_FIELD.fullmatch(name):
                    filename = part.filename or f"file{m.group(1)}"  # type: ignore[union-attr]
                    ctype = mimetypes.guess_type(filename)[0]  # discord.py always says octet-stream
                    files.append(UploadedFile(int(m.group(1)), filename, ctype, bytes(data)))
                else:
                    raise APIError(400, 50035, "Invalid Form Body", violation="invalid_form_body",
                                   detail=f"unexpected multipart field {name!r}")
            return payload or {}, files
        text = await request.text()
        return (json.loads(text) if text else None), []

    # ------------------------------------------------------------------ identity / gateway
    async def get_me(self, req: Req) -> tuple[int, Any]:
        return 200, self.fake.bot_user.payload()

    async def get_user(self, req: Req) -> tuple[int, Any]:
        return 200, self.fake.user_by_id(int(req.params["user_id"])).payload()

    async def get_application(self, req: Req) -> tuple[int, Any]:
        fake = self.fake
        return 200, {
            "id": str(fake.application_id), "name": fake.bot_user.username, "icon": None, "description": "",
            "summary": "", "type": None, "bot_public": True, "bot_require_code_grant": False,
            "verify_key": "0" * 64, "owner": fake.owner.payload(), "team": None, "flags": 0,
            "bot": fake.bot_user.payload(), "tags": [], "redirect_uris": [], "interactions_endpoint_url": None,
            "integration_types_config": {"0": {}},
        }

    async def get_gateway(self, req: Req) -> tuple[int, Any]:
        return 200, {"url": self.fake.ws_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}}

    # ------------------------------------------------------------------ application commands
    def _check_app(self, app_id: str) -> None:
        if int(app_id) != self.fake.application_id:
            raise APIError(403, 50001, "Missing Access", violation="wrong_application", detail=f"application {app_id}")

    async def get_commands(self, req: Req) -> tuple[int, Any]:
        self._check_app(req.params["app_id"])
        gid = req.params.get("guild_id")
        return 200, list(self.fake.command_store(int(gid) if gid else None).values())

    async def put_commands(self, req: Req) -> tuple[int, Any]:
        fake = self.fake
        self._check_app(req.params["app_id"])
        gid = int(req.params["guild_id"]) if "guild_id" in req.params else None
        if gid is not None and gid != fake.guild.id:
            raise APIError(403, 50001, "Missing Access", violation="unknown_guild", detail=f"guild {gid}")
        if not isinstance(req.payload, list):
            raise APIError(400, 50035, "Invalid Form Body", violation="invalid_form_body", detail="body must be a list")
        validate_commands(req.payload)
        old = fake.command_store(gid)
        new: dict[tuple[int, str], dict[str, Any]] = {}
        for cmd in req.payload:
            key = (int(cmd.get("type", 1)), cmd["name"])
            previous = old.get(key)
            new[key] = {
                "default_member_permissions": None, "nsfw": False, "contexts": None, "integration_types": [0],
                "description": "", "options": [],  # what Discord returns for a context-menu command
                **cmd, "type": key[0], "application_id": str(fake.application_id),
                "id": previous["id"] if previous else str(fake.snowflake()), "version": str(fake.snowflake()),
                **({"guild_id": str(gid)} if gid else {}),
            }
        old.clear()
        old.update(new)
        return 200, list(new.values())

    # ------------------------------------------------------------------ interactions
    async def interaction_callback(self, req: Req) -> tuple[int, Any]:
        fake = self.fake
        it = fake.interactions.get(int(req.params["interaction_id"]))
        if it is None or it.token != req.params["token"]:
            raise APIError(404, 10062, "Unknown interaction", violation="unknown_interaction")
        if it.response_type is not None:
            raise APIError(400, 40060, "Interaction has already been acknowledged.", violation="already_acknowledged",
                           detail=f"interaction {it.id} already answered with type {it.response_type}")
        if it.deadline_missed or fake.clock.monotonic() - it.created_at > fake.interaction_deadline_s:
            # Recorded once: either here or by the deadline timer, whichever sees it first.
            fake.mark_deadline_missed(it)
            raise APIError(404, 10062, "Unknown interaction")
        body = req.payload or {}
        rtype, data = body.get("type"), body.get("data") or {}
        resource_message: StoredMessage | None = None
        if rtype in (4, 5):
            flags = int(data.get("flags") or 0)
            if rtype == 4:
                validate_message(data, req.files, size_limit=fake.attachment_size_limit, creating=True)
            else:
                flags = (flags & FLAG_EPHEMERAL) | FLAG_LOADING
            msg = self.new_message(it.channel, fake.bot_user, data if rtype == 4 else {}, req.files, flags=flags,
                                   interaction=it)
            it.original = resource_message = msg
            fake.publish("MESSAGE_CREATE", msg)
        elif rtype in (6, 7):
            # Valid for components and modal submits; a modal opened from a slash command has no message
            # to update, so only the plain acknowledgement (6) works there.
            if it.type not in (3, 5) or (rtype == 7 and it.source_message is None):
                raise APIError(400, 50035, "Invalid Form Body", violation="invalid_response_type",
                               detail=f"callback type {rtype} for interaction type {it.type} without a message")
            it.original = it.source_message
            if rtype == 7 and it.source_message is not None:
                validate_message(data, req.files, size_limit=fake.attachment_size_limit, creating=False)
                self.edit_message(it.source_message, data, req.files)
                resource_message = it.source_message
                fake.publish("MESSAGE_UPDATE", it.source_message)
        elif rtype == 9:
            if it.type == 5:
                raise APIError(400, 50035, "Invalid Form Body", violation="invalid_response_type",
                               detail="a modal cannot answer a modal submit")
            validate_modal(data)
            it.modal = data
        elif rtype == 8 and it.type == 4:
            it.autocomplete_choices = data.get("choices") or []
        else:
            raise APIError(400, 50035, "Invalid Form Body", violation="invalid_response_type",
                           detail=f"callback type {rtype} for interaction type {it.type}")
        it.response_type = rtype
        resource: dict[str, Any] = {"type": rtype}
        if resource_message is not None:
            resource["message"] = resource_message.payload(fake.users)
        msg_for_ids = it.original
        return 200, {
            "interaction": {
                "id": str(it.id), "type": it.type,
                "response_message_id": str(msg_for_ids.id) if msg_for_ids else None,
                "response_message_loading": rtype == 5,
                "response_message_ephemeral": bool(msg_for_ids and msg_for_ids.ephemeral),
            },
            "resource": resource,
        }

    def _interaction_for_webhook(self, req: Req) -> InteractionHandle:
        fake = self.fake
        it = fake.interactions_by_token.get(req.params["token"])
        if int(req.params["app_id"]) != fake.application_id or it is None:
            raise APIError(404, 10015, "Unknown Webhook", violation="unknown_webhook")
        if fake.clock.monotonic() - it.created_at > fake.token_lifetime_s:
            raise APIError(401, 50027, "Invalid Webhook Token", violation="token_expired",
                           detail=f"interaction {it.id} token used after {fake.token_lifetime_s:.0f}s")
        if it.response_type is None:
            raise APIError(404, 10015, "Unknown Webhook", violation="not_acknowledged",
                           detail=f"interaction {it.id} used before its initial response")
        return it

    async def followup(self, req: Req) -> tuple[int, Any]:
        fake = self.fake
        it = self._interaction_for_webhook(req)
        payload = req.payload or {}
        validate_message(payload, req.files, size_limit=fake.attachment_size_limit, creating=True)
        if it.response_type == 5 and it.original is not None and it.original.loading:
            # Discord treats the first followup after a deferral as resolving the "thinking" message;
            # it keeps the deferral's ephemerality whatever flags the followup carries.
            msg = it.original
            self.edit_message(msg, payload, req.files)
            msg.flags &= ~FLAG_LOADING
            fake.publish("MESSAGE_UPDATE", msg)
        else:
            msg = self.new_message(it.channel, fake.bot_user, payload, req.files,
                                   flags=int(payload.get("flags") or 0), interaction=it)
            fake.publish("MESSAGE_CREATE", msg)
        it.followups.append(msg)
        return (200, msg.payload(fake.users)) if req.query.get("wait", "1") not in ("0", "false") else (204, None)

    async def webhook_message(self, req: Req) -> tuple[int, Any]:
        fake = self.fake
        it = self._interaction_for_webhook(req)
        mid = req.params["message_id"]
        msg = it.original if mid == "@original" else next(
            (m for m in [it.original, *it.followups] if m is not None and m.id == int(mid)), None)
        if msg is None or msg.deleted:
            raise APIError(404, 10008, "Unknown Message", violation="unknown_message",
                           detail=f"message {mid} of interaction {it.id}")
        if req.method == "GET":
            return 200, msg.payload(fake.users)
        if req.method == "DELETE":
            self.delete_message(msg)
            return 204, None
        payload = req.payload or {}
        validate_message(payload, req.files, size_limit=fake.attachment_size_limit, creating=False)
        self.edit_message(msg, payload, req.files)
        msg.flags &= ~FLAG_LOADING
        fake.publish("MESSAGE_UPDATE", msg)
        return 200, msg.payload(fake.users)

    # ------------------------------------------------------------------ channels / messages
    def _channel(self, req: Req) -> FakeChannel:
        channel = self.fake.guild.channels.get(int(req.params["channel_id"]))
        if channel is None:
            raise APIError(404, 10003, "Unknown Channel", violation="unknown_channel", detail=req.params["channel_id"])
        return channel

    def _message(self, channel: FakeChannel, message_id: str) -> StoredMessage:
        msg = self.fake.messages.get(int(message_id))
        if msg is None or msg.deleted or msg.ephemeral or msg.channel_id != channel.id:
            raise APIError(404, 10008, "Unknown Message", violation="unknown_message", detail=message_id)
        return msg

    async def get_channel(self, req: Req) -> tuple[int, Any]:
        return 200, self._channel(req).payload()

    async def list_messages(self, req: Req) -> tuple[int, Any]:
        channel = self._channel(req)
        msgs = self.fake.channel_messages(channel.id)
        if "before" in req.query:
            msgs = [m for m in msgs if m.id < int(req.query["before"])]
        if "after" in req.query:
            msgs = [m for m in msgs if m.id > int(req.query["after"])]
        limit = int(req.query.get("limit", 50))
        return 200, [m.payload(self.fake.users) for m in reversed(msgs)][:limit]

    async def create_channel_message(self, req: Req) -> tuple[int, Any]:
        fake = self.fake
        channel = self._channel(req)
        payload = req.payload or {}
        validate_message(payload, req.files, size_limit=fake.attachment_size_limit, creating=True)
        flags = int(payload.get("flags") or 0) & (FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_COMPONENTS_V2)
        msg = self.new_message(channel, fake.bot_user, payload, req.files, flags=flags)
        if ref := payload.get("message_reference"):
            msg.message_reference = {**ref, "channel_id": str(channel.id), "guild_id": str(fake.guild.id)}
            msg.type = 19
        fake.publish("MESSAGE_CREATE", msg)
        return 200, msg.payload(fake.users)

    async def channel_message(self, req: Req) -> tuple[int, Any]:
        fake = self.fake
        msg = self._message(self._channel(req), req.params["message_id"])
        if req.method == "GET":
            return 200, msg.payload(fake.users)
        if req.method == "DELETE":
            self.delete_message(msg)
            return 204, None
        if msg.author.id != fake.bot_user.id:
            raise APIError(403, 50005, "Cannot edit a message authored by another user", violation="forbidden_edit")
        payload = req.payload or {}
        validate_message(payload, req.files, size_limit=fake.attachment_size_limit, creating=False)
        self.edit_message(msg, payload, req.files)
        fake.publish("MESSAGE_UPDATE", msg)
        return 200, msg.payload(fake.users)

    async def typing(self, req: Req) -> tuple[int, Any]:
        self._channel(req)
        return 204, None

    async def get_guild(self, req: Req) -> tuple[int, Any]:
        self._check_guild(req)
        data = self.fake.guild.payload(self.fake.bot_joined_at)
        for key in ("channels", "members", "threads", "presences", "voice_states"):
            data.pop(key)
        return 200, data

    async def get_guild_channels(self, req: Req) -> tuple[int, Any]:
        self._check_guild(req)
        return 200, [c.payload() for c in self.fake.guild.channels.values()]

    async def get_member(self, req: Req) -> tuple[int, Any]:
        self._check_guild(req)
        member = self.fake.guild.members.get(int(req.params["user_id"]))
        if member is None:
            raise APIError(404, 10007, "Unknown Member", violation="unknown_member", detail=req.params["user_id"])
        return 200, member.payload()

    def _check_guild(self, req: Req) -> None:
        if int(req.params["guild_id"]) != self.fake.guild.id:
            raise APIError(404, 10004, "Unknown Guild", violation="unknown_guild", detail=req.params["guild_id"])

    async def serve_attachment(self, request: web.Request) -> web.StreamResponse:
        att = self.fake.attachments.get(int(request.match_info["attachment_id"]))
        if att is None or att.filename != request.match_info["filename"]:
            self.fake.violate("unknown_route", f"GET {request.path} (no such attachment)")
            return web.Response(status=404, text="Not Found")
        return web.Response(body=att.data, content_type=att.content_type or "application/octet-stream")

    # ------------------------------------------------------------------ message model operations
    def store_attachment(self, channel_id: int, filename: str, data: bytes, content_type: str | None,
                         *, description: str | None = None, ephemeral: bool = False) -> StoredAttachment:
        fake = self.fake
        aid = fake.snowflake()
        ctype = content_type or mimetypes.guess_type(filename)[0]
        att = StoredAttachment(aid, filename, data, ctype, f"{fake.http_url}/attachments/{channel_id}/{aid}/{quote(filename)}",
                               description=description, ephemeral=ephemeral)
        if ctype and ctype.startswith("image/"):
            try:
                att.width, att.height = att.image().size
            except Exception:  # not a decodable image: Discord just omits dimensions
                pass
        fake.attachments[aid] = att
        return att

    def _attachments(self, msg: StoredMessage, payload: dict[str, Any], files: list[UploadedFile],
                     existing: list[StoredAttachment]) -> list[StoredAttachment]:
        """Apply the v10 rule: ``attachments`` lists everything kept (by id) plus new uploads (by file index)."""
        by_index = {f.index: f for f in files}
        if payload.get("attachments") is None:
            wanted: list[dict[str, Any]] = [{"id": f.index} for f in files]
            keep = list(existing)
        else:
            wanted, keep = payload["attachments"], []
        errors = FormErrors()
        used: set[int] = set()
        for i, meta in enumerate(wanted):
            aid = int(meta.get("id", -1))
            old = next((a for a in existing if a.id == aid), None)
            if old is not None:
                keep.append(old)
            elif aid in by_index:
                f = by_index[aid]
                used.add(aid)
                keep.append(self.store_attachment(msg.channel_id, meta.get("filename") or f.filename, f.data,
                                                  f.content_type, description=meta.get("description"),
                                                  ephemeral=msg.ephemeral))
            else:
                errors.add(("attachments", i, "id"), "ATTACHMENT_NOT_FOUND", f"Unknown attachment id {aid}")
        errors.raise_if_any()
        return keep

    def new_message(self, channel: FakeChannel, author: FakeUser, payload: dict[str, Any], files: list[UploadedFile],
                    *, flags: int = 0, interaction: InteractionHandle | None = None) -> StoredMessage:
        fake = self.fake
        flags &= FLAG_EPHEMERAL | FLAG_LOADING | FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_COMPONENTS_V2
        msg = StoredMessage(id=fake.snowflake(), channel_id=channel.id, guild_id=fake.guild.id, author=author,
                            timestamp=fake.clock.iso(), flags=flags)
        if interaction is not None:
            msg.type = 20 if interaction.type == 2 else 0
            msg.webhook_id = msg.application_id = fake.application_id
            msg.interaction_metadata = {
                "id": str(interaction.id), "type": interaction.type, "user": interaction.user.user.payload(),
                "authorizing_integration_owners": {"0": str(fake.guild.id)},
            }
        self._apply(msg, payload, files, creating=True)
        fake.messages[msg.id] = msg
        return msg

    def edit_message(self, msg: StoredMessage, payload: dict[str, Any], files: list[UploadedFile]) -> None:
        msg.history.append(msg.payload())
        self._apply(msg, payload, files, creating=False)
        msg.edited_timestamp = self.fake.clock.iso()

    def _apply(self, msg: StoredMessage, payload: dict[str, Any], files: list[UploadedFile], *, creating: bool) -> None:
        if "content" in payload:
            msg.content = payload["content"] or ""
        if "embeds" in payload:
            msg.embeds = [{"type": "rich", **e} for e in payload["embeds"] or []]
        if "components" in payload:
            msg.components = payload["components"] or []
        if "attachments" in payload or files:
            msg.attachments = self._attachments(msg, payload, files, [] if creating else msg.attachments)
        if not creating and "flags" in payload and payload["flags"] is not None:
            # Only SUPPRESS_EMBEDS may change on edit; components V2 can be turned on but never off.
            mutable = FLAG_SUPPRESS_EMBEDS | (FLAG_COMPONENTS_V2 if not msg.flags & FLAG_COMPONENTS_V2 else 0)
            msg.flags = (msg.flags & ~mutable) | (int(payload["flags"]) & mutable)

    def delete_message(self, msg: StoredMessage) -> None:
        msg.deleted = True
        if not msg.ephemeral:
            self.fake.gateway.dispatch("MESSAGE_DELETE", {
                "id": str(msg.id), "channel_id": str(msg.channel_id), "guild_id": str(msg.guild_id)})

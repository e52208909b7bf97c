"""The fake gateway: HELLO/IDENTIFY/READY, heartbeats, RESUME with replay, RECONNECT, INVALID_SESSION.

Each IDENTIFY creates a :class:`GatewaySession` that numbers and keeps every dispatch it was sent.
A session outlives its WebSocket unless the client closed it with 1000/1001 (as Discord does), so a
client that RESUMEs gets every dispatch after the sequence number it reports.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .client_api import FakeDiscord

# Opcodes.
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE_STATE = 0, 1, 2, 3, 4
RESUME, RECONNECT, REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 6, 7, 8, 9, 10, 11

# Intents the fake honours when filtering dispatches.
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_MESSAGE_CONTENT = 1 << 15

RESUME_PATH = "/resume-gateway/"


@dataclass
class ConnectionInfo:
    """One WebSocket connection, as recorded for test assertions."""

    path: str
    query: dict[str, str]
    compress: str | None
    op: str | None = None  # "identify" or "resume" once the client said which
    session_id: str | None = None
    close_code: int | None = None
    compressed_frames: int = 0  # frames sent through the zlib stream
    replayed: list[int] = field(default_factory=list)  # sequence numbers replayed on RESUME


class GatewayConnection:
    """A live WebSocket. All frames go through one writer task so the zlib stream stays ordered."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, info: ConnectionInfo) -> None:
        self.ws, self.request, self.info = ws, request, info
        self.session: GatewaySession | None = None
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._zlib = zlib.compressobj() if info.compress == "zlib-stream" else None
        self._writer = asyncio.create_task(self._write_loop(), name="fake-discord-gateway-writer")

    def send(self, payload: dict[str, Any]) -> None:
        self._queue.put_nowait(("send", payload))

    def close(self, code: int) -> None:
        self._queue.put_nowait(("close", code))

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (the client sees an abnormal closure)."""
        self._queue.put_nowait(("abort", None))

    async def _write_loop(self) -> None:
        while True:
            action, arg = await self._queue.get()
            try:
                if action == "send":
                    raw = json.dumps(arg, separators=(",", ":"))
                    if self._zlib is not None:
                        # One compressor per connection; each message ends with a Z_SYNC_FLUSH marker.
                        await self.ws.send_bytes(self._zlib.compress(raw.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH))
                        self.info.compressed_frames += 1
                    else:
                        await self.ws.send_str(raw)
                elif action == "close":
                    await self.ws.close(code=arg)
                    return
                else:
                    if self.request.transport is not None:
                        self.request.transport.abort()
                    return
            except (ConnectionError, RuntimeError):
                return  # the peer went away; the reader side cleans up

    async def stop(self) -> None:
        self._writer.cancel()
        try:
            await self._writer
        except (asyncio.CancelledError, Exception):
            pass


@dataclass(eq=False)
class GatewaySession:
    id: str
    intents: int
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    connection: GatewayConnection | None = None
    alive: bool = True

    def dispatch(self, event: str, data: Any) -> None:
        self.seq += 1
        payload = {"op": DISPATCH, "t": event, "s": self.seq, "d": data}
        self.events.append(payload)
        if self.connection is not None:
            self.connection.send(payload)


class GatewayHub:
    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.heartbeat_interval_ms = 41250
        self.sessions: dict[str, GatewaySession] = {}
        self.connections: list[ConnectionInfo] = []
        self.heartbeats = 0
        self.resume_gate: asyncio.Event | None = None
        self.pending_resumes = 0
        self._live: set[GatewayConnection] = set()

    # ------------------------------------------------------------------ stats for tests
    @property
    def identify_count(self) -> int:
        return sum(1 for c in self.connections if c.op == "identify")

    @property
    def resume_count(self) -> int:
        return sum(1 for c in self.connections if c.op == "resume" and c.session_id is not None)

    @property
    def connected(self) -> bool:
        return any(s.connection is not None for s in self.sessions.values() if s.alive)

    async def wait_connected(self, *, identifies: int | None = None, resumes: int | None = None,
                             timeout: float = 5.0) -> None:
        """Wait until a session is attached and (optionally) the IDENTIFY/RESUME counts reach given values."""

        def check() -> bool:
            return (self.connected and (identifies is None or self.identify_count >= identifies)
                    and (resumes is None or self.resume_count >= resumes))

        await self.fake.notifier.wait_for(check, timeout, f"gateway connected (identifies={identifies}, resumes={resumes})")

    # ------------------------------------------------------------------ scripted faults
    def reconnect(self) -> None:
        """Send RECONNECT (op 7) on every live connection; dispatches are buffered until the client RESUMEs."""
        for session in self._attached():
            assert session.connection is not None
            session.connection.send({"op": RECONNECT, "d": None, "s": None, "t": None})
            session.connection = None

    def drop(self, close_code: int | None = None) -> None:
        """Cut every live connection: abort TCP (close_code None) or send a close frame with that code."""
        for session in self._attached():
            conn = session.connection
            assert conn is not None
            session.connection = None
            conn.abort() if close_code is None else conn.close(close_code)

    def invalidate_session(self, resumable: bool = False) -> None:
        """Send INVALID_SESSION; a non-resumable one forces the client to IDENTIFY again."""
        for session in self._attached():
            assert session.connection is not None
            session.connection.send({"op": INVALID_SESSION, "d": resumable, "s": None, "t": None})
            if not resumable:
                session.alive = False
            session.connection = None

    def hold_resumes(self) -> asyncio.Event:
        """Make RESUMEs wait until the returned event is set (to dispatch events "while disconnected")."""
        self.resume_gate = asyncio.Event()
        return self.resume_gate

    def _attached(self) -> list[GatewaySession]:
        return [s for s in self.sessions.values() if s.alive and s.connection is not None]

    # ------------------------------------------------------------------ dispatch
    def dispatch(self, event: str, data: dict[str, Any], *, message_author_id: int | None = None) -> None:
        """Send an event to every live session, honouring GUILD_MESSAGES / MESSAGE_CONTENT / GUILD_MEMBERS."""
        for session in self.sessions.values():
            if not session.alive:
                continue
            if event.startswith("MESSAGE_") and not session.intents & INTENT_GUILD_MESSAGES:
                continue
            if event.startswith("GUILD_MEMBER") and not session.intents & INTENT_GUILD_MEMBERS:
                continue
            out = data
            if (event in ("MESSAGE_CREATE", "MESSAGE_UPDATE") and not session.intents & INTENT_MESSAGE_CONTENT
                    and message_author_id != self.fake.bot_user.id
                    and str(self.fake.bot_user.id) not in {m["id"] for m in data.get("mentions", [])}):
                out = {**data, "content": "", "embeds": [], "attachments": [], "components": []}
            session.dispatch(event, out)

    # ------------------------------------------------------------------ WebSocket handler
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        query = dict(request.query)
        info = ConnectionInfo(path=request.path, query=query, compress=query.get("compress"))
        self.connections.append(info)
        conn = GatewayConnection(ws, request, info)
        self._live.add(conn)
        if query.get("v") != "10" or query.get("encoding") != "json":
            self.fake.violate("gateway_protocol", f"gateway connect with unexpected query {query}")
        if info.compress not in (None, "zlib-stream"):
            self.fake.violate("gateway_protocol", f"unsupported compression {info.compress!r}")
            conn.close(4000)
        conn.send({"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_frame(conn, json.loads(msg.data))
                elif msg.type == WSMsgType.BINARY:
                    self.fake.violate("gateway_protocol", "client sent a binary frame")
                else:
                    break
        finally:
            info.close_code = ws.close_code
            session = conn.session
            if session is not None:
                if session.connection is conn:
                    session.connection = None
                if ws.close_code in (1000, 1001):
                    session.alive = False  # a clean close ends the session, as on Discord
            self._live.discard(conn)
            await conn.stop()
            self.fake.notifier.changed()
        return ws

    async def _on_frame(self, conn: GatewayConnection, frame: dict[str, Any]) -> None:
        op, d = frame.get("op"), frame.get("d")
        if op == HEARTBEAT:
            self.heartbeats += 1
            conn.send({"op": HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == IDENTIFY:
            self._identify(conn, d or {})
        elif op == RESUME:
            await self._resume(conn, d or {})
        elif conn.session is None:
            self.fake.violate("gateway_protocol", f"op {op} sent before IDENTIFY")
            conn.close(4003)
        elif op == REQUEST_MEMBERS:
            guild = self.fake.guild
            conn.session.dispatch("GUILD_MEMBERS_CHUNK", {
                "guild_id": str(guild.id), "members": [m.payload() for m in guild.members.values()],
                "chunk_index": 0, "chunk_count": 1, "not_found": [], "nonce": (d or {}).get("nonce"),
            })
        elif op in (PRESENCE, VOICE_STATE):
            pass
        else:
            self.fake.violate("gateway_protocol", f"unknown opcode {op}")
            conn.close(4001)

    def _identify(self, conn: GatewayConnection, d: dict[str, Any]) -> None:
        conn.info.op = "identify"
        if conn.session is not None:
            self.fake.violate("gateway_protocol", "IDENTIFY sent twice on one connection")
            conn.close(4005)
            return
        if d.get("token") != self.fake.token:
            self.fake.violate("gateway_auth", "IDENTIFY with a wrong token")
            conn.close(4004)
            return
        session = GatewaySession(id=secrets.token_hex(16), intents=int(d.get("intents", 0)), connection=conn)
        conn.session = session
        conn.info.session_id = session.id
        self.sessions[session.id] = session
        fake = self.fake
        ready = {
            "v": 10, "user": fake.bot_user.payload(), "guilds": [{"id": str(fake.guild.id), "unavailable": True}],
            "session_id": session.id, "session_type": "normal", "private_channels": [], "relationships": [],
            "presences": [], "user_settings": {}, "geo_ordered_rtc_regions": [], "_trace": ["fake-discord"],
            "resume_gateway_url": fake.ws_url + RESUME_PATH,
            "application": {"id": str(fake.application_id), "flags": 0},
        }
        if "shard" in d:
            ready["shard"] = d["shard"]
        session.dispatch("READY", ready)
        session.dispatch("GUILD_CREATE", fake.guild.payload(fake.bot_joined_at))
        fake.notifier.changed()

    async def _resume(self, conn: GatewayConnection, d: dict[str, Any]) -> None:
        conn.info.op = "resume"
        if self.resume_gate is not None:
            self.pending_resumes += 1
            self.fake.notifier.changed()
            await self.resume_gate.wait()
            self.pending_resumes -= 1
        if d.get("token") != self.fake.token:
            self.fake.violate("gateway_auth", "RESUME with a wrong token")
            conn.close(4004)
            return
        session = self.sessions.get(str(d.get("session_id")))
        seq = d.get("seq")
        if session is None or not session.alive or session.connection is not None or seq is None or seq > session.seq:
            conn.send({"op": INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        # Replay and attach without awaiting in between, so no dispatch can slip through the gap.
        for event in session.events:
            if event["s"] > seq:
                conn.send(event)
                conn.info.replayed.append(event["s"])
        conn.session = session
        conn.info.session_id = session.id
        session.connection = conn
        session.dispatch("RESUMED", {"_trace": ["fake-discord"]})
        self.fake.notifier.changed()

    async def close_all(self) -> None:
        for conn in list(self._live):
            conn.close(1001)
        for session in self.sessions.values():
            session.alive = False

"""Tests of the fake Discord itself, driven by a small real discord.py bot (not the product bot)."""

from __future__ import annotations

import asyncio
import io
import re
import time
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands
from discord.http import MultipartParameters
from discord.webhook.async_ import async_context, interaction_response_params
from PIL import Image

from tests.fakes.fake_discord import (
    FakeDiscord,
    FakeDiscordUsageError,
    InteractionFailed,
    StoredMessage,
)
from tests.fakes.fake_discord.running import run_client

FOLLOWUP_ROUTE = r"/webhooks/\d+/[^/]+"
CALLBACK_ROUTE = r"/interactions/\d+/[^/]+/callback"


def png_bytes(size: tuple[int, int] = (32, 16), color: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


class DemoButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"demo:btn:(?P<n>\d+)"):
    """A persistent button; discord.py routes clicks by matching the custom_id template."""

    def __init__(self, n: int) -> None:
        super().__init__(discord.ui.Button(label=f"Again #{n}", custom_id=f"demo:btn:{n}",
                                           style=discord.ButtonStyle.primary))
        self.n = n

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> DemoButton:
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"clicked {self.n}", ephemeral=True)


class DemoBot(commands.Bot):
    def __init__(self, *, sync: bool = True) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(command_prefix="!", intents=intents, guild_ready_timeout=0.05)
        self.sync_on_start = sync
        self.errors: list[BaseException] = []
        self.seen_messages: list[str] = []
        self.release = asyncio.Event()
        self.tree.on_error = self.on_tree_error  # type: ignore[method-assign]
        add_demo_commands(self)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(DemoButton)
        if self.sync_on_start:
            await self.tree.sync()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py's default sleeps 5 s before every re-IDENTIFY; tests do not need that."""

    async def on_message(self, message: discord.Message) -> None:
        self.seen_messages.append(message.content)

    async def on_tree_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        self.errors.append(error.original if isinstance(error, app_commands.CommandInvokeError) else error)


def add_demo_commands(bot: DemoBot) -> None:
    tree = bot.tree

    @tree.command(description="Defer, then send a PNG and a button")
    async def demo(interaction: discord.Interaction, n: int) -> None:
        await interaction.response.defer(thinking=True)
        view = discord.ui.View(timeout=None)
        view.add_item(DemoButton(n))
        await interaction.followup.send(f"image {n}", file=discord.File(io.BytesIO(png_bytes()), "demo.png"), view=view)

    @tree.command(description="Answer after the deadline")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.5)
        await interaction.response.send_message("too late")

    @tree.command(description="Defer and wait for the test to release")
    async def hold(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await bot.release.wait()
        await interaction.followup.send("released")

    @tree.command(description="Download an attachment and describe it")
    async def inspect(interaction: discord.Interaction, image: discord.Attachment) -> None:
        data = await image.read()
        width, height = Image.open(io.BytesIO(data)).size
        await interaction.response.send_message(f"{image.filename} {width}x{height} {len(data)}B", ephemeral=True)
        embed = discord.Embed(title="Inspected", description=f"by {interaction.user.name}")
        await interaction.channel.send(embed=embed)  # type: ignore[union-attr]

    @tree.command(description="Answer twice (the second initial response is refused)")
    async def twice(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("one")
        try:  # bypass discord.py's own InteractionResponded guard, as a buggy bot might
            await async_context.get().create_interaction_response(
                interaction.id, interaction.token, session=interaction._session,  # noqa: SLF001
                params=interaction_response_params(4, {"content": "two"}))
        except discord.HTTPException as exc:
            await interaction.followup.send(f"error {exc.status} {exc.code}")

    @tree.command(description="Break a Discord limit on purpose")
    async def bad(interaction: discord.Interaction, kind: str) -> None:
        await interaction.response.defer(ephemeral=True)
        try:
            if kind == "rows":  # discord.py's View refuses 6 rows, so go through its raw HTTP client
                rows = [{"type": 1, "components": [{"type": 2, "style": 1, "label": "b", "custom_id": f"r{i}"}]}
                        for i in range(6)]
                await bot.http.send_message(interaction.channel_id, params=MultipartParameters(  # type: ignore[arg-type]
                    payload={"content": "rows", "components": rows}, multipart=None, files=None))
            elif kind == "custom_id":
                view = discord.ui.View()
                view.add_item(discord.ui.Button(label="long", custom_id="x" * 101))
                await interaction.followup.send("long id", view=view)
            elif kind == "embed":
                await interaction.followup.send(embed=discord.Embed(title="t" * 257))
            elif kind == "big":
                await interaction.followup.send(file=discord.File(io.BytesIO(b"\0" * 2048), "big.bin"))
        except discord.HTTPException as exc:
            await interaction.followup.send(f"error {exc.status} {exc.code}")

    @tree.command(description="Offer a select menu")
    async def pick(interaction: discord.Interaction) -> None:
        select: discord.ui.Select[Any] = discord.ui.Select(custom_id="pick:menu", options=[
            discord.SelectOption(label="Apple", value="a"), discord.SelectOption(label="Banana", value="b")])

        async def chosen(inner: discord.Interaction) -> None:
            await inner.response.edit_message(content=f"picked {select.values[0]}", view=None)

        select.callback = chosen  # type: ignore[method-assign]
        view = discord.ui.View()
        view.add_item(select)
        await interaction.response.send_message("pick one", view=view)

    @tree.command(description="Ask for feedback in a modal")
    async def feedback(interaction: discord.Interaction) -> None:
        modal = discord.ui.Modal(title="Feedback", custom_id="feedback:modal")
        text: discord.ui.TextInput[Any] = discord.ui.TextInput(label="Text", custom_id="feedback:text")
        modal.add_item(text)

        async def submitted(inner: discord.Interaction) -> None:
            await inner.response.defer()  # type 6 on a modal submit
            await inner.followup.send(f"thanks: {text.value}")

        modal.on_submit = submitted  # type: ignore[method-assign]
        await interaction.response.send_modal(modal)

    quota = app_commands.Group(name="quota", description="Quotas", default_permissions=discord.Permissions(manage_guild=True))

    @quota.command(name="set", description="Set a member's daily quota")
    async def quota_set(interaction: discord.Interaction, user: discord.Member, amount: app_commands.Range[int, 0, 100]) -> None:
        await interaction.response.send_message(f"quota {user.name}={amount}", ephemeral=True)

    tree.add_command(quota)


async def wait_until(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- tests


async def test_defer_followup_with_png_and_dynamic_button(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    bot = DemoBot()
    async with run_client(fake, bot):
        assert fake.gateway.connections[0].compress == "zlib-stream"
        assert fake.gateway.connections[0].compressed_frames >= 3  # HELLO, READY, GUILD_CREATE...
        demo = fake.synced_commands()["demo"]
        assert demo["options"][0]["type"] == 4  # INTEGER, as the bot synced it

        handle = await fake.slash(fake.member, "demo", n=7)
        assert await handle.wait_response() == 5
        msg = await handle.wait_followup(lambda m: bool(m.attachments))
        assert msg is handle.original and not msg.loading  # the first followup resolved the deferral
        assert msg.content == "image 7" and not handle.ephemeral
        (att,) = msg.attachments
        assert att.filename == "demo.png" and att.content_type == "image/png" and (att.width, att.height) == (32, 16)
        assert att.image().getpixel((0, 0)) == (200, 30, 60)
        assert msg.custom_ids == ["demo:btn:7"]
        assert fake.channel_messages(fake.channel().id) == [msg]

        click = await fake.click(fake.moderator, msg, "demo:btn:7")
        reply = await click.wait_original()
        assert reply.content == "clicked 7" and click.ephemeral and click.response_type == 4
        assert not bot.errors


async def test_attachment_option_and_channel_message(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with run_client(fake, DemoBot()):
        upload = fake.make_attachment(png_bytes((40, 24)), "cat.png")
        handle = await fake.slash(fake.member, "inspect", image=upload)
        reply = await handle.wait_original()
        assert reply.content == f"cat.png 40x24 {upload.size}B" and handle.ephemeral
        posted = await fake.wait_for_message(channel_id=fake.channel().id, predicate=lambda m: bool(m.embeds))
        assert posted.embeds[0]["title"] == "Inspected" and posted.embeds[0]["description"] == "by member"
        assert handle.payload["data"]["resolved"]["attachments"][str(upload.id)]["url"].startswith(fake.http_url)


async def test_subcommand_group_options_and_test_side_strictness(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    bot = DemoBot()
    async with run_client(fake, bot):
        handle = await fake.slash(fake.moderator, "quota set", user=fake.member, amount=5)
        assert (await handle.wait_original()).content == "quota member=5"
        data = handle.payload["data"]
        assert data["options"][0] == {"name": "set", "type": 1, "options": [
            {"name": "user", "type": 6, "value": str(fake.member.id)}, {"name": "amount", "type": 4, "value": 5}]}
        assert str(fake.member.id) in data["resolved"]["members"]

        with pytest.raises(FakeDiscordUsageError, match="default_member_permissions"):
            await fake.slash(fake.member, ("quota", "set"), user=fake.member, amount=5)
        with pytest.raises(FakeDiscordUsageError, match="never synced"):
            await fake.slash(fake.member, "nope")
        with pytest.raises(FakeDiscordUsageError, match="expects int"):
            await fake.slash(fake.member, "demo", n="7")
        with pytest.raises(FakeDiscordUsageError, match=r"value in \[0, 100\]"):
            await fake.slash(fake.moderator, "quota set", user=fake.member, amount=500)
        with pytest.raises(FakeDiscordUsageError, match="needs a subcommand"):
            await fake.slash(fake.moderator, "quota")


async def test_select_menu_and_modal(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with run_client(fake, DemoBot()):
        handle = await fake.slash(fake.member, "pick")
        menu = await handle.wait_original()
        chosen = await fake.select(fake.member, menu, "pick:menu", ["b"])
        assert await chosen.wait_response() == 7
        assert menu.content == "picked b" and menu.components == [] and menu.history[0]["content"] == "pick one"

        asked = await fake.slash(fake.member, "feedback")
        modal = await asked.wait_modal()
        assert asked.response_type == 9 and modal["title"] == "Feedback"
        submitted = await fake.submit_modal(fake.member, asked, {"feedback:text": "great bot"})
        assert await submitted.wait_response() == 6
        assert (await submitted.wait_followup()).content == "thanks: great bot"


async def test_slow_command_misses_the_deadline(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    fake.interaction_deadline_s = 0.3
    fake.expect_violations("interaction_deadline")
    bot = DemoBot()
    async with run_client(fake, bot):
        handle = await fake.slash(fake.member, "slow")
        with pytest.raises(InteractionFailed):
            await handle.wait_response(timeout=2)
        await wait_until(lambda: bot.errors)
        assert isinstance(bot.errors[0], discord.NotFound) and bot.errors[0].code == 10062
        assert len(fake.violations_of("interaction_deadline")) == 1 and handle.response_type is None


async def test_second_initial_response_is_refused(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    fake.expect_violations("already_acknowledged")
    async with run_client(fake, DemoBot()):
        handle = await fake.slash(fake.member, "twice")
        assert (await handle.wait_followup(lambda m: m.content.startswith("error"))).content == "error 400 40060"
        assert handle.original is not None and handle.original.content == "one"
        assert len(fake.violations_of("already_acknowledged")) == 1


async def test_rate_limit_and_server_error_are_retried(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    # A 5xx backs off 1 + 2 * attempt seconds in discord.py, so fail the first attempt with it.
    fake.faults.server_error("POST", FOLLOWUP_ROUTE, times=1)
    fake.faults.rate_limit("POST", FOLLOWUP_ROUTE, times=1, retry_after=0.2)
    async with run_client(fake, DemoBot()):
        handle = await fake.slash(fake.member, "demo", n=3)
        started = time.monotonic()
        msg = await handle.wait_followup(timeout=5)
        assert msg.attachments[0].filename == "demo.png"
        assert [r.status for r in fake.requests_to("POST", FOLLOWUP_ROUTE)] == [500, 429, 200]
        assert time.monotonic() - started >= 1.2  # discord.py's 1 s 5xx backoff + 0.2 s retry_after


async def test_reconnect_mid_command_resumes_and_replays(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    bot = DemoBot()
    # RECONNECT exactly when the bot defers /hold, and keep the client waiting in RESUME meanwhile.
    fake.faults.gateway_on_request("POST", CALLBACK_ROUTE, action="reconnect")
    gate = fake.gateway.hold_resumes()
    async with run_client(fake, bot):
        held = await fake.slash(fake.member, "hold")
        assert await held.wait_response() == 5
        await fake.notifier.wait_for(lambda: fake.gateway.pending_resumes == 1, 3, "client to send RESUME")

        # Dispatched while the bot is disconnected: must arrive through the RESUME replay.
        await fake.post_message(fake.member, "sent while away")
        missed = await fake.slash(fake.member, "demo", n=2)
        gate.set()
        await fake.gateway.wait_connected(resumes=1)

        assert (await missed.wait_followup()).custom_ids == ["demo:btn:2"]
        await wait_until(lambda: "sent while away" in bot.seen_messages)
        resumed = fake.gateway.connections[-1]
        assert resumed.op == "resume" and resumed.path == "/resume-gateway/" and len(resumed.replayed) >= 2
        assert fake.gateway.identify_count == 1

        bot.release.set()
        assert (await held.wait_followup()).content == "released"


async def test_dropped_connection_and_invalid_session(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    bot = DemoBot()
    async with run_client(fake, bot):
        fake.gateway.drop()  # TCP abort, no close frame
        await fake.post_message(fake.member, "after drop")
        await fake.gateway.wait_connected(resumes=1)
        await wait_until(lambda: "after drop" in bot.seen_messages)
        assert fake.gateway.connections[-1].replayed

        fake.gateway.invalidate_session(resumable=False)
        await fake.gateway.wait_connected(identifies=2)
        await wait_until(lambda: bot.is_ready() and bot.get_guild(fake.guild.id) is not None)
        handle = await fake.slash(fake.member, "demo", n=4)
        assert (await handle.wait_followup()).content == "image 4"
        assert fake.gateway.resume_count == 1


async def test_followup_after_token_expiry_is_refused(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    fake.expect_violations("token_expired")
    bot = DemoBot()
    async with run_client(fake, bot):
        handle = await fake.slash(fake.member, "hold")
        await handle.wait_response()
        fake.clock.advance(16 * 60)
        bot.release.set()
        await wait_until(lambda: bot.errors)
        assert isinstance(bot.errors[0], discord.HTTPException) and bot.errors[0].code == 50027
        assert bot.errors[0].status == 401 and handle.followups == []
        assert handle.original is not None and handle.original.loading  # still "thinking" forever


@pytest.mark.parametrize(("kind", "status", "code", "violation"), [
    ("rows", 400, 50035, "invalid_form_body"),
    ("custom_id", 400, 50035, "invalid_form_body"),
    ("embed", 400, 50035, "invalid_form_body"),
    ("big", 413, 40005, "payload_too_large"),
])
async def test_limits_are_enforced(fake_discord: FakeDiscord, kind: str, status: int, code: int, violation: str) -> None:
    fake = fake_discord
    fake.attachment_size_limit = 1024
    fake.expect_violations(violation)
    async with run_client(fake, DemoBot()):
        handle = await fake.slash(fake.member, "bad", kind=kind)
        assert handle.payload["attachment_size_limit"] == 1024
        reply = await handle.wait_followup()
        assert reply.content == f"error {status} {code}" and reply.ephemeral
        (recorded,) = fake.violations
        assert recorded.kind == violation
        assert fake.channel_messages(fake.channel().id) == []  # nothing invalid was stored


async def test_unknown_route_is_recorded(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    fake.expect_violations("unknown_route")
    bot = DemoBot()
    async with run_client(fake, bot):
        channel = bot.get_channel(fake.channel().id)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.NotFound):
            await channel.create_invite()
        assert [v.kind for v in fake.violations] == ["unknown_route"]
        assert "/invites" in fake.violations[0].message


async def test_restart_keeps_commands_and_messages(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with run_client(fake, DemoBot()):
        first = await (await fake.slash(fake.member, "demo", n=1)).wait_followup()
    assert not fake.gateway.connected

    bot2 = DemoBot(sync=False)
    async with run_client(fake, bot2):
        assert fake.gateway.identify_count == 2 and len(fake.requests_to("PUT", r"/applications/\d+/commands")) == 1
        handle = await fake.slash(fake.member, "demo", n=2)
        assert (await handle.wait_followup()).content == "image 2"
        channel = bot2.get_channel(fake.channel().id)
        assert isinstance(channel, discord.TextChannel)
        old = await channel.fetch_message(first.id)
        assert old.content == "image 1" and old.attachments[0].filename == "demo.png"
        assert await old.attachments[0].read() == first.attachments[0].data
        click = await fake.click(fake.member, first, "demo:btn:1")  # persistent button survives the restart
        assert (await click.wait_original()).content == "clicked 1"


def test_message_model_helpers() -> None:
    fake = FakeDiscord()
    msg = StoredMessage(1, 2, 3, fake.bot_user, "t", components=[
        {"type": 1, "components": [{"type": 2, "style": 1, "label": "Go", "custom_id": "go"}]}])
    assert msg.button(label="Go")["custom_id"] == "go" and msg.custom_ids == ["go"]
    assert fake.guild.permissions_for(fake.moderator) & (1 << 5) and not fake.guild.permissions_for(fake.member) & (1 << 5)


def _button(custom_id: str, label: str = "b") -> dict[str, Any]:
    return {"type": 2, "style": 1, "label": label, "custom_id": custom_id}


@pytest.mark.parametrize(("payload", "n_files", "needle"), [
    ({"components": [{"type": 1, "components": [_button(f"b{i}") for i in range(6)]}]}, 0, "5 or fewer"),
    ({"components": [{"type": 1, "components": [_button("same"), _button("same")]}]}, 0, "cannot be duplicated"),
    ({"components": [{"type": 1, "components": [_button("ok", "L" * 81)]}]}, 0, "80 or fewer"),
    ({"embeds": [{"fields": [{"name": "n", "value": "v"}] * 26}]}, 0, "25 or fewer"),
    ({"embeds": [{"fields": [{"name": "n", "value": "v" * 1025}]}]}, 0, "1024 or fewer"),
    ({"embeds": [{"description": "d" * 4000}, {"description": "d" * 2001}]}, 0, "6000"),
    ({"embeds": [{"footer": {"text": "f" * 2049}}]}, 0, "2048 or fewer"),
    ({"content": "x" * 2001}, 0, "2000 or fewer"),
    ({"content": "many"}, 11, "10 or fewer"),
    ({"content": "v2", "flags": 1 << 15, "components": [{"type": 10, "content": "hi"}]}, 0, "IS_COMPONENTS_V2"),
])
def test_validation_rules(payload: dict[str, Any], n_files: int, needle: str) -> None:
    from tests.fakes.fake_discord.validation import (
        APIError,
        UploadedFile,
        validate_message,
    )

    files = [UploadedFile(i, f"f{i}.txt", "text/plain", b"x") for i in range(n_files)]
    with pytest.raises(APIError) as info:
        validate_message(payload, files, size_limit=1024, creating=True)
    assert info.value.status == 400 and info.value.code == 50035 and needle in info.value.detail
    assert info.value.body()["errors"]  # Discord-shaped nested error tree


def test_context_menu_commands_are_validated_as_discord_does() -> None:
    from tests.fakes.fake_discord.validation import APIError, validate_commands

    validate_commands([{"name": "Describe image", "type": 3}, {"name": "Describe image", "type": 1 + 1}])
    for bad in ({"name": "Describe image", "type": 3, "description": "words"},
                {"name": "Describe image", "type": 3, "options": [{"name": "x", "type": 3, "description": "x"}]},
                {"name": "x" * 33, "type": 3}):
        with pytest.raises(APIError):
            validate_commands([bad])


async def test_message_command_needs_a_synced_one_and_a_visible_message(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with run_client(fake, DemoBot()):
        posted = await fake.post_message(fake.member, "hello")
        with pytest.raises(FakeDiscordUsageError, match="never synced"):
            await fake.message_command(fake.member, "Describe image", posted)

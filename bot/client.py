"""The thin client: holds the services (scheduler, delivery, admission), loads one extension per
feature, syncs commands. Imports the bot modules below it, never `bot.app` or `bot.cli`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import discord
from discord.ext import commands

from bot import render
from bot.admission import Admission, ModelInfo
from bot.delivery import Delivery
from bot.errors import CommandTree
from bot.metrics import JobObserver, Metrics
from bot.ops_server import HealthProbes, OpsServer
from bot.views import JobButton
from generation.jobs.retention import prune_forever
from generation.jobs.runners import BatchRunner
from generation.jobs.scheduler import JobScheduler
from generation.styles import Style
from sdbot.settings import Settings
from sdbot.store import Store

log = logging.getLogger(__name__)

# At shutdown, how long results already made may take to reach Discord.
DELIVERY_DRAIN_S = 30.0

EXTENSIONS = (
    "bot.exts.imagine",
    "bot.exts.variations",
    "bot.exts.upscale",
    "bot.exts.reroll",
    "bot.exts.jobs",
    "bot.exts.queue",
    "bot.exts.quota",
    "bot.exts.safety",
    "bot.exts.models",
    "bot.exts.buttons",
    "bot.exts.describe",
    "bot.exts.edit",
    "bot.exts.settings",
    "bot.exts.help",
)


# The bot never joins voice: discord.py's notices about missing voice libraries are noise here.
discord.VoiceClient.warn_nacl = False
discord.VoiceClient.warn_dave = False


class SDBot(commands.Bot):
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        runners: list[BatchRunner],
        model: ModelInfo,
        styles: Mapping[str, Style],
        **options: object,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # channels (age-restricted flag) and roles for permission checks
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=CommandTree,
            allowed_mentions=discord.AllowedMentions(users=True, everyone=False, roles=False),
            **options,  # type: ignore[arg-type]
        )
        self.settings = settings
        self.store = store
        self.model = model
        self.styles = styles
        self._runners = runners
        self._load_failed = False
        self.metrics = Metrics()
        # Created in setup_hook, once the loop runs.
        self.scheduler: JobScheduler
        self.delivery: Delivery
        self.admission: Admission
        self._ops_server: OpsServer | None = None
        self._pruning: asyncio.Task[None] | None = None

    async def setup_hook(self) -> None:
        self.delivery = Delivery(
            self, self.store, progress_interval_s=self.settings.progress_interval_s,
            preview_interval_s=self.settings.preview_interval_s if self.settings.previews else 0.0,
            queue_update_interval_s=self.settings.queue_update_interval_s,
            position=lambda job_id: self.scheduler.position(job_id),
        )
        if not self._runners:  # the engine is still loading (serve_with comes later) or failed to
            self.delivery.queue_waiting(render.LOAD_FAILED if self._load_failed else render.WARMING_UP)
        self.scheduler = JobScheduler(
            self.settings, self.store, self._runners, self.delivery, JobObserver(self.metrics)
        )
        self.metrics.watch(lambda: self.scheduler.queue_length, lambda: self.latency)
        self.admission = Admission(
            settings=self.settings, store=self.store, scheduler=self.scheduler, delivery=self.delivery,
            model=self.model, styles=self.styles,
        )
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(JobButton)
        await self._sync_commands()
        # Recovers jobs left queued or running by the last run, then starts the workers; then posts
        # what the last run finished but did not get to post.
        await self.scheduler.start()
        await self.delivery.resume()
        if self.settings.keep_images_days is not None:
            self._pruning = asyncio.create_task(
                prune_forever(self.store, self.settings.keep_images_days), name="sdbot-retention"
            )
        if self.settings.metrics_port:
            self._ops_server = OpsServer(self.metrics, HealthProbes(
                gateway_connected=self.gateway_connected,
                workers=lambda: (self.scheduler.workers_up, self.scheduler.worker_count),
                ping_database=self.store.ping,
            ))
            await self._ops_server.start(self.settings.metrics_host, self.settings.metrics_port)

    def serve_with(self, runners: list[BatchRunner], model: ModelInfo) -> None:
        """The engine has loaded (after the bot connected): its runners start on the queue, which
        took commands meanwhile, and `model` replaces what was read of the model before loading."""
        self.model = model
        if getattr(self, "scheduler", None) is None:  # before setup_hook: it starts them
            self._runners.extend(runners)
            return
        self.admission.model = model
        self.scheduler.add_runners(runners)
        self.delivery.queue_waiting(None)

    def model_failed(self) -> None:
        """The engine could not be loaded: queued jobs stay queued, and their replies say so."""
        self._load_failed = True
        if getattr(self, "scheduler", None) is not None:
            self.delivery.queue_waiting(render.LOAD_FAILED)

    def gateway_connected(self) -> bool:
        # is_ready() stays true across reconnects; the socket says whether events flow now.
        return self.is_ready() and not self.is_closed() and self.ws is not None and self.ws.open

    async def _sync_commands(self) -> None:
        if self.settings.dev_guild_ids:
            for guild_id in self.settings.dev_guild_ids:
                guild = discord.Object(guild_id)
                self.tree.copy_global_to(guild=guild)
                await self.tree.sync(guild=guild)
            log.info("slash commands synced to guilds %s", self.settings.dev_guild_ids)
        else:
            await self.tree.sync()
            log.info("slash commands synced globally (they may take a while to appear)")

    async def close(self) -> None:
        if self._pruning is not None:
            self._pruning.cancel()
        if self._ops_server is not None:
            await self._ops_server.stop()
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            await scheduler.stop()
            await self.delivery.drain(DELIVERY_DRAIN_S)
        await super().close()


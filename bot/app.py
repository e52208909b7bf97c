"""The composition root: open the database, check the token, build the bot, connect to Discord
while the models load in the background (commands are accepted and queued meanwhile).

Resources are opened here and handed to the bot, so tests build the same bot around a temporary
database, tiny models and the fake Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from functools import partial

import aiohttp
import discord

from bot.admission import ModelInfo
from bot.client import SDBot
from bot.ops_server import OpsServerError
from generation.engine.buckets import buckets_up_to
from generation.engine.config import EngineConfig
from generation.engine.diffusion import DiffusionEngine
from generation.engine.pipelines import check_folders, native_size_on_disk
from generation.engine.prompt_embeds import local_prompt_reader
from generation.errors import GenerationError
from generation.jobs.runners import BatchRunner, LocalRunner
from generation.styles import StyleFileError, load_styles
from sdbot.migrate import MigrationError
from sdbot.settings import Settings
from sdbot.store import Store, StoreUnavailable

log = logging.getLogger(__name__)


def build_bot(
    settings: Settings, store: Store, engine: DiffusionEngine | None, *, loading: ModelInfo | None = None,
    **options: object,
) -> SDBot:
    """Raises StyleFileError for a styles file that cannot be used (before any runner starts).
    With `loading` (what was read of the model from disk) the local engine is still loading: the
    bot takes commands and queues them until `serve_when_loaded` hands it the engine."""
    styles = load_styles(settings.styles_path) if settings.styles_path else {}
    runners, model = ([], loading) if loading is not None else make_runners(settings, engine)
    return SDBot(settings=settings, store=store, runners=runners, model=model, styles=styles, **options)


def model_on_disk(config: EngineConfig) -> ModelInfo | None:
    """What admission needs of the model (its size and tokenizer), read from its folder or the local
    Hugging Face cache without loading it; None when the model is not on this machine yet."""
    native_size = native_size_on_disk(config.model_id, config.model_revision)
    read_prompt = local_prompt_reader(config.model_id, config.model_revision)
    if native_size is None or read_prompt is None:
        return None
    return ModelInfo(config.model_id, native_size, read_prompt, catalogue=config.catalogue)


def ray_model(settings: Settings, native_size: int) -> ModelInfo:
    """What admission knows of a model the Ray actors serve: the size they report, and the token
    count before a job is queued when the tokenizer is on this machine too (else the engine refuses
    an over-long prompt when it runs)."""
    config = EngineConfig.from_settings(settings)
    return ModelInfo(config.model_id, native_size, local_prompt_reader(config.model_id, config.model_revision),
                     catalogue=config.catalogue)


async def serve_when_loaded(bot: SDBot, settings: Settings, load: Callable[[], DiffusionEngine]) -> None:
    """Load the engine off the event loop while the bot answers, then serve the queue with it and
    warm it up. A failed load leaves the queued jobs queued: one line for the operator, and the
    members' "queued" replies say why they wait."""
    try:
        engine = await asyncio.to_thread(load)
    except Exception as error:  # noqa: BLE001 - whatever it is, the bot keeps its queue and says so
        reason = str(error) if isinstance(error, GenerationError) else f"{type(error).__name__}: {error}"
        log.error("could not load the model (%s); queued jobs stay queued until a restart loads it", reason)
        bot.model_failed()
        return
    bot.serve_with(*make_runners(settings, engine))
    log.info("the model is loaded; serving the queue")
    warm_up = _start_warm_up(settings, engine)
    if warm_up is not None:
        await warm_up


def make_runners(settings: Settings, engine: DiffusionEngine | None) -> tuple[list[BatchRunner], ModelInfo]:
    """The generation runners and what the bot needs to know of the model. Local: one runner on
    `engine`, loaded. Ray: one runner per Ray actor; the actors load the model and report its size,
    and this process loads no model at all (`engine` is None)."""
    if settings.workers == "ray":
        try:
            from generation.jobs.ray_runner import (
                start_ray_runners,  # Ray is an optional extra
            )
        except ModuleNotFoundError as error:
            raise GenerationError(f'SDBOT_WORKERS=ray needs Ray ({error}): pip install -e ".[ray]"') from None
        ray_runners = start_ray_runners(settings)
        return list(ray_runners), ray_model(settings, ray_runners[0].info.native_size)
    assert engine is not None, "local workers need a loaded engine"
    return [LocalRunner(engine)], ModelInfo(
        engine.model_id, engine.native_size, engine.prompt_reader(), catalogue=engine.config.catalogue
    )


def run_bot(settings: Settings) -> int:
    """`sdbot run`: returns the process exit code."""
    try:
        asyncio.run(_serve(settings))
    except StoreUnavailable as error:
        print(f"sdbot: {error}; check SDBOT_DATABASE_PATH", file=sys.stderr)
        return 1
    except (MigrationError, GenerationError, OpsServerError, StyleFileError) as error:  # raised by build_bot
        print(f"sdbot: {error}", file=sys.stderr)
        return 1
    except discord.LoginFailure:
        print(
            "sdbot: Discord refused SDBOT_DISCORD_TOKEN; copy the token again from the developer "
            "portal (Bot > Reset Token)",
            file=sys.stderr,
        )
        return 2
    except (aiohttp.ClientConnectionError, OSError) as error:
        print(f"sdbot: could not reach Discord ({error}); check the network and try again", file=sys.stderr)
        return 1
    return 0


async def _serve(settings: Settings) -> None:
    # The database first: a wrong path is found in a second, not after minutes of model loading.
    store = await Store.open(settings.database_path, default_daily_quota=settings.default_daily_quota)
    try:
        # A models file that does not parse stops start-up here, naming its line.
        config = EngineConfig.from_settings(settings)
        if settings.workers == "local":
            check_folders(config)
        assert settings.discord_token is not None
        # Then the token: a refused one is found in seconds, not after a model download.
        await _check_token(settings.discord_token.get_secret_value())
        bot, background = await _build_and_load(settings, config, store)
        loop = asyncio.get_running_loop()
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            # A clean stop: the worker finishes or re-queues its batch before the bot disconnects.
            loop.add_signal_handler(stop_signal, lambda: asyncio.ensure_future(bot.close()))
        try:
            async with bot:
                await bot.start(settings.discord_token.get_secret_value())
        finally:
            if background is not None:
                # Its thread cannot be stopped (asyncio.run waits for it); the bot must not get
                # an engine after it closed.
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
    finally:
        await store.close()


async def _build_and_load(
    settings: Settings, config: EngineConfig, store: Store
) -> tuple[SDBot, asyncio.Task[None] | None]:
    """The bot, and the background task loading (then warming up) its local engine. A model not on
    this machine yet is downloaded and loaded first: until then its size and tokenizer are unknown."""
    if settings.workers == "ray":  # the actors load the model, not this process
        return build_bot(settings, store, None), None
    model = await asyncio.to_thread(model_on_disk, config)
    if model is None:
        log.info("%s is not on this machine yet: it is downloaded and loaded before the bot connects",
                 config.model_id)
        engine = await asyncio.to_thread(DiffusionEngine.load, config)
        return build_bot(settings, store, engine), _start_warm_up(settings, engine)
    bot = build_bot(settings, store, None, loading=model)
    return bot, asyncio.create_task(serve_when_loaded(bot, settings, partial(DiffusionEngine.load, config)))


async def _check_token(token: str) -> None:
    """Log in once over HTTP (no gateway): raises discord.LoginFailure for a refused token."""
    probe = discord.Client(intents=discord.Intents(guilds=True))  # the bot's own intents: no warning
    try:
        await probe.login(token)
    finally:
        await probe.close()


def _start_warm_up(settings: Settings, engine: DiffusionEngine | None) -> asyncio.Task[None] | None:
    """Compile every batch bucket at the native size off the loop while the bot already answers
    (jobs wait on the engine's lock meanwhile). A no-op unless the engine is compiled."""
    if engine is None:
        return None
    most_images = max(settings.max_batch, settings.max_count)  # one job alone can exceed max_batch
    sizes, buckets = [engine.native_size], buckets_up_to(most_images)

    def warm_up() -> None:
        try:
            engine.warm_up(sizes, buckets, settings.default_guidance)
        except Exception:  # noqa: BLE001 - the bot serves anyway; batches compile on first use
            log.exception("the warm-up failed; each batch size compiles on its first use instead")

    return asyncio.create_task(asyncio.to_thread(warm_up))

"""The `sdbot` command: run the bot, migrate, prune and back up the database, generate locally, build
tiny test models.

The top of the tree: it may import every layer. Heavy modules (discord, torch) load only in the
subcommands that need them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from generation import requests
from generation.jobs.runners import Engine
from generation.requests import RequestLimits
from sdbot.logs import configure_logging
from sdbot.settings import Settings, SettingsError, load_settings
from sdbot.types import GenerationParams

EXIT_CONFIG_ERROR = 2
log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdbot",
        description="A Discord bot that makes images with Stable Diffusion. "
        "Configuration comes from SDBOT_* environment variables or a .env file.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("run", help="connect to Discord and serve /imagine (needs SDBOT_DISCORD_TOKEN)")
    commands.add_parser("migrate", help="apply pending database migrations and print the schema version")

    imagine = commands.add_parser("imagine", help="generate images locally, without Discord")
    imagine.add_argument("prompt")
    imagine.add_argument("--negative", default="", help="negative prompt")
    imagine.add_argument("--seed", type=_seed, help="seed of the first image (-1 or empty: random, the default)")
    imagine.add_argument("--steps", type=int, help="denoising steps (default: SDBOT_DEFAULT_STEPS)")
    imagine.add_argument("--guidance", type=float, help="CFG scale (default: SDBOT_DEFAULT_GUIDANCE)")
    imagine.add_argument("--width", type=int, help="width in pixels (default: the model's native size)")
    imagine.add_argument("--height", type=int, help="height in pixels (default: the model's native size)")
    imagine.add_argument("--count", type=int, default=1, help="number of images (default 1, at most SDBOT_MAX_COUNT)")
    imagine.add_argument("--model", help="model id or folder (default: SDBOT_MODEL_ID)")
    imagine.add_argument("--out", type=Path, default=Path("."), help="output folder (default: .)")

    prune = commands.add_parser(
        "prune", help="delete image files of jobs that ended over SDBOT_KEEP_IMAGES_DAYS ago (records stay)"
    )
    prune.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    prune.add_argument("--days", type=float, help="keep this many days instead of SDBOT_KEEP_IMAGES_DAYS")

    backup = commands.add_parser("backup", help="write a consistent copy of the database (safe while the bot runs)")
    backup.add_argument("path", type=Path, help="file to write")

    test_model = commands.add_parser(
        "make-test-model", help="write tiny random-weight models (for tests and offline smoke runs)"
    )
    test_model.add_argument("directory", type=Path)
    return parser


def _seed(text: str) -> int | None:
    """An empty `--seed` means random, as -1 does."""
    return int(text) if text.strip() else None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    configure_logging(settings.log_level, settings.log_format)
    handlers = {
        "run": _run,
        "migrate": _migrate,
        "imagine": _imagine,
        "prune": _prune,
        "backup": _backup,
        "make-test-model": _make_test_model,
    }
    return handlers[args.command](settings, args)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    if settings.discord_token is None or not settings.discord_token.get_secret_value().strip():
        print(
            "sdbot: SDBOT_DISCORD_TOKEN is not set; put your bot token in .env or the environment "
            "(see README: 'Create the Discord application')",
            file=sys.stderr,
        )
        return EXIT_CONFIG_ERROR
    from bot.app import (
        run_bot,  # imported late: `sdbot migrate` should not load discord/torch
    )

    return run_bot(settings)


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from sdbot.migrate import MigrationError
    from sdbot.store import Store, StoreUnavailable

    async def migrate() -> int:
        store = await Store.open(settings.database_path)
        try:
            return await store.schema_version()
        finally:
            await store.close()

    try:
        version = asyncio.run(migrate())
    except (MigrationError, StoreUnavailable) as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return 1
    print(f"database {settings.database_path} is at schema version {version}")
    return 0


def _prune(settings: Settings, args: argparse.Namespace) -> int:
    from generation.jobs.retention import prune_images
    from sdbot.store import Store

    days = args.days if args.days is not None else settings.keep_images_days
    if days is None or days <= 0:
        print("sdbot: SDBOT_KEEP_IMAGES_DAYS is not set (images are kept forever); set it or pass --days N",
              file=sys.stderr)
        return EXIT_CONFIG_ERROR

    async def prune() -> str:
        store = await Store.open(settings.database_path)
        try:
            report = await prune_images(store, days, dry_run=args.dry_run)
        finally:
            await store.close()
        verb = "would delete" if args.dry_run else "deleted"
        return (f"{verb} {report.files} image file(s), {report.bytes / 1e6:.1f} MB, of {report.jobs} job(s) "
                f"that ended over {days:g} day(s) ago")

    print(asyncio.run(prune()))
    return 0


def _backup(settings: Settings, args: argparse.Namespace) -> int:
    import sqlite3

    from sdbot.store import backup_database

    if not settings.database_path.is_file():
        print(f"sdbot: there is no database at {settings.database_path} (SDBOT_DATABASE_PATH)", file=sys.stderr)
        return 1
    try:
        backup_database(settings.database_path, args.path)
    except (sqlite3.Error, OSError) as error:
        print(f"sdbot: the backup to {args.path} failed: {error}", file=sys.stderr)
        return 1
    print(f"backed up {settings.database_path} to {args.path}")
    return 0


def _imagine(settings: Settings, args: argparse.Namespace) -> int:
    from generation.engine.config import EngineConfig
    from generation.engine.diffusion import DiffusionEngine
    from generation.errors import GenerationError

    if args.model:
        settings = settings.model_copy(update={"model_id": args.model})
    limits = RequestLimits.from_settings(settings)
    try:
        # Every argument is checked before the model loads (seconds to minutes); the size again
        # after, once the model's native size is known.
        _imagine_params(args, limits, args.width or limits.min_size, args.height or limits.min_size)
        engine = DiffusionEngine.load(EngineConfig.from_settings(settings))
        params = _imagine_params(args, limits, args.width or engine.native_size, args.height or engine.native_size)
        written = imagine_to_files(engine, [params], args.out)
    except GenerationError as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return 1
    for path, seed in written:
        print(f"{path}\tseed={seed}")
    return 0


def _imagine_params(args: argparse.Namespace, limits: RequestLimits, width: int, height: int) -> GenerationParams:
    """The request, built and validated as the bot does (at most SDBOT_MAX_COUNT images, seeds
    consecutive from `--seed`)."""
    params = requests.imagine(
        limits, prompt=args.prompt, negative=args.negative, seed=args.seed, count=args.count, steps=args.steps,
        guidance=args.guidance, width=width, height=height,
    )
    requests.validate(params, limits)
    return params


def imagine_to_files(engine: Engine, batches: Sequence[GenerationParams], out_dir: Path) -> list[tuple[Path, int]]:
    """Write one PNG (with its generation record) per image; return each file and its seed. Images
    the safety checker flags are not written (a warning is logged), so the list can be shorter."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    written: list[tuple[Path, int]] = []
    for params in batches:
        (output,) = engine.run_batch([params], lambda step, total: None, lambda: False)
        for warning in output.warnings:
            log.warning("%s", warning)
        for image in output.images:
            if image.data is None:
                log.warning("image with seed %d was flagged by the safety checker and not saved", image.seed)
                continue
            path = out_dir / f"sdbot-{stamp}-{image.seed}.{image.format}"
            path.write_bytes(image.data)
            written.append((path, image.seed))
    return written


def _make_test_model(settings: Settings, args: argparse.Namespace) -> int:
    from generation.engine.tiny_models import make_tiny_models

    paths = make_tiny_models(args.directory)
    print(f"SDBOT_MODEL_ID={paths.pipeline}")
    print(f"SDBOT_SAFETY_MODEL_ID={paths.safety_checker}")
    print(f"SDBOT_UPSCALER_MODEL_ID={paths.upscaler}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

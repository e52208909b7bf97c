"""The `sdbot` command: run the bot, migrate the database, generate locally, build tiny test models."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from sdbot.settings import Settings, SettingsError, load_settings

EXIT_CONFIG_ERROR = 2


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
    imagine.add_argument("--seed", type=int, help="seed of the first image (default: random)")
    imagine.add_argument("--steps", type=int, help="denoising steps (default: SDBOT_DEFAULT_STEPS)")
    imagine.add_argument("--guidance", type=float, help="CFG scale (default: SDBOT_DEFAULT_GUIDANCE)")
    imagine.add_argument("--width", type=int, help="width in pixels (default: the model's native size)")
    imagine.add_argument("--height", type=int, help="height in pixels (default: the model's native size)")
    imagine.add_argument("--count", type=int, default=1, help="number of images (default 1)")
    imagine.add_argument("--model", help="model id or folder (default: SDBOT_MODEL_ID)")
    imagine.add_argument("--out", type=Path, default=Path("."), help="output folder (default: .)")

    test_model = commands.add_parser(
        "make-test-model", help="write tiny random-weight models (for tests and offline smoke runs)"
    )
    test_model.add_argument("directory", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handlers = {
        "run": _run,
        "migrate": _migrate,
        "imagine": _imagine,
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
    from bot.app import run_bot  # imported late: `sdbot migrate` should not load discord/torch

    return run_bot(settings)


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from sdbot.migrate import MigrationError
    from sdbot.store import Store

    async def migrate() -> int:
        store = await Store.open(settings.database_path)
        try:
            return await store.schema_version()
        finally:
            await store.close()

    try:
        version = asyncio.run(migrate())
    except MigrationError as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return 1
    print(f"database {settings.database_path} is at schema version {version}")
    return 0


def _imagine(settings: Settings, args: argparse.Namespace) -> int:
    from generation.engine import imagine_to_files
    from generation.errors import GenerationError

    if args.model:
        settings = settings.model_copy(update={"model_id": args.model})
    try:
        written = imagine_to_files(
            settings,
            prompt=args.prompt,
            negative=args.negative,
            seed=args.seed,
            steps=args.steps,
            guidance=args.guidance,
            width=args.width,
            height=args.height,
            count=args.count,
            out_dir=args.out,
        )
    except GenerationError as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return 1
    for path, seed in written:
        print(f"{path}\tseed={seed}")
    return 0


def _make_test_model(settings: Settings, args: argparse.Namespace) -> int:
    from generation.test_models import make_test_model

    paths = make_test_model(args.directory)
    print(f"SDBOT_MODEL_ID={paths.pipeline}")
    print(f"SDBOT_SAFETY_MODEL_ID={paths.safety_checker}")
    print(f"SDBOT_UPSCALER_MODEL_ID={paths.upscaler}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `sdbot` command: run the bot, migrate, prune and back up the database, generate locally, build
tiny test models.

The top of the tree: it may import every layer. Heavy modules (discord, torch) load only in the
subcommands that need them."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from generation import requests
from generation.jobs.runners import Engine
from generation.requests import RequestLimits
from sdbot.logs import configure_logging
from sdbot.settings import Settings, SettingsError, load_settings
from sdbot.types import GenerationParams

if TYPE_CHECKING:
    from sdbot.store import Store

T = TypeVar("T")

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

    imagine = commands.add_parser(
        "imagine", help="generate images locally, without Discord (the prompt language of /imagine)"
    )
    imagine.add_argument("prompt", help="the prompt; A1111 weights, --ar 16:9, --no, --tile, {a, b} work as in /imagine")
    imagine.add_argument("--negative", default="", help="negative prompt")
    imagine.add_argument("--seed", type=_seed, help="seed of the first image (-1 or empty: random, the default)")
    imagine.add_argument("--steps", type=int, help="denoising steps (default: SDBOT_DEFAULT_STEPS)")
    imagine.add_argument("--guidance", type=float, help="CFG scale (default: SDBOT_DEFAULT_GUIDANCE)")
    imagine.add_argument("--width", type=int, help="width in pixels (default: the model's native size)")
    imagine.add_argument("--height", type=int, help="height in pixels (default: the model's native size)")
    imagine.add_argument("--count", type=int, default=1, help="number of images per job (default 1, at most SDBOT_MAX_COUNT)")
    imagine.add_argument(
        "--model", help="model id or folder (default: SDBOT_MODEL_ID), or with a models file one of its names"
    )
    imagine.add_argument("--out", type=Path, default=Path("."), help="output folder (default: .)")

    edit = commands.add_parser(
        "edit", help="zoom out, pan or repaint a region of a picture locally (as the editing buttons do)"
    )
    edit.add_argument("source", type=Path, help="the picture (PNG, JPEG or WebP)")
    what = edit.add_mutually_exclusive_group(required=True)
    what.add_argument("--zoom-out", choices=("2", "1.5"), help="shrink it in the middle, paint the border")
    what.add_argument("--pan", choices=("left", "right", "up", "down"), help="extend it by half its size")
    what.add_argument("--region", help="repaint left, right, top, bottom, center or x,y,w,h in percent")
    edit.add_argument("--prompt", default="", help="what the new pixels show")
    edit.add_argument("--seed", type=_seed, help="seed of the first image (-1 or empty: random, the default)")
    edit.add_argument("--count", type=int, default=1, help="number of images (default 1, at most SDBOT_MAX_COUNT)")
    edit.add_argument("--steps", type=int, help="denoising steps (default: SDBOT_DEFAULT_STEPS)")
    edit.add_argument("--out", type=Path, default=Path("."), help="output folder (default: .)")

    prune = commands.add_parser(
        "prune", help="delete image files of jobs that ended over SDBOT_KEEP_IMAGES_DAYS ago (records stay)"
    )
    prune.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    prune.add_argument("--days", type=float, help="keep this many days instead of SDBOT_KEEP_IMAGES_DAYS")

    backup = commands.add_parser("backup", help="write a consistent copy of the database (safe while the bot runs)")
    backup.add_argument("path", type=Path, help="file to write")

    parse = commands.add_parser(
        "parse-prompt", help="show how the bot reads a prompt: flags, {a, b} prompts, weights, token chunks"
    )
    parse.add_argument("prompt")
    parse.add_argument("--json", action="store_true", help="print JSON instead of text")

    describe = commands.add_parser(
        "describe", help="print /describe's four prompt suggestions for a picture (and the settings it carries)"
    )
    describe.add_argument("image", type=Path, help="a PNG, JPEG, WebP, GIF or BMP file")
    describe.add_argument("--more", action="store_true", help="four sampled suggestions, as the 🔄 button gives")

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
        "edit": _edit,
        "prune": _prune,
        "backup": _backup,
        "parse-prompt": _parse_prompt,
        "describe": _describe,
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
    # Imported late: `sdbot migrate` should not load discord or torch.
    from bot.app import run_bot

    return run_bot(settings)


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    version = _on_store(settings, lambda store: store.schema_version())
    if version is None:
        return 1
    print(f"database {settings.database_path} is at schema version {version}")
    return 0


def _prune(settings: Settings, args: argparse.Namespace) -> int:
    from generation.jobs.retention import prune_images

    days = args.days if args.days is not None else settings.keep_images_days
    if days is None or days <= 0:
        print("sdbot: SDBOT_KEEP_IMAGES_DAYS is not set (images are kept forever); set it or pass --days N",
              file=sys.stderr)
        return EXIT_CONFIG_ERROR
    report = _on_store(settings, lambda store: prune_images(store, days, dry_run=args.dry_run))
    if report is None:
        return 1
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {report.files} image file(s), {report.bytes / 1e6:.1f} MB, of {report.jobs} job(s) "
          f"that ended over {days:g} day(s) ago")
    return 0


def _on_store(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T | None:
    """Run `work` on the opened (and migrated) database; None, after one line on stderr, when the
    database cannot be opened or migrated."""
    from sdbot.migrate import MigrationError
    from sdbot.store import Store, StoreUnavailable

    async def run() -> T:
        store = await Store.open(settings.database_path)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (MigrationError, StoreUnavailable) as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return None


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

    def work() -> list[tuple[Path, int]]:
        config, limits = EngineConfig.from_settings(settings), RequestLimits.from_settings(settings)
        size: int | None = None
        if config.catalogue is not None:  # --model names one of the file's models; without it, the default runs
            entry = requests.pick_model(config.catalogue, args.model)
            limits, size = limits.for_model(entry), entry.size
        elif args.model:
            config = config.model_copy(update={"model_id": args.model})
        # Every argument is checked before the model loads (seconds to minutes); again after, with
        # the model's native size and its token count.
        _imagine_batches(args, limits, limits.min_size)
        engine = DiffusionEngine.load(config)
        batches, notes = _imagine_batches(args, limits, size or engine.native_size, engine.token_counter())
        for note in notes:
            log.warning("%s", note)
        return imagine_to_files(engine, batches, args.out)

    return _print_written(work)


def _edit(settings: Settings, args: argparse.Namespace) -> int:
    from generation.engine.config import EngineConfig
    from generation.engine.diffusion import DiffusionEngine

    def work() -> list[tuple[Path, int]]:
        params = _edit_params(args, RequestLimits.from_settings(settings))  # checked before the model loads
        return imagine_to_files(DiffusionEngine.load(EngineConfig.from_settings(settings)), [params], args.out)

    return _print_written(work)


def _print_written(work: Callable[[], list[tuple[Path, int]]]) -> int:
    """Run a local generation: one `path<TAB>seed=N` line per file, or one line on stderr."""
    from generation.errors import GenerationError

    try:
        written = work()
    except GenerationError as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return 1
    for path, seed in written:
        print(f"{path}\tseed={seed}")
    return 0


def _edit_params(args: argparse.Namespace, limits: RequestLimits) -> GenerationParams:
    """The edit of `sdbot edit`, at the picture's own size, built and validated as the bot does."""
    from PIL import Image

    from generation.errors import InvalidRequest

    try:
        data = args.source.read_bytes()
        with Image.open(args.source) as opened:
            width, height = opened.size
    except OSError as error:
        raise InvalidRequest(f"could not read the picture {args.source}: {error}") from None
    source = requests.EditSource(width=width, height=height, prompt=args.prompt, steps=args.steps)
    if args.zoom_out:
        params = requests.zoom_out(limits, source, f"{args.zoom_out}x")
    elif args.pan:
        params = requests.pan(limits, source, args.pan)
    else:
        params = requests.inpaint_region(limits, source, args.region)
    params = params.model_copy(update={"seeds": requests.seeds(args.count, args.seed), "source_image": data})
    requests.validate(params, limits)
    return params


def _imagine_batches(
    args: argparse.Namespace, limits: RequestLimits, native_size: int,
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[list[GenerationParams], tuple[str, ...]]:
    """Each job of the prompt (one per {a, b} choice and --repeat), built and validated as the bot
    does (at most SDBOT_MAX_COUNT images each, seeds consecutive from `--seed`); and the notes on
    options that won over flags typed in the prompt."""
    size = (args.width or native_size, args.height or native_size) if args.width or args.height else None
    imagined = requests.imagine(
        limits, prompt=args.prompt, native_size=native_size, negative=args.negative, seed=args.seed,
        count=args.count, steps=args.steps, guidance=args.guidance, size=size,
    )
    for params in imagined.jobs:
        requests.validate(params, limits, count_tokens)
    return list(imagined.jobs), imagined.notes


def imagine_to_files(engine: Engine, batches: Sequence[GenerationParams], out_dir: Path) -> list[tuple[Path, int]]:
    """Write one PNG (with its generation record) per image; return each file and its seed. Images
    the safety checker flags are not written (a warning is logged), so the list can be shorter."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    written: list[tuple[Path, int]] = []
    for number, params in enumerate(batches, start=1):
        (output,) = engine.run_batch([params], lambda step, total: None, lambda: False)
        for warning in output.warnings:
            log.warning("%s", warning)
        for image in output.images:
            if image.data is None:
                log.warning("image with seed %d was flagged by the safety checker and not saved", image.seed)
                continue
            # The batch number keeps {a, b} prompts made with the same seed apart.
            path = out_dir / f"sdbot-{stamp}-{number}-{image.seed}.{image.format}"
            path.write_bytes(image.data)
            written.append((path, image.seed))
    return written


def _parse_prompt(settings: Settings, args: argparse.Namespace) -> int:
    """Token chunks need the model's tokenizer: read from SDBOT_MODEL_ID when it is on this machine
    (a folder or the Hugging Face cache), never downloaded; without it they are left out."""
    from generation.engine.prompt_embeds import load_tokenizer, read_prompt
    from generation.prompt_syntax import PromptSyntaxError

    tokenizer = load_tokenizer(settings.model_id, settings.model_revision)
    try:
        reading = prompt_reading(args.prompt, RequestLimits.from_settings(settings).max_expansion,
                                 (lambda text: read_prompt(tokenizer, text)) if tokenizer else None)
    except PromptSyntaxError as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reading, ensure_ascii=False))
        return 0
    for name, value in reading["flags"].items():
        print(f"--{name} {value}".rstrip())
    for prompt in reading["prompts"]:
        print(f"\n{prompt['text']}")
        print("  fragments: " + json.dumps(prompt["fragments"], ensure_ascii=False))
        if prompt["chunks"] is None:
            print(f"  (token chunks need the tokenizer of {settings.model_id}, which is not on this machine)")
        else:
            print(f"  chunks: {prompt['chunks']} tokens; A1111 count {prompt['tokens']}")
    return 0


def prompt_reading(text: str, cap: int, read: Callable[[str], Any] | None) -> dict[str, Any]:
    """How the bot reads `text`: the inline flags as typed, then each {a, b} prompt with its weighted
    fragments (weights rounded to 4 places, BREAK as weight -1) and, given the tokenizer's `read`
    (a PromptReading), the real tokens per chunk and A1111's count. Raises PromptSyntaxError."""
    from generation.prompt_syntax import (
        expand_permutations,
        parse_inline_parameters,
        parse_weights,
    )

    remaining, inline = parse_inline_parameters(requests.normalise_text(text))
    prompts = []
    for prompt in expand_permutations(remaining, cap):
        fragments = [[piece, round(weight, 4)] for piece, weight in parse_weights(prompt)]
        reading = read(prompt) if read else None
        prompts.append({
            "text": prompt,
            "fragments": fragments,
            "chunks": reading.chunk_tokens if reading else None,
            "tokens": reading.length if reading else None,
        })
    return {"flags": inline.found, "prompts": prompts}


def _describe(settings: Settings, args: argparse.Namespace) -> int:
    from bot.attachments import check_upload
    from bot.describing import made_with_lines
    from bot.errors import UserError
    from generation.engine.config import EngineConfig
    from generation.engine.diffusion import DiffusionEngine
    from generation.errors import GenerationError
    from generation.png_info import read_made_with

    limits = RequestLimits.from_settings(settings)
    try:
        data = args.image.read_bytes()
        checked = check_upload(data, args.image.name, limits.max_upload_pixels)
    except (OSError, UserError) as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return 1
    config = EngineConfig.from_settings(settings)
    if not config.describe_enabled:
        print("sdbot: /describe is off (SDBOT_DESCRIBE_MODEL_ID=none)", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if (made_with := read_made_with(data)) is not None:
        print(f"made with ({made_with.generator}):\n{made_with_lines(made_with)}\n")
    if checked.animated:
        log.warning("an animated picture: its first frame is described")
    first_frame = io.BytesIO()
    checked.first_frame.save(first_frame, format="PNG")
    try:
        engine = DiffusionEngine.load(config)
        width, height = checked.first_frame.size
        params = requests.describe(limits, engine.native_size, width, height, more=args.more)
        params = params.model_copy(update={"source_image": first_frame.getvalue()})
        requests.validate(params, limits)
        (output,) = engine.run_batch([params], lambda step, total: None, lambda: False)
    except GenerationError as error:
        print(f"sdbot: {error}", file=sys.stderr)
        return 1
    for number, prompt in enumerate(output.captions, start=1):
        print(f"{number}. {prompt}")
    return 0


def _make_test_model(settings: Settings, args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    from generation.engine.tiny_models import make_tiny_models

    transformers_logging.disable_progress_bar()  # one "Writing model shards" bar per tiny model
    paths = make_tiny_models(args.directory)
    print(f"SDBOT_MODEL_ID={paths.pipeline}")
    print(f"SDBOT_SAFETY_MODEL_ID={paths.safety_checker}")
    print(f"SDBOT_UPSCALER_MODEL_ID={paths.upscaler}")
    print(f"SDBOT_PREVIEW_DECODER_ID={paths.preview_decoder}")
    print(f"SDBOT_DESCRIBE_MODEL_ID={paths.describer}")
    print(f"# optional, a dedicated inpainting checkpoint for edits: SDBOT_INPAINT_MODEL_ID={paths.inpaint}")
    print(f"# several models (a tiny SD, SDXL, FLUX and SD3) and their LoRAs: SDBOT_MODELS_FILE={paths.models_file}")
    for family, model, decoder in (("FLUX", paths.flux, paths.flux_preview_decoder),
                                   ("SD3", paths.sd3, paths.sd3_preview_decoder)):
        print(f"# the {family} one alone, with its previews: SDBOT_MODEL_ID={model} SDBOT_PREVIEW_DECODER_ID={decoder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

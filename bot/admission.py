"""Admission: turning a member's request (a slash command or a button) into a queued job.

Every path goes through `Admission.submit`: the parameters are built and validated by
`generation.requests`, then the queue limit and quota are checked, all before anything is answered,
so a refusal is an ephemeral message that changes nothing. An accepted job is handed to `Delivery`,
which stores and queues it, then acknowledges it, and owns its public reply from then on.
"""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import discord

from bot.attachments import download_upload, keep_upload, save_upload
from bot.delivery import Delivery
from bot.errors import UserError
from bot.permissions import is_moderator
from bot.views import Action, EditModal, EditSubmit
from generation import requests
from generation.catalogue import NATIVE_SIZE, Catalogue, ModelEntry, match, single_model
from generation.engine.prompt_embeds import PromptReading
from generation.jobs.image_files import read_if_present
from generation.jobs.scheduler import JobScheduler
from generation.png_info import read_made_with
from generation.prompt_syntax import PromptSyntaxError
from generation.requests import MAX_STYLES, RequestLimits
from generation.styles import Style, match_styles
from sdbot.settings import Settings
from sdbot.store import QuotaExceeded, Store
from sdbot.types import (
    GenerationParams,
    ImageRow,
    JobKind,
    JobRow,
    JobStatus,
    NewJob,
    PipelineKind,
)

# The editing buttons under an upscaled image: what each asks of `generation.requests`.
ZOOMS = {Action.ZOOM_2X: "2x", Action.ZOOM_1_5X: "1.5x"}
PANS = {Action.PAN_LEFT: "left", Action.PAN_RIGHT: "right", Action.PAN_UP: "up", Action.PAN_DOWN: "down"}
_VARIES = {Action.VARY_SUBTLE: False, Action.VARY_STRONG: True}
# Buttons that open a prompt box first when the member has Remix on.
REMIX_ACTIONS = frozenset({*ZOOMS, *PANS, *_VARIES})

# How long a second press of the same button by the same member counts as a repeat of the first.
PRESS_WINDOW_S = 5.0
# How long a repeated press waits for the first one to be queued (Discord wants an answer in 3 s).
REPEAT_WAIT_S = 2.0


@dataclass(frozen=True)
class ModelInfo:
    """What admission needs to know about the served model."""

    model_id: str
    native_size: int
    # How the model reads a prompt (chunks, token count), for the token cap before a job is queued;
    # None when the model lives elsewhere (Ray workers): the engine refuses an over-long prompt then.
    read_prompt: Callable[[str], PromptReading] | None = None
    # The models file's catalogue; None: model_id is the only model.
    catalogue: Catalogue | None = None

    @functools.cached_property
    def models(self) -> Catalogue:
        return self.catalogue or single_model(self.model_id)

    def native_size_of(self, entry: ModelEntry) -> int:
        """The side a model makes by default: its catalogue `size`, else the measured one for the
        default model, else its family's."""
        if entry.size is not None:
            return entry.size
        if entry.name == self.models.default:
            return self.native_size
        return NATIVE_SIZE.get(entry.family or "sd", self.native_size)

    @property
    def count_tokens(self) -> Callable[[str], int] | None:
        """The token count the cap uses (A1111's), when the model can read prompts here."""
        read = self.read_prompt
        return None if read is None else lambda text: read(text).length


@dataclass(frozen=True)
class Upload:
    """A picture a member uploaded, checked and stored as PNG."""

    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class Source:
    """An image made here, as the source of a variation, upscale or reroll."""

    job: JobRow
    image: ImageRow
    path: Path


class Admission:
    def __init__(
        self, *, settings: Settings, store: Store, scheduler: JobScheduler, delivery: Delivery, model: ModelInfo,
        styles: Mapping[str, Style],
    ) -> None:
        self.settings = settings
        self.limits = RequestLimits.from_settings(settings)
        self.model = model
        self.styles = styles
        self._store = store
        self._scheduler = scheduler
        self._delivery = delivery
        # One member's requests are checked and queued one at a time, so a burst of commands sees
        # the jobs queued just before it and is refused up front rather than after the reply started.
        self._member_locks: defaultdict[tuple[int, int], asyncio.Lock] = defaultdict(asyncio.Lock)
        # Recent button presses (member, message, button) -> the job the first one made: a double
        # click makes one job, not two.
        self._presses: dict[tuple[int, int, Action, int, int | None], asyncio.Future[JobRow | None]] = {}

    async def submit(
        self,
        interaction: discord.Interaction,
        kind: JobKind,
        batch: Sequence[GenerationParams],
        *,
        notes: Sequence[str] = (),
        source: ImageRow | None = None,
        source_path: Path | None = None,
    ) -> list[JobRow]:
        """Validate, check, store, charge and queue the jobs of one request, answering the
        interaction. All of them fit the queue and the quota or none is queued; the list is empty
        when refused after the acknowledgement. `notes` go into the reply."""
        assert interaction.guild_id is not None
        source_image = await read_if_present(source_path)
        # A missing source file is regenerated from its seed by the worker, which checks it then.
        for params in batch:
            if missing := [name for name, _ in params.loras if name not in self.model.models.loras]:
                raise UserError(f"The LoRA “{missing[0]}” is no longer offered here.")
            requests.validate(
                params.model_copy(update={"source_image": source_image}), self.limits_for(params.model),
                self.model.count_tokens,
            )
        spoilers_allowed = await self._store.nsfw_spoilers_allowed(interaction.guild_id)
        update = {
            "max_file_bytes": interaction.filesize_limit,
            "return_flagged": _allow_flagged(interaction, spoilers_allowed),
        }
        new_jobs = [
            NewJob(
                kind=kind,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id or 0,
                user_id=interaction.user.id,
                params=params.model_copy(update=update),
                model_id=self.model.models.entry(params.model).model_id,
                source_job_id=source.job_id if source else None,
                source_index=source.idx if source else None,
                source_path=str(source_path) if source_path else None,
                application_id=interaction.application_id,
                interaction_token=interaction.token,
            )
            for params in batch
        ]
        flow = (interaction.guild_id, interaction.user.id)
        async with self._member_locks[flow]:
            self._scheduler.check_can_submit(flow, len(new_jobs))
            quota = await self._store.quota(*flow)
            images = sum(params.charged_images for params in batch)
            if quota.limit is not None and quota.used + images > quota.limit:
                raise QuotaExceeded(quota.limit, quota.used, images, quota.resets_at)
            queues = [functools.partial(self._scheduler.submit, new_job) for new_job in new_jobs]
            return await self._delivery.accept(interaction, queues, notes)

    # Models

    def entry(self, name: str | None) -> ModelEntry:
        """A job's catalogue model (None: the default); refused when the models file dropped it."""
        try:
            return self.model.models.entry(name)
        except KeyError:
            raise UserError(
                f"The model “{name}” is no longer offered here; `/imagine model:` lists the models."
            ) from None

    def limits_for(self, model: str | None) -> RequestLimits:
        return self.limits.for_model(self.entry(model), named=self.model.models.named)

    async def pick_model(self, interaction: discord.Interaction, typed: str | None) -> ModelEntry:
        """The model named in `typed`, else this server's default, else the catalogue's."""
        catalogue = self.model.models
        chosen = await self._store.default_model(interaction.guild_id or 0) if catalogue.named else None
        return requests.pick_model(catalogue, typed, chosen)

    def model_choices(self, typed: str) -> list[tuple[str, str]]:
        """Autocomplete for `model:`: (label, name), the label with the model's description."""
        models = self.model.models.models if self.model.models.named else {}
        return [(_label(name, models[name].description), name) for name in match(models, typed)]

    def lora_choices(self, typed: str, model: str | None) -> list[tuple[str, str]]:
        """Autocomplete for `lora:` (label, value): the LoRAs already typed, then each LoRA of the
        chosen model's family matching what follows the last comma."""
        *chosen, current = [item.strip() for item in typed.split(",")]
        chosen = [item for item in chosen if item]
        if len(chosen) >= requests.MAX_LORAS:
            return []
        entry = self.model.models.lookup(model or "") or self.model.models.entry(None)
        loras = {name: lora for name, lora in self.model.models.loras.items() if lora.family == entry.family}
        taken = {item.partition(":")[0].strip().casefold() for item in chosen}
        return [
            (_label(", ".join([*chosen, name]), loras[name].description), ", ".join([*chosen, name]))
            for name in match(loras, current.partition(":")[0])
            if name.casefold() not in taken
        ]

    # Finding what a request is about

    async def find_job(self, interaction: discord.Interaction, job_id: int) -> JobRow:
        """A job of this guild, or a friendly "not found" (ids of other guilds are not found)."""
        job = await self._store.get_job(job_id, guild_id=interaction.guild_id)
        if job is None:
            raise UserError(f"There is no job #{job_id} in this server. `/history` lists your jobs.")
        return job

    async def find_image(self, interaction: discord.Interaction, job_id: int, number: int) -> Source:
        """A posted image of a job, with its file (which the worker regenerates if it went missing)."""
        job = await self.find_job(interaction, job_id)
        if job.status != JobStatus.DONE:
            raise UserError(f"Job #{job_id} is {job.status.value}; it has no images yet.")
        images = await self._store.images(job.id)
        if not 1 <= number <= len(images):
            raise UserError(f"Job #{job_id} has {len(images)} image(s); pick a number from 1 to {len(images)}.")
        image = images[number - 1]
        if image.path is None:
            raise UserError(f"Image {number} of job #{job_id} was withheld by the safety checker.")
        return Source(job, image, Path(image.path))

    async def pick_source(
        self,
        interaction: discord.Interaction,
        job: int | None,
        index: int | None,
        image: discord.Attachment | None,
    ) -> Source | Upload:
        """The picture /variations or /upscale works on: an image of a job here, or an upload."""
        if (job is None) == (image is None):
            raise UserError("Give either `job` and `index` (an image made here) or `image` (an upload).")
        if job is not None:
            if index is None:
                raise UserError(f"Which image of job #{job}? Add `index` (1-4).")
            return await self.find_image(interaction, job, index)
        assert image is not None
        folder = self.settings.output_dir / "uploads"
        return Upload(*await save_upload(image, max_pixels=self.limits.max_upload_pixels, folder=folder))

    # The requests

    async def imagine(
        self,
        interaction: discord.Interaction,
        *,
        prompt: str,
        negative: str = "",
        seed: int | None = None,
        count: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        aspect: str | None = None,
        style: str | None = None,
        model: str | None = None,
        lora: str | None = None,
    ) -> None:
        entry = await self.pick_model(interaction, model)
        imagined = requests.imagine(
            self.limits_for(entry.name), prompt=prompt,
            native_size=self.model.native_size_of(entry), negative=negative, seed=seed,
            count=count, steps=steps, guidance=guidance, aspect=aspect,
            styles=requests.pick_styles(self.styles, style),
            loras=requests.pick_loras(self.model.models, entry, lora),
        )
        await self.submit(interaction, JobKind.IMAGINE, imagined.jobs, notes=imagined.notes)

    def prompt_reading(self, job: JobRow) -> PromptReading | None:
        """How the encoder read a job's prompt as run, when the model can tell here (not for
        upscales, whose prompt is plain text, nor for a prompt from before the syntax checks)."""
        if self.model.read_prompt is None or job.pipeline is PipelineKind.UPSCALE:
            return None
        try:
            return self.model.read_prompt(job.prompt)
        except PromptSyntaxError:
            return None

    def style_choices(self, typed: str) -> list[str]:
        """Autocomplete for `style:`: the names already typed (before the last comma) followed by
        each style matching what comes after it."""
        *chosen, current = [name.strip() for name in typed.split(",")]
        chosen = [name for name in chosen if name]
        if len(chosen) >= MAX_STYLES:
            return []
        taken = {name.casefold() for name in chosen}
        return [
            ", ".join([*chosen, style.name])
            for style in match_styles(self.styles, current)
            if style.name.casefold() not in taken
        ]

    async def variations(
        self,
        interaction: discord.Interaction,
        source: Source | Upload,
        *,
        prompt: str | None = None,
        strength: float | None = None,
        count: int | None = None,
    ) -> JobRow | None:
        if isinstance(source, Source):
            params = requests.variation_of(
                self.limits_for(source.job.model), source.job, source.image, prompt=prompt, strength=strength,
                count=count,
            )
            return _first(
                await self.submit(interaction, JobKind.VARIATION, [params], source=source.image, source_path=source.path)
            )
        assert prompt, "/variations asks for the prompt of an upload before downloading it"
        entry = await self.pick_model(interaction, None)
        params = requests.variation_of_upload(
            self.limits_for(entry.name), self.model.native_size_of(entry),
            source.width, source.height, prompt=prompt, strength=strength, count=count,
        )
        return _first(await self.submit(interaction, JobKind.VARIATION, [params], source_path=source.path))

    async def upscale(self, interaction: discord.Interaction, source: Source | Upload) -> JobRow | None:
        if isinstance(source, Source):
            params = requests.upscale_of(source.job, source.image)
            return _first(
                await self.submit(interaction, JobKind.UPSCALE, [params], source=source.image, source_path=source.path)
            )
        params = requests.upscale(source.width, source.height)
        return _first(await self.submit(interaction, JobKind.UPSCALE, [params], source_path=source.path))

    async def reroll(self, interaction: discord.Interaction, job_id: int, seed: int | None = None) -> JobRow | None:
        """The same parameters again: with `seed`, one image that reproduces that seed's image."""
        job = await self.find_job(interaction, job_id)
        if job.pipeline != PipelineKind.TEXT2IMG and job.source_path is None:
            raise UserError(f"Job #{job.id} has no source picture left to reroll from.")
        source = None
        if job.source_job_id is not None and job.source_index is not None:
            images = await self._store.images(job.source_job_id)
            source = next((i for i in images if i.idx == job.source_index), None)
        # A /describe rerolled describes again (its answer, not an empty image result).
        kind = JobKind.DESCRIBE if job.kind is JobKind.DESCRIBE else JobKind.REROLL
        return _first(await self.submit(
            interaction, kind, [requests.reroll(job, seed)], source=source,
            source_path=Path(job.source_path) if job.source_path else None,
        ))

    async def describe(self, interaction: discord.Interaction, image: discord.Attachment) -> JobRow | None:
        """Prompt suggestions for an uploaded picture (and its metadata, shown with them)."""
        if self.settings.describe_model_id.strip().lower() == "none":
            raise UserError("/describe is turned off on this bot.")
        data = await download_upload(image)
        path, checked = await asyncio.to_thread(
            keep_upload, data, image.filename, self.limits.max_upload_pixels, self.settings.output_dir / "uploads"
        )
        width, height = checked.first_frame.size
        params = requests.describe(self.limits, self.model.native_size, width, height)
        notes = ["an animated picture: its first frame was described"] if checked.animated else []
        return _first(await self.submit(interaction, JobKind.DESCRIBE, [params], notes=notes, source_path=path))

    async def _describe_action(
        self, interaction: discord.Interaction, action: Action, job_id: int, number: int | None
    ) -> JobRow | None:
        """A /describe button: imagine suggestion `number`, describe again, or reuse the settings."""
        job = await self.find_job(interaction, job_id)
        if job.kind is not JobKind.DESCRIBE:
            raise UserError(f"Job #{job_id} is not a /describe.")
        source = Path(job.source_path) if job.source_path else None
        if source is None or not source.is_file():
            raise UserError(f"The picture of /describe #{job_id} is no longer kept; upload it again.")
        if action is Action.DESCRIBE:
            return _first(await self.submit(
                interaction, JobKind.DESCRIBE, [requests.describe_more(job)], source_path=source
            ))
        # Suggestions and reused settings run where an /imagine without `model:` would: on this
        # server's default model.
        entry = await self.pick_model(interaction, None)
        limits, native_size = self.limits_for(entry.name), self.model.native_size_of(entry)
        if action is Action.REUSE:
            made_with = await asyncio.to_thread(read_made_with, await asyncio.to_thread(source.read_bytes))
            if made_with is None:
                raise UserError("This picture carries no generation settings to reuse.")
            params = requests.reuse(limits, made_with, native_size)
            return _first(await self.submit(interaction, JobKind.IMAGINE, [params]))
        suggestions = await self._store.suggestions(job.id)
        if number is None or not 1 <= number <= len(suggestions):
            raise UserError(f"/describe #{job_id} has no suggestion {number}.")
        imagined = requests.from_suggestion(limits, job, suggestions[number - 1], native_size)
        return _first(await self.submit(interaction, JobKind.IMAGINE, imagined.jobs, notes=imagined.notes))

    async def cancel(self, interaction: discord.Interaction, job_id: int) -> None:
        """Cancel a queued or running job: the owner's own, or anyone's for a moderator."""
        job = await self.find_job(interaction, job_id)
        is_owner = job.user_id == interaction.user.id
        if not (is_owner or is_moderator(interaction.user)):
            raise UserError(f"Job #{job_id} belongs to someone else; only they or a moderator can cancel it.")
        if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            raise UserError(f"Job #{job_id} has already ended ({job.status.value}).")
        reason = "by its owner" if is_owner else f"by moderator {interaction.user.display_name}"
        if not await self._scheduler.cancel(job_id, reason):
            raise UserError(f"Job #{job_id} has just ended; there is nothing to cancel.")
        if not is_owner:
            await self._store.audit(job.guild_id, interaction.user.id, "job.cancel", job.user_id, {"job_id": job_id})
        await interaction.response.send_message(f"Cancelled job #{job_id}; its images were refunded.", ephemeral=True)

    async def delete_result(self, interaction: discord.Interaction, job_id: int) -> None:
        """The 🗑️ under a result: the message goes, for the member who asked for it or a moderator.
        The job's record stays, so /job and /reroll still know its prompt and seeds."""
        job = await self.find_job(interaction, job_id)
        is_owner = job.user_id == interaction.user.id
        if not (is_owner or is_moderator(interaction.user)):
            raise UserError(
                f"The result of job #{job_id} belongs to someone else; only they or a moderator can delete it."
            )
        assert interaction.message is not None  # a button is always on a message
        with suppress(discord.NotFound):  # pressed twice: the first press deleted it
            await interaction.message.delete()
        if not is_owner:
            await self._store.audit(job.guild_id, interaction.user.id, "result.delete", job.user_id, {"job_id": job_id})
        await interaction.response.send_message(f"Deleted the result of job #{job_id}.", ephemeral=True)

    async def press(self, interaction: discord.Interaction, action: Action, job_id: int, number: int | None) -> None:
        """A result or queue button: a new job for whoever pressed it, with the same checks. A second
        press of the same button by the same member within PRESS_WINDOW_S makes no second job."""
        if action == Action.CANCEL:
            await self.cancel(interaction, job_id)
            return
        if action == Action.DELETE:
            await self.delete_result(interaction, job_id)
            return
        if await self._opens_modal(interaction, action):
            # Nothing is queued yet: the modal's submit makes the job (and is checked then).
            source = await self.find_image(interaction, job_id, number or 1)
            modal = EditModal(action, job_id, number or 1, source.job.prompt, ask_region=action == Action.VARY_REGION)
            await interaction.response.send_modal(modal)
            return
        key = (interaction.user.id, interaction.message.id if interaction.message else 0, action, job_id, number)
        if (earlier := self._presses.get(key)) is not None:
            await self._answer_repeat(interaction, earlier)
            return
        first: asyncio.Future[JobRow | None] = asyncio.get_running_loop().create_future()
        self._presses[key] = first
        asyncio.get_running_loop().call_later(PRESS_WINDOW_S, self._presses.pop, key, None)
        try:
            first.set_result(await self._new_job_for(interaction, action, job_id, number))
        except BaseException:
            first.set_result(None)
            raise

    async def _new_job_for(
        self, interaction: discord.Interaction, action: Action, job_id: int, number: int | None
    ) -> JobRow | None:
        if action == Action.REROLL:
            return await self.reroll(interaction, job_id)
        if action in (Action.PROMPT, Action.DESCRIBE, Action.REUSE):
            return await self._describe_action(interaction, action, job_id, number)
        source = await self.find_image(interaction, job_id, number or 1)
        if action == Action.UPSCALE:
            return await self.upscale(interaction, source)
        if action == Action.VARY:
            return await self.variations(interaction, source)
        return await self.edit(interaction, action, source)

    async def _opens_modal(self, interaction: discord.Interaction, action: Action) -> bool:
        if action == Action.VARY_REGION:
            return True
        assert interaction.guild_id is not None
        return action in REMIX_ACTIONS and await self._store.remix(interaction.guild_id, interaction.user.id)

    async def edit(
        self, interaction: discord.Interaction, action: Action, source: Source | Upload, *,
        prompt: str | None = None, region: str | None = None, mask: bytes | None = None,
    ) -> JobRow | None:
        """An editing button (or its modal, or an editing command): Vary (Subtle/Strong), Zoom Out,
        Pan or Vary (Region), the region named or (for an upload) an uploaded mask. `prompt` None or
        empty keeps the job's prompt."""
        prompt = prompt or None
        if isinstance(source, Source):  # on the source job's model, as its variations
            limits = self.limits_for(source.job.model)
            if action in _VARIES:
                params = requests.vary(limits, source.job, source.image, strong=_VARIES[action], prompt=prompt)
                return _first(await self.submit(
                    interaction, JobKind.VARIATION, [params], source=source.image, source_path=source.path
                ))
            base = requests.EditSource.of_image(source.job, source.image, prompt)
        else:  # on this server's model, as the variations of an upload
            entry = await self.pick_model(interaction, None)
            limits = self.limits_for(entry.name)
            base = requests.EditSource.of_upload(
                limits, self.model.native_size_of(entry), source.width, source.height, prompt or ""
            )
        if action in ZOOMS:
            params = requests.zoom_out(limits, base, ZOOMS[action])
        elif action in PANS:
            params = requests.pan(limits, base, PANS[action])
        elif mask is not None:
            assert isinstance(source, Upload), "only /inpaint takes a mask, with an upload"
            params = requests.inpaint_mask(limits, base, mask, (source.width, source.height))
        else:
            params = requests.inpaint_region(limits, base, region or "")
        image = source.image if isinstance(source, Source) else None
        return _first(await self.submit(
            interaction, JobKind.VARIATION, [params], source=image, source_path=source.path
        ))

    async def submit_modal(self, interaction: discord.Interaction, submit: EditSubmit) -> JobRow | None:
        """The Remix or Vary (Region) box was sent: the edit, with the prompt as the member left it."""
        source = await self.find_image(interaction, submit.job_id, submit.number)
        return await self.edit(
            interaction, submit.action, source, prompt=requests.normalise_text(submit.prompt), region=submit.region
        )

    async def _answer_repeat(self, interaction: discord.Interaction, first: asyncio.Future[JobRow | None]) -> None:
        """A repeated press: point at the job the first one made (waiting briefly for it)."""
        try:
            job = await asyncio.wait_for(asyncio.shield(first), REPEAT_WAIT_S)
        except TimeoutError:
            raise UserError("Your first press of this button is still being queued.") from None
        if job is None:
            raise UserError("Your first press of this button just now was not queued; wait a moment and try again.")
        raise UserError(f"Already queued as #{job.id}.")


def _label(name: str, description: str) -> str:
    """An autocomplete label: the name and, if room is left of Discord's 100 characters, the description."""
    label = f"{name} — {description}" if description else name
    return label if len(label) <= 100 else name[:100]


def _first(jobs: Sequence[JobRow]) -> JobRow | None:
    """The job a one-job request made, if it was queued."""
    return jobs[0] if jobs else None


def _allow_flagged(interaction: discord.Interaction, spoilers_allowed: bool) -> bool:
    """Flagged images may be shown (as spoilers) only in age-restricted channels that allow it."""
    channel = interaction.channel
    is_nsfw = bool(channel is not None and getattr(channel, "is_nsfw", lambda: False)())
    return is_nsfw and spoilers_allowed

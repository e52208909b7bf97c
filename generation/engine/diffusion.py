"""The generation engine: text-to-image, variations (image-to-image) and x2 upscaling with diffusers,
one pipeline call per batch, every image safety-checked and stamped with how it was made. Requests
arrive validated (`generation.requests`); the engine only decodes source pictures.

Reproducibility: each image gets its own `torch.Generator("cpu").manual_seed(seed)`, so its pixels
depend on the model, the parameters and its seed, not on the other images of its batch. Re-running
a job on the same machine gives identical pixels. Running one seed of a batch alone can differ from
the batched run by float rounding in batched kernels. Measured on the tiny test model on a CPU
(fp32, 4 steps, 64x64 and 128x128, guidance 0 and 5, batches of 2-4 seeds and of mixed prompts):
at most 1 level of 255 on any pixel channel, often 0. tests/test_engine.py asserts at most 2.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import diffusers
import torch
import transformers
from PIL import Image

from generation.catalogue import family_of
from generation.engine.buckets import bucket_for, pad_per_image
from generation.engine.config import EngineConfig
from generation.engine.describe import Captioner
from generation.engine.devices import (
    dtype_for,
    free_memory,
    is_out_of_memory,
    resolve_device,
)
from generation.engine.inpaint import Prepared, prepare
from generation.engine.loras import Adapters
from generation.engine.model_pool import ModelPool, memory_budget, weights_bytes
from generation.engine.pipelines import (
    LoadedPipeline,
    check_folders,
    img2img_from,
    inpaint_from,
    load_inpainter,
    load_preview_decoder,
    load_safety_checker,
    load_text2img,
    load_upscaler,
    pipeline_class,
    to_download,
)
from generation.engine.png_metadata import (
    EncodedImage,
    a1111_sampler,
    encode_for_upload,
)
from generation.engine.previews import PreviewMaker
from generation.engine.prompt_embeds import (
    Embeddings,
    PromptReading,
    PromptTooLong,
    encode_batch,
    read_prompt,
    weighs_prompts,
)
from generation.engine.safety import SafetyChecker, SafetyVerdict
from generation.engine.tiling import set_seamless
from generation.errors import Cancelled, InvalidRequest, OutOfMemory
from generation.family_limits import NO_GUIDANCE, family_notes, reads_negative
from generation.prompt_syntax import PromptSyntaxError, plain_text
from generation.requests import SOURCE_FORMATS
from sdbot.types import (
    Edit,
    GeneratedImage,
    GenerationParams,
    GenerationRecord,
    JobOutput,
    PipelineKind,
    PreviewCallback,
)

log = logging.getLogger(__name__)

VERSIONS = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}
# Above this many output pixels the VAE decodes in tiles, so big images do not need big memory.
VAE_TILING_PIXELS = 1024 * 1024


def effective_steps(steps: int, strength: float) -> int:
    """diffusers' image-to-image runs only int(steps * strength) denoising steps, which is 0 for
    few-step models at low strength (sd-turbo: 2 x 0.3); raise steps until at least one runs."""
    while int(steps * strength) < 1:
        steps += 1
    return steps


class _Stop(Exception):
    """Raised from a step callback to leave the denoising loop at once (no final VAE decode)."""


@dataclass
class _Job:
    params: GenerationParams
    source: Image.Image | None
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Resident:
    """A loaded catalogue model: its pipelines (sharing modules) and the LoRAs loaded on them."""

    text2img: LoadedPipeline
    img2img: LoadedPipeline
    adapters: Adapters = field(default_factory=Adapters)
    inpainter: LoadedPipeline | None = None  # made from text2img's modules at the model's first edit
    previews: PreviewMaker | None = None  # None: previews off, or no decoder for this model


@dataclass
class _Produced:
    """What one pipeline call made for a whole batch: one image per seed, jobs in order."""

    images: list[Image.Image]
    steps: int
    scheduler: str
    model_id: str
    model_revision: str
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # apply to every job of the batch


class DiffusionEngine:
    """Implements `sdbot.types.Engine`. Models load on first use, or all at once with
    `DiffusionEngine.load(config)` so a bad configuration fails at start-up; the x2 upscaler
    always loads on the first upscale. `device` and `dtype` are strings ("cuda", "float16")."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._device = resolve_device(config.device)
        self._dtype = dtype_for(self._device)
        self._catalogue = config.models
        # The model in use (its name, its pipelines), one of the pool's resident models.
        self._active: str | None = None
        self._resident: _Resident | None = None
        self._pool: ModelPool[_Resident] = ModelPool(
            memory_budget(self._device, config.gpu_memory_gb), self._load_model,
            lambda resident: weights_bytes(resident.text2img.pipe), lambda: free_memory(self._device),
        )
        self._upscaler: LoadedPipeline | None = None
        self._inpainter: LoadedPipeline | None = None
        self._safety: SafetyChecker | None = None
        self._captioner: Captioner | None = None  # /describe's model, loaded on the first caption job
        self._lock = threading.RLock()  # pipelines keep scheduler state: one batch at a time
        self._device_name = torch.cuda.get_device_name(self._device) if self._device.type == "cuda" else None
        # Seconds spent in "pipeline", "safety", "encode" and "total" by the last run_batch.
        self.last_timings: dict[str, float] = {}

    @classmethod
    def load(cls, config: EngineConfig) -> DiffusionEngine:
        engine = cls(config)
        engine.load_models()
        return engine

    def load_models(self) -> None:
        with self._lock:
            if self._resident is not None:
                return
            check_folders(self.config)
            downloads = to_download(self.config)
            log.info(
                "loading %s on %s%s", self.model_id, self.device,
                f"; downloading {', '.join(downloads)} first (several GB)" if downloads else "",
            )
            # Now that the model's family can be read (bf16 for Flux on CUDA).
            self._dtype = dtype_for(self._device, pipeline_class(self.config.model_id, self.config.model_revision))
            # The checker first: each model's preview maker checks its previews with it.
            if self.config.safety_checker:
                self._safety = load_safety_checker(self.config, self._device, self._dtype)
            else:
                log.warning("SDBOT_SAFETY_CHECKER is off: generated images are not checked for NSFW content")
            self._use(self._catalogue.default)
            log.info(
                "loaded %s (revision %s) on %s as %s", self.model_id, self.model_revision, self.device, self.dtype
            )

    def _use(self, name: str) -> None:
        """Make the catalogue model `name` the one in use, loading it (and unloading the least
        recently used past the memory budget) if need be; a switch is logged with its time."""
        if name == self._active:
            return
        started = time.perf_counter()
        resident, unloaded = self._pool.get(name)
        previous, self._active, self._resident = self._active, name, resident
        if previous is not None:
            log.info(
                "model switch: %s -> %s in %.2f s%s", previous, name, time.perf_counter() - started,
                f" (unloaded {', '.join(unloaded)})" if unloaded else "",
            )

    def _load_model(self, name: str) -> _Resident:
        entry = self._catalogue.entry(name)
        dtype = dtype_for(self._device, pipeline_class(entry.model_id, entry.revision))  # bf16 for Flux on CUDA
        text2img = load_text2img(self.config, self._device, dtype, entry.model_id, entry.revision)
        # Each model its own preview decoder: the models file's, else taesd, taesdxl... by family.
        decoder = load_preview_decoder(self.config, text2img.pipe, self._device, dtype, entry.preview_decoder)
        previews = None if decoder is None else PreviewMaker(decoder, self._safety, self.config.preview_interval_s)
        return _Resident(text2img, img2img_from(text2img), previews=previews)

    @property
    def resident_models(self) -> list[str]:
        """The catalogue models loaded now, least recently used first."""
        return self._pool.resident

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @property
    def model_revision(self) -> str:
        return self._loaded_text2img().revision

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def dtype(self) -> str:
        return str(self._dtype).removeprefix("torch.")

    @property
    def native_size(self) -> int:
        """The side the model was trained at (512 for SD 1.x/2.x-base and sd-turbo; a transformer
        model's default, 1024 for FLUX)."""
        pipe = self._loaded_text2img().pipe
        unet = getattr(pipe, "unet", None)
        sample_size = pipe.default_sample_size if unet is None else unet.config.sample_size
        return int(sample_size * pipe.vae_scale_factor)

    def token_counter(self) -> Callable[[str], int]:
        """A1111's token count of a prompt (raises PromptSyntaxError for refused syntax), for
        checks before a job is queued."""
        read = self.prompt_reader()
        return lambda text: read(text).length

    def prompt_reader(self) -> Callable[[str], PromptReading]:
        """How the encoder reads a prompt: fragments, chunks and token counts (raises
        PromptSyntaxError for refused syntax). It has its own copy of the tokenizer: a fast tokenizer
        must not be used by two threads at once, and the worker thread encodes with the pipeline's."""
        tokenizer = copy.deepcopy(self._loaded_text2img().pipe.tokenizer)
        return lambda text: read_prompt(tokenizer, text)

    @property
    def previews(self) -> bool:
        """Whether this engine makes live previews (on, and its decoder loaded)."""
        self.load_models()
        return self._resident is not None and self._resident.previews is not None

    @property
    def text2img_pipeline(self) -> Any:
        """The loaded diffusers text-to-image pipeline (for benchmarks and debugging)."""
        return self._loaded_text2img().pipe

    @property
    def inpaint_pipeline(self) -> Any:
        """The diffusers inpainting pipeline edits run on (for benchmarks and debugging)."""
        with self._lock:
            return self._loaded_inpainter().pipe

    def warm_up(self, sizes: Sequence[int], buckets: Sequence[int], guidance: float = 0.0) -> None:
        """Run every (size, batch bucket) once, so that a compiled engine builds its graphs before
        a member waits for them; a no-op when nothing is compiled."""
        with self._lock:
            loaded = self._loaded_text2img()
            if not loaded.fast_path.compiled:
                return
            for size in sizes:
                for bucket in buckets:
                    log.info("warming up: %dx%d, batch of %d", size, size, bucket)
                    started = time.perf_counter()
                    with torch.inference_mode():
                        loaded.pipe(
                            prompt=["warming up"] * bucket,
                            num_inference_steps=1,
                            guidance_scale=guidance,
                            width=size,
                            height=size,
                            output_type="pil",
                        )
                    log.info("warmed up %dx%d x%d in %.1f s", size, size, bucket, time.perf_counter() - started)

    def run_batch(
        self,
        batch: Sequence[GenerationParams],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> list[JobOutput]:
        """`on_preview(step, total, previews)`, when given and previews are on, gets a JPEG per job
        (None where the safety checker flagged it) every SDBOT_PREVIEW_INTERVAL_S of generation."""
        return self.generate(batch, on_step, should_stop, on_preview)()

    def generate(
        self,
        batch: Sequence[GenerationParams],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> Callable[[], list[JobOutput]]:
        """The device's part of `run_batch` (the pipeline and the safety check). It returns, once
        the device is free for the next batch, what is left to do: encoding the images with their
        records, which any thread may run (`generation.jobs.runners.LocalRunner` does so while the
        next batch denoises)."""
        if not batch:
            return list
        if batch[0].pipeline is PipelineKind.CAPTION:
            captions = self._describe(batch, on_step, should_stop)
            return lambda: captions
        started = time.perf_counter()
        jobs = [_Job(params, self._source(params)) for params in batch]
        if len({job.params.batch_key for job in jobs}) > 1:
            raise InvalidRequest("jobs in one batch must share pipeline, size, steps, guidance and strength")
        with self._lock:
            self.load_models()
            # Read now: encoding runs while the next batch may switch models and LoRAs.
            lora_record: dict[str, Any] = {}
            if jobs[0].params.pipeline is not PipelineKind.UPSCALE:  # the upscaler is its own model
                self._use(self._catalogue.entry(jobs[0].params.model).name)
                self._set_loras(jobs[0].params)
                lora_record = self._lora_record(jobs[0].params)
            for job in jobs:
                self._add_input_warnings(job)
            if should_stop():
                raise Cancelled("cancelled before generation started")
            produced, verdicts = self._generate(jobs, on_step, should_stop, on_preview)
            produced.extra |= lora_record
        generated = time.perf_counter()

        def encode() -> list[JobOutput]:
            encoding = time.perf_counter()
            results = list(zip(produced.images, verdicts, strict=True))
            outputs = []
            for job in jobs:
                outputs.append(self._output(job, produced, results[: len(job.params.seeds)]))
                results = results[len(job.params.seeds) :]
            encoded = time.perf_counter() - encoding
            # The time this batch kept the device and the encoder busy, not the wait in between.
            total = generated - started + encoded
            self.last_timings |= {"encode": encoded, "total": total}
            for output in outputs:
                output.elapsed_s = total / len(batch)
            return outputs

        return encode

    def _describe(
        self,
        batch: Sequence[GenerationParams],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
    ) -> list[JobOutput]:
        """Caption jobs: prompt suggestions for each source picture (its first frame), no images."""
        if not self.config.describe_enabled:
            raise InvalidRequest("/describe is turned off on this bot (SDBOT_DESCRIBE_MODEL_ID=none)")
        outputs: list[JobOutput] | None = None
        with self._lock:
            started = time.perf_counter()
            tokenizer = self._loaded_text2img().pipe.tokenizer
            if self._captioner is None:
                self._captioner = Captioner(self.config.describe_model_id, self._device, self._dtype)
            try:
                outputs = [
                    JobOutput(images=[], captions=self._captioner.suggestions(
                        _first_frame(params),
                        seed=params.seeds[0],
                        sampled=params.steps,
                        count_tokens=lambda text: len(tokenizer(text, add_special_tokens=False).input_ids),
                        on_caption=on_step,
                        should_stop=should_stop,
                    ))
                    for params in batch
                ]
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
            elapsed = time.perf_counter() - started
        if outputs is None:  # out of memory; freed after the except block dropped its tensors
            free_memory(self._device)
            raise OutOfMemory(f"the {self._device.type} device ran out of memory describing a picture")
        self.last_timings = {"describe": elapsed, "total": elapsed}
        for output in outputs:
            output.elapsed_s = elapsed / len(batch)
        return outputs

    def _lora_record(self, params: GenerationParams) -> dict[str, Any]:
        """The LoRAs of a batch as its records name them (with the revision that is loaded)."""
        if not params.loras or self._resident is None:
            return {}
        loaded = self._resident.adapters.loaded
        return {"loras": [
            {"name": name, "weight": weight, "source": self._catalogue.loras[name].source,
             "revision": loaded.get(name, "?")}
            for name, weight in params.loras
        ]}

    def _set_loras(self, params: GenerationParams) -> None:
        resident = self._resident
        assert resident is not None
        catalogue = self._catalogue
        try:
            entries = [(catalogue.loras[name], weight) for name, weight in params.loras]
        except KeyError as error:
            raise InvalidRequest(f"there is no LoRA called {error} in the models file any more") from None
        resident.adapters.apply(resident.text2img.pipe, entries)

    # -- inputs ------------------------------------------------------------------------------------

    @staticmethod
    def _source(params: GenerationParams) -> Image.Image | None:
        """The decoded source picture of img2img and upscale jobs (checked by `generation.requests`
        before they were queued)."""
        if params.pipeline is PipelineKind.TEXT2IMG:
            return None
        if not params.source_image:
            raise InvalidRequest("this job needs a source image")
        try:
            with Image.open(BytesIO(params.source_image), formats=SOURCE_FORMATS) as opened:
                return opened.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise InvalidRequest("the source image could not be read as a PNG, JPEG or WebP file") from None

    def _add_input_warnings(self, job: _Job) -> None:
        """Things the user would not otherwise know changed or were ignored in their request."""
        params = job.params
        # An edit places its source on its canvas itself (shrunk for a zoom out, beside a pan's strip).
        if job.source is not None and params.edit is None and job.source.size != (params.width, params.height):
            job.warnings.append(
                f"the source image was {job.source.width}x{job.source.height}; "
                f"it was resized to {params.width}x{params.height}"
            )
            job.source = job.source.resize((params.width, params.height), Image.Resampling.LANCZOS)
        if params.pipeline is PipelineKind.UPSCALE:
            return  # the upscaler's prompt only steers detail; its truncation does not matter
        if params.pipeline is PipelineKind.IMG2IMG and params.strength is not None:
            steps = effective_steps(params.steps, params.strength)
            if steps != params.steps:
                job.warnings.append(
                    f"steps raised from {params.steps} to {steps} so that strength {params.strength:g} "
                    "leaves at least one denoising step"
                )
        family = self._family(params)
        job.warnings += family_notes(family, params.prompt, params.negative_prompt, params.tile)
        if family == "flux" and params.guidance > 1.0:  # FLUX.1-dev reads it, schnell has no such input
            if not self._loaded_text2img().pipe.transformer.config.guidance_embeds:
                job.warnings.append(NO_GUIDANCE)
        if params.negative_prompt and params.guidance <= 1.0 and reads_negative(family):
            job.warnings.append("the negative prompt has no effect at a guidance (CFG scale) of 1 or less")

    def _family(self, params: GenerationParams) -> str | None:
        """The family of the pipeline the job runs on; None for SDBOT_INPAINT_MODEL_ID's, an SD
        inpainting checkpoint an edit may run on (CLIP-read, like any unknown family)."""
        if params.edit is not None and self.config.inpaint_model_id:
            return None
        return family_of(type(self._loaded_text2img().pipe).__name__)

    # -- generation -------------------------------------------------------------------------------

    def _generate(
        self,
        jobs: list[_Job],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: PreviewCallback | None,
    ) -> tuple[_Produced, list[SafetyVerdict | None]]:
        """Run the pipeline and the safety check, mapping device OOM and cancellation."""
        try:
            with torch.inference_mode():
                started = time.perf_counter()
                if jobs[0].params.pipeline is PipelineKind.UPSCALE:
                    produced = self._upscale(jobs, on_step, should_stop)
                else:
                    produced = self._diffuse(jobs, on_step, should_stop, on_preview)
                checked = time.perf_counter()
                verdicts: list[SafetyVerdict | None] = (
                    list(self._safety.check(produced.images)) if self._safety else [None] * len(produced.images)
                )
                self.last_timings = {"pipeline": checked - started, "safety": time.perf_counter() - checked}
                return produced, verdicts
        except _Stop:
            raise Cancelled("cancelled between denoising steps") from None
        except Exception as error:
            if not is_out_of_memory(error):
                raise
        # Only out-of-memory gets here, after the except block dropped the traceback and its tensors.
        free_memory(self._device)
        params = jobs[0].params
        count = sum(len(job.params.seeds) for job in jobs)
        raise OutOfMemory(
            f"the {self._device.type} device ran out of memory for {count} image(s) at "
            f"{params.width}x{params.height}; fewer images or a smaller size may fit"
        )

    def _diffuse(
        self,
        jobs: list[_Job],
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: PreviewCallback | None,
    ) -> _Produced:
        params = jobs[0].params
        if params.edit is not None:
            loaded = self._loaded_inpainter()
        else:
            resident = self._loaded_resident()
            loaded = resident.text2img if params.pipeline is PipelineKind.TEXT2IMG else resident.img2img
        pipe = loaded.pipe
        steps = params.steps
        edits: list[Prepared] = []
        if params.pipeline is PipelineKind.TEXT2IMG and params.edit is None:
            shape_args: dict[str, Any] = {"width": params.width, "height": params.height}
        else:  # from a source picture: image to image, or an edit with its canvas and mask
            assert params.strength is not None
            steps = effective_steps(params.steps, params.strength)
            shape_args = {"strength": params.strength}
            if params.edit is None:
                shape_args["image"] = _per_image(jobs, _source)
                if "width" in inspect.signature(pipe.__call__).parameters:  # FLUX's, else its default size
                    shape_args |= {"width": params.width, "height": params.height}
            else:
                edits = _per_image(jobs, lambda job: prepare(_source(job), _edit(job), params.width, params.height))
                shape_args |= {
                    "image": [item.canvas for item in edits],
                    "mask_image": [item.mask for item in edits],
                    "width": params.width,
                    "height": params.height,
                }
        _set_vae_tiling(pipe.vae, params.width * params.height)

        counts = [len(job.params.seeds) for job in jobs]
        # Nobody watching: no cost.
        previews = self._resident.previews if on_preview is not None and self._resident is not None else None
        if previews is not None:
            previews.start()

        def step_end(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            step, total = index + 1, pipe.num_timesteps
            on_step(step, total)
            if previews is not None and on_preview is not None and previews.due(step, total):
                latents = _spatial(pipe, tensors["latents"], params)
                if (made := _preview(previews, latents, counts)) is not None:
                    on_preview(step, total, made)
            if should_stop():
                raise _Stop
            return {}

        per_image = {
            **self._prompts(pipe, jobs),
            "generator": _generators(jobs),
            **shape_args,
        }
        count = len(per_image["generator"])
        # A compiled graph is built per batch size: pad to its bucket, drop the padding after.
        bucket = bucket_for(count) if loaded.fast_path.compiled else count
        # Set for every batch, never left on: text2img and img2img share the UNet and VAE. A
        # transformer has no convolutions to wrap around (FLUX's warning says so).
        tile = params.tile and hasattr(pipe, "unet")
        set_seamless(pipe, tile)
        try:
            images = pipe(
                num_inference_steps=steps,
                guidance_scale=params.guidance,
                callback_on_step_end=step_end,
                output_type="pil",
                **pad_per_image(per_image, count, bucket),
            ).images[:count]
        finally:
            set_seamless(pipe, False)
        if edits:  # the kept pixels come from the canvas, not from the VAE's round trip
            images = [item.finish(image) for item, image in zip(edits, images, strict=True)]
        extra = {**_sampler(pipe), **({"tile": True} if tile else {})}
        return _Produced(images, steps, type(pipe.scheduler).__name__, loaded.model_id, loaded.revision, extra)

    def _prompts(self, pipe: Any, jobs: Sequence[_Job]) -> dict[str, Any]:
        """The prompt arguments of a pipeline call: weighted embeddings for CLIP pipelines (SD
        1.x/2.x, SDXL: its pooled embeddings too); for SD3 and FLUX (T5 beside CLIP) the plain
        words, which the pipeline encodes itself. Negatives only where the pipeline reads them
        (guidance above 1; never on FLUX, which is guidance-distilled)."""
        if weighs_prompts(pipe):
            return self._embeddings(pipe, jobs).arguments()
        texts = {"prompt": _per_image(jobs, lambda job: _plain_words(job.params.prompt))}
        if jobs[0].params.guidance > 1.0 and reads_negative(family_of(type(pipe).__name__)):
            texts["negative_prompt"] = _per_image(jobs, lambda job: _plain_words(job.params.negative_prompt))
        return texts

    def _embeddings(self, pipe: Any, jobs: Sequence[_Job]) -> Embeddings:
        """A1111 weights and long prompts, one embedding per image; negatives only where the
        pipeline reads them (guidance above 1). Requests are checked before they are queued; this
        refuses what a caller without a token counter let through."""
        guided = jobs[0].params.guidance > 1.0  # the whole batch shares its guidance
        try:
            return encode_batch(
                pipe,
                _per_image(jobs, lambda job: job.params.prompt),
                _per_image(jobs, lambda job: job.params.negative_prompt) if guided else None,
                max_tokens=self.config.max_prompt_tokens,
            )
        except (PromptSyntaxError, PromptTooLong) as error:
            raise InvalidRequest(str(error)) from None

    def _upscale(
        self, jobs: list[_Job], on_step: Callable[[int, int], None], should_stop: Callable[[], bool]
    ) -> _Produced:
        params = jobs[0].params
        size = (2 * params.width, 2 * params.height)
        if self.config.plain_upscale:
            images = [source.resize(size, Image.Resampling.LANCZOS) for source in _per_image(jobs, _source)]
            on_step(1, 1)
            warning = (
                "SDBOT_UPSCALER_MODEL_ID is 'none', so this was enlarged with a plain Lanczos resize: "
                "it is bigger but has no new detail"
            )
            return _Produced(images, 0, "none", "lanczos", "", {"upscaler": "lanczos"}, [warning])
        loaded = self._loaded_upscaler()
        pipe = loaded.pipe
        _set_vae_tiling(pipe.vae, size[0] * size[1])

        def step_end(index: int, timestep: Any, latents: torch.Tensor) -> None:
            on_step(index + 1, params.steps)
            if should_stop():
                raise _Stop

        images = pipe(
            prompt=_per_image(jobs, lambda job: job.params.prompt),
            negative_prompt=_per_image(jobs, lambda job: job.params.negative_prompt),
            image=_per_image(jobs, _source),
            num_inference_steps=params.steps,
            guidance_scale=params.guidance,
            generator=_generators(jobs),
            callback=step_end,
            callback_steps=1,
            output_type="pil",
        ).images
        scheduler = type(pipe.scheduler).__name__
        extra = {"upscaler": "latent", **_sampler(pipe)}
        return _Produced(images, params.steps, scheduler, loaded.model_id, loaded.revision, extra)

    # -- output -----------------------------------------------------------------------------------

    def _output(
        self, job: _Job, produced: _Produced, results: Sequence[tuple[Image.Image, SafetyVerdict | None]]
    ) -> JobOutput:
        params = job.params
        warnings = [*job.warnings, *produced.warnings]
        images = []
        for index, (seed, (image, verdict)) in enumerate(zip(params.seeds, results, strict=True)):
            record = self._record(job, seed, produced, image.size)
            flagged = verdict is not None and verdict.flagged
            data, file_format = None, "png"
            if not flagged or params.return_flagged:  # flagged pixels never leave unless asked for
                encoded = encode_for_upload(image, record, params.max_file_bytes)
                data, file_format = encoded.data, encoded.format
                if params.max_file_bytes is not None and encoded.format != "png":
                    warnings.append(_upload_warning(index, seed, encoded, params.max_file_bytes))
            images.append(
                GeneratedImage(
                    index=index,
                    seed=seed,
                    width=image.width,
                    height=image.height,
                    data=data,
                    format=file_format,
                    flagged=flagged,
                    nsfw_score=verdict.score if verdict else None,
                    record=record,
                )
            )
        return JobOutput(images=images, warnings=warnings)

    def _record(self, job: _Job, seed: int, produced: _Produced, size: tuple[int, int]) -> GenerationRecord:
        params = job.params
        extra: dict[str, Any] = {"safety_checker": "on" if self._safety else "off", **produced.extra}
        if self._device_name:
            extra["device_name"] = self._device_name
        if params.source_image:
            extra["source_sha256"] = hashlib.sha256(params.source_image).hexdigest()[:16]
        if params.styles:
            extra["styles"] = list(params.styles)
        if params.edit is not None:
            extra["edit"] = params.edit.model_dump(mode="json", exclude={"mask_image"})
        if params.model is not None:
            extra["model"] = params.model
        if params.typed_prompt is not None and params.typed_prompt != params.prompt:
            extra["typed_prompt"] = params.typed_prompt
        return GenerationRecord(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            seed=seed,
            steps=produced.steps,
            guidance=params.guidance,
            width=size[0],
            height=size[1],
            strength=params.strength if params.pipeline is PipelineKind.IMG2IMG else None,
            pipeline=params.pipeline,
            scheduler=produced.scheduler,
            model_id=produced.model_id,
            model_revision=produced.model_revision,
            dtype=self.dtype,
            device=self.device,
            versions=VERSIONS,
            extra=extra,
        )

    # -- models -----------------------------------------------------------------------------------

    def _loaded_resident(self) -> _Resident:
        self.load_models()
        assert self._resident is not None
        return self._resident

    def _loaded_text2img(self) -> LoadedPipeline:
        return self._loaded_resident().text2img

    def _loaded_inpainter(self) -> LoadedPipeline:
        """The dedicated inpainting checkpoint, loaded at the first edit, or the modules of the model
        in use (so its LoRAs apply to edits too)."""
        if self.config.inpaint_model_id:
            if self._inpainter is None:
                self._inpainter = load_inpainter(self.config, self._device, self._dtype)
            return self._inpainter
        resident = self._loaded_resident()
        if resident.inpainter is None:
            resident.inpainter = inpaint_from(resident.text2img)
        return resident.inpainter

    def _loaded_upscaler(self) -> LoadedPipeline:
        if self._upscaler is None:
            self._upscaler = load_upscaler(self.config, self._device, self._dtype)
        return self._upscaler


def _preview(previews: PreviewMaker, latents: torch.Tensor, counts: list[int]) -> list[bytes | None] | None:
    """A preview per job, or None if making them failed: a preview never fails a job."""
    try:
        return previews.make(latents, counts)
    except Exception as error:  # noqa: BLE001 - e.g. latents this decoder cannot read
        log.warning("live preview failed (%s: %s); the job goes on without it", type(error).__name__, error)
        return None


def _plain_words(prompt: str) -> str:
    """A prompt for SD3 and FLUX: T5 and CLIP take no A1111 weights, so its words alone (the job is
    warned)."""
    try:
        return plain_text(prompt)[0]
    except PromptSyntaxError as error:
        raise InvalidRequest(str(error)) from None


def _spatial(pipe: Any, latents: torch.Tensor, params: GenerationParams) -> torch.Tensor:
    """Latents as (batch, channels, height, width): FLUX packs 2x2 patches into (batch, tokens, 64)."""
    if latents.ndim != 3:
        return latents
    return type(pipe)._unpack_latents(latents, params.height, params.width, pipe.vae_scale_factor)


def _source(job: _Job) -> Image.Image:
    assert job.source is not None
    return job.source


def _edit(job: _Job) -> Edit:
    assert job.params.edit is not None
    return job.params.edit


def _per_image(jobs: Sequence[_Job], value: Callable[[_Job], Any]) -> list[Any]:
    """Flatten a per-job value to one entry per image (per seed), jobs in order."""
    return [value(job) for job in jobs for _ in job.params.seeds]


def _generators(jobs: Sequence[_Job]) -> list[torch.Generator]:
    # CPU generators: the same seed gives the same noise on any device, and each image its own.
    return [torch.Generator("cpu").manual_seed(seed) for job in jobs for seed in job.params.seeds]


def _upload_warning(index: int, seed: int, encoded: EncodedImage, limit: int) -> str:
    image, size, limit_text = f"image {index + 1} (seed {seed})", _file_size(len(encoded.data)), _file_size(limit)
    if len(encoded.data) > limit:
        return f"{image} is {size} even as {encoded.description}, over the {limit_text} upload limit"
    return f"{image} is over the {limit_text} upload limit as a PNG, so it is sent as {encoded.description} ({size})"


def _file_size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.1f} kB"


def _set_vae_tiling(vae: Any, pixels: int) -> None:
    if pixels > VAE_TILING_PIXELS:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


def _sampler(pipe: Any) -> dict[str, str]:
    """The scheduler's A1111 sampler name, for the PNG `parameters` text."""
    return {"sampler": a1111_sampler(type(pipe.scheduler).__name__, pipe.scheduler.config)}


def _first_frame(params: GenerationParams) -> Image.Image:
    """A caption job's picture: its (first) frame in RGB."""
    with Image.open(BytesIO(params.source_image or b""), formats=SOURCE_FORMATS) as opened:
        return opened.convert("RGB")

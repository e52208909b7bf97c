"""FLUX through the real engine, on the tiny FLUX pipeline (transformer on packed latents, CLIP and
T5 encoders, flow matching) loaded by the production code: images, batches, seeds, the A1111 record,
what FLUX cannot take (weights, negative prompts, guidance on schnell, tiling) told on the result,
live previews from its packed latents, and every button on a FLUX result."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from generation import edit_geometry
from generation.engine.diffusion import DiffusionEngine
from generation.engine.png_metadata import parse_parameters
from generation.engine.tiny_models import TinyModelPaths, make_flux
from generation.flux_limits import NO_GUIDANCE, NO_NEGATIVE, NO_TILE, NO_WEIGHTS
from generation.requests import EditSource, RequestLimits, inpaint_region, pan, zoom_out
from sdbot.types import GeneratedImage, GenerationParams, JobOutput, PipelineKind
from tests.fakes.params import ignore_steps, never, text2img
from tests.generation.engine.test_edit import pixels

# Not square, to catch a swapped width and height in the packing of FLUX's latents.
WIDTH, HEIGHT = 64, 48


@pytest.fixture(scope="module")
def flux_engine(tiny_models: TinyModelPaths) -> DiffusionEngine:
    """The tiny FLUX model as the bot's model, its 16-channel TAESD for previews due at every step."""
    return DiffusionEngine.load(tiny_models.engine_config(
        model_id=str(tiny_models.flux), preview_decoder_id=str(tiny_models.flux_preview_decoder),
        preview_interval_s=1e-9,
    ))


def imagine(prompt: str = "a harbour at dawn", seeds: tuple[int, ...] = (3,), **fields: object) -> GenerationParams:
    return text2img(prompt, seeds, **({"width": WIDTH, "height": HEIGHT} | fields))


def run(engine: DiffusionEngine, *batch: GenerationParams) -> list[JobOutput]:
    return engine.run_batch(list(batch), ignore_steps, never)


@pytest.fixture(scope="module")
def source(flux_engine: DiffusionEngine) -> GeneratedImage:
    return run(flux_engine, imagine())[0].images[0]


def test_a_batch_of_jobs_gives_each_its_images_at_the_size_asked_with_an_a1111_record(
    flux_engine: DiffusionEngine, tiny_models: TinyModelPaths
) -> None:
    fox, harbour = run(flux_engine, imagine("a red fox", seeds=(1, 2)), imagine("a harbour", seeds=(7,)))

    assert (fox.warnings, harbour.warnings) == ([], [])
    images = [*fox.images, *harbour.images]
    assert [image.seed for image in images] == [1, 2, 7]
    for image in images:
        assert (image.width, image.height) == (WIDTH, HEIGHT)
        assert Image.open(BytesIO(image.data or b"")).size == (WIDTH, HEIGHT)
        assert image.record.scheduler == "FlowMatchEulerDiscreteScheduler"
        assert image.record.model_id == str(tiny_models.flux)
    first, second, third = (pixels(image.data) for image in images)
    assert np.abs(first - second).mean() > 1 and np.abs(first - third).mean() > 1
    parameters = parse_parameters(Image.open(BytesIO(fox.images[0].data or b"")).text["parameters"])
    assert parameters["prompt"] == "a red fox"
    assert (parameters["sampler"], parameters["seed"], parameters["size"]) == ("Euler", 1, f"{WIDTH}x{HEIGHT}")


def test_a_seed_reproduces_its_image_alone_or_in_a_batch(flux_engine: DiffusionEngine) -> None:
    batched = run(flux_engine, imagine(seeds=(11, 12)))[0].images[1]
    alone = run(flux_engine, imagine(seeds=(12,)))[0].images[0]
    again = run(flux_engine, imagine(seeds=(12,)))[0].images[0]

    assert np.array_equal(pixels(alone.data), pixels(again.data))
    assert np.abs(pixels(alone.data) - pixels(batched.data)).max() <= 2


def test_weights_and_break_are_read_as_their_plain_words_and_the_member_is_told(flux_engine: DiffusionEngine) -> None:
    weighted, plain = run(
        flux_engine, imagine("a (red:1.3) [small] fox BREAK snow", seeds=(4,)), imagine("a red small fox, snow", seeds=(4,))
    )

    assert weighted.warnings == [NO_WEIGHTS] and plain.warnings == []
    assert weighted.images[0].record.prompt == "a (red:1.3) [small] fox BREAK snow"  # the record keeps what was typed
    # The same words reached T5 and CLIP: the same picture (batched rows may differ by rounding).
    assert np.abs(pixels(weighted.images[0].data) - pixels(plain.images[0].data)).max() <= 2


def test_a_negative_prompt_and_guidance_on_schnell_are_ignored_with_a_reason(flux_engine: DiffusionEngine) -> None:
    (asked,) = run(flux_engine, imagine(negative_prompt="blurry, text", guidance=5.0))
    (plain,) = run(flux_engine, imagine(guidance=5.0))

    assert asked.warnings == [NO_NEGATIVE, NO_GUIDANCE]
    assert np.array_equal(pixels(asked.images[0].data), pixels(plain.images[0].data))
    assert asked.images[0].record.negative_prompt == "blurry, text"
    # At guidance 0 (schnell's) the negative prompt alone is told, without SD's advice to raise guidance.
    assert run(flux_engine, imagine(negative_prompt="blurry"))[0].warnings == [NO_NEGATIVE]


def test_guidance_steers_a_model_with_a_guidance_input_like_flux_dev(
    tiny_models: TinyModelPaths, tmp_path_factory: pytest.TempPathFactory
) -> None:
    dev = tmp_path_factory.mktemp("flux-dev") / "pipeline"
    make_flux(dev, guided=True)
    engine = DiffusionEngine.load(tiny_models.engine_config(model_id=str(dev), previews=False))
    (low,), (high,) = run(engine, imagine(guidance=1.5)), run(engine, imagine(guidance=3.5))

    assert low.warnings == high.warnings == []
    assert np.abs(pixels(low.images[0].data) - pixels(high.images[0].data)).mean() > 0.5


def test_tiling_is_left_off_with_a_reason(flux_engine: DiffusionEngine, source: GeneratedImage) -> None:
    (output,) = run(flux_engine, imagine(tile=True))

    assert output.warnings == [NO_TILE]
    assert "tile" not in output.images[0].record.extra
    assert np.array_equal(pixels(output.images[0].data), pixels(source.data))


def test_live_previews_decode_the_packed_latents_at_the_image_size(flux_engine: DiffusionEngine) -> None:
    previews: list[bytes | None] = []
    (output,) = flux_engine.run_batch(
        [imagine(steps=3)], ignore_steps, never, lambda step, total, made: previews.extend(made)
    )

    assert output.images[0].data and len(previews) == 2  # every step but the last
    for preview in previews:
        assert preview is not None and Image.open(BytesIO(preview)).size == (WIDTH, HEIGHT)


def test_variations_keep_the_size_and_change_the_pixels(flux_engine: DiffusionEngine, source: GeneratedImage) -> None:
    params = imagine(pipeline=PipelineKind.IMG2IMG, source_image=source.data, strength=0.6, steps=4, seeds=(5,))
    (output,) = run(flux_engine, params)

    assert output.warnings == []
    image = output.images[0]
    assert (image.width, image.height) == (WIDTH, HEIGHT) and image.record.pipeline is PipelineKind.IMG2IMG
    assert np.abs(pixels(image.data) - pixels(source.data)).mean() > 1


def test_zoom_out_pan_and_vary_region_keep_the_pixels_outside_their_mask(
    flux_engine: DiffusionEngine, source: GeneratedImage
) -> None:
    base, limits = EditSource(width=WIDTH, height=HEIGHT, prompt="a harbour"), RequestLimits(max_size=256)
    for params in (zoom_out(limits, base, "2x"), pan(limits, base, "right"), inpaint_region(limits, base, "center")):
        assert params.edit is not None
        canvas = edit_geometry.canvas_of(Image.open(BytesIO(source.data or b"")), params.edit, params.width, params.height)
        kept = np.asarray(canvas, dtype=np.int16)
        outside = np.asarray(edit_geometry.mask_of(params.edit, params.width, params.height)) == 0
        (output,) = run(flux_engine, params.model_copy(update={"source_image": source.data, "steps": 2, "seeds": (1,)}))
        image = pixels(output.images[0].data)
        assert output.warnings == []
        assert image.shape == (params.height, params.width, 3)
        assert np.abs(image - kept)[outside].max() <= 2
        assert np.abs(image - kept)[~outside].mean() > 1


def test_an_upscale_of_a_flux_result_doubles_its_size(flux_engine: DiffusionEngine, source: GeneratedImage) -> None:
    # The latent upscaler needs sides in multiples of 64.
    square = run(flux_engine, imagine(width=64, height=64))[0].images[0]
    params = imagine(pipeline=PipelineKind.UPSCALE, source_image=square.data, width=64, height=64, steps=2)
    (output,) = run(flux_engine, params)

    assert (output.images[0].width, output.images[0].height) == (128, 128)


def test_a_catalogue_model_brings_its_own_preview_decoder(tiny_models: TinyModelPaths) -> None:
    # SDBOT_PREVIEW_DECODER_ID names SD's 4-channel decoder, which cannot read FLUX's latents; the
    # tiny-flux entry of the models file names its 16-channel one, so FLUX jobs get previews too.
    engine = DiffusionEngine.load(
        tiny_models.engine_config(models_file=tiny_models.models_file, preview_interval_s=1e-9)
    )
    previews: list[bytes | None] = []
    engine.run_batch(
        [imagine(steps=3, model="tiny-flux")], ignore_steps, never, lambda step, total, made: previews.extend(made)
    )
    assert len(previews) == 2 and all(previews)

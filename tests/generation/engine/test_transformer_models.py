"""SD3 and FLUX through the real engine, on the tiny pipelines (a transformer on 16-channel latents,
FLUX's packed, read with CLIP and T5, flow matching) loaded by the production code: images,
batches, seeds, the A1111 record, what they cannot take (weights, tiling; FLUX also negative
prompts, and guidance on schnell) told on the result, SD3's real classifier-free guidance, live
previews through a 16-channel TAESD, and every button on their results."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from generation import edit_geometry
from generation.engine.diffusion import DiffusionEngine
from generation.engine.pipelines import preview_decoder_id
from generation.engine.png_metadata import parse_parameters
from generation.engine.tiny_models import TinyModelPaths, make_flux
from generation.family_limits import NO_GUIDANCE, no_negative, no_tile, no_weights
from generation.requests import EditSource, RequestLimits, inpaint_region, pan, zoom_out
from sdbot.types import GeneratedImage, GenerationParams, JobOutput, PipelineKind
from tests.fakes.params import ignore_steps, never, text2img
from tests.generation.engine.test_edit import pixels

# Not square, to catch a swapped width and height (in the packing of FLUX's latents, for one).
WIDTH, HEIGHT = 64, 48
# Each family at its usual guidance: FLUX.1-schnell reads none, SD3 wants CFG (4-7).
GUIDANCE = {"flux": 0.0, "sd3": 4.0}
NO_CFG = "the negative prompt has no effect at a guidance (CFG scale) of 1 or less"


@pytest.fixture(scope="module", params=["flux", "sd3"])
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def engine(family: str, tiny_models: TinyModelPaths) -> DiffusionEngine:
    """The family's tiny model as the bot's model, its 16-channel TAESD for previews due at every step."""
    model, decoder = {"flux": (tiny_models.flux, tiny_models.flux_preview_decoder),
                      "sd3": (tiny_models.sd3, tiny_models.sd3_preview_decoder)}[family]
    return DiffusionEngine.load(tiny_models.engine_config(
        model_id=str(model), preview_decoder_id=str(decoder), preview_interval_s=1e-9,
    ))


def imagine(family: str, prompt: str = "a harbour at dawn", seeds: tuple[int, ...] = (3,),
            **fields: object) -> GenerationParams:
    return text2img(prompt, seeds, **({"width": WIDTH, "height": HEIGHT, "guidance": GUIDANCE[family]} | fields))


def run(engine: DiffusionEngine, *batch: GenerationParams) -> list[JobOutput]:
    return engine.run_batch(list(batch), ignore_steps, never)


def difference(first: GeneratedImage, second: GeneratedImage) -> float:
    return float(np.abs(pixels(first.data) - pixels(second.data)).mean())


@pytest.fixture(scope="module")
def source(engine: DiffusionEngine, family: str) -> GeneratedImage:
    return run(engine, imagine(family))[0].images[0]


def test_a_batch_of_jobs_gives_each_its_images_at_the_size_asked_with_an_a1111_record(
    engine: DiffusionEngine, family: str
) -> None:
    fox, harbour = run(engine, imagine(family, "a red fox", seeds=(1, 2)), imagine(family, "a harbour", seeds=(7,)))

    assert (fox.warnings, harbour.warnings) == ([], [])
    images = [*fox.images, *harbour.images]
    assert [image.seed for image in images] == [1, 2, 7]
    for image in images:
        assert (image.width, image.height) == (WIDTH, HEIGHT)
        assert Image.open(BytesIO(image.data or b"")).size == (WIDTH, HEIGHT)
        assert image.record.scheduler == "FlowMatchEulerDiscreteScheduler"
        assert image.record.model_id.endswith(f"pipeline-{family}")
    assert difference(images[0], images[1]) > 1 and difference(images[0], images[2]) > 1
    parameters = parse_parameters(Image.open(BytesIO(fox.images[0].data or b"")).text["parameters"])
    assert parameters["prompt"] == "a red fox"
    assert (parameters["sampler"], parameters["seed"], parameters["size"]) == ("Euler", 1, f"{WIDTH}x{HEIGHT}")
    assert float(parameters["cfg_scale"]) == GUIDANCE[family]


def test_a_seed_reproduces_its_image_alone_or_in_a_batch(engine: DiffusionEngine, family: str) -> None:
    batched = run(engine, imagine(family, seeds=(11, 12)))[0].images[1]
    alone = run(engine, imagine(family, seeds=(12,)))[0].images[0]
    again = run(engine, imagine(family, seeds=(12,)))[0].images[0]

    assert np.array_equal(pixels(alone.data), pixels(again.data))
    assert np.abs(pixels(alone.data) - pixels(batched.data)).max() <= 2


def test_weights_and_break_are_read_as_their_plain_words_and_the_member_is_told(
    engine: DiffusionEngine, family: str
) -> None:
    weighted, plain = run(
        engine, imagine(family, "a (red:1.3) [small] fox BREAK snow", seeds=(4,)),
        imagine(family, "a red small fox, snow", seeds=(4,)),
    )

    assert weighted.warnings == [no_weights(family)] and plain.warnings == []
    assert f"{family.upper()} models" in weighted.warnings[0]
    assert weighted.images[0].record.prompt == "a (red:1.3) [small] fox BREAK snow"  # the record keeps what was typed
    # The same words reached T5 and CLIP: the same picture (batched rows may differ by rounding).
    assert np.abs(pixels(weighted.images[0].data) - pixels(plain.images[0].data)).max() <= 2


def test_tiling_is_left_off_with_a_reason(engine: DiffusionEngine, family: str, source: GeneratedImage) -> None:
    (output,) = run(engine, imagine(family, tile=True))

    assert output.warnings == [no_tile(family)]
    assert "tile" not in output.images[0].record.extra
    assert np.array_equal(pixels(output.images[0].data), pixels(source.data))


def test_the_gpu_fast_path_keeps_the_pixels(engine: DiffusionEngine, family: str, source: GeneratedImage) -> None:
    # Fused QKV where the transformer allows it (not SD3.5 medium's dual attention) and channels_last,
    # as on CUDA; torch.compile is left to the GPU benchmark.
    fast = DiffusionEngine(engine.config.model_copy(update={"fast_path": "on", "previews": False}))
    (output,) = run(fast, imagine(family))

    assert np.abs(pixels(output.images[0].data) - pixels(source.data)).max() <= 2


def test_live_previews_decode_the_latents_at_the_image_size(engine: DiffusionEngine, family: str) -> None:
    previews: list[bytes | None] = []
    (output,) = engine.run_batch(
        [imagine(family, steps=3)], ignore_steps, never, lambda step, total, made: previews.extend(made)
    )

    assert output.images[0].data and len(previews) == 2  # every step but the last
    for preview in previews:
        assert preview is not None and Image.open(BytesIO(preview)).size == (WIDTH, HEIGHT)


def test_auto_previews_pick_the_familys_tiny_decoder_from_the_hub(engine: DiffusionEngine, family: str) -> None:
    chosen = preview_decoder_id(engine.config.model_copy(update={"preview_decoder_id": "auto"}), engine.text2img_pipeline)
    assert chosen == {"flux": "madebyollin/taef1", "sd3": "madebyollin/taesd3"}[family]


def test_a_catalogue_model_brings_its_own_preview_decoder(tiny_models: TinyModelPaths, family: str) -> None:
    # SDBOT_PREVIEW_DECODER_ID names SD's 4-channel decoder, which cannot read 16-channel latents;
    # the model's entry in the models file names its own, so its jobs get previews too.
    engine = DiffusionEngine.load(
        tiny_models.engine_config(models_file=tiny_models.models_file, preview_interval_s=1e-9)
    )
    previews: list[bytes | None] = []
    engine.run_batch(
        [imagine(family, steps=3, model=f"tiny-{family}")], ignore_steps, never,
        lambda step, total, made: previews.extend(made),
    )
    assert len(previews) == 2 and all(previews)


def test_variations_keep_the_size_and_change_the_pixels(
    engine: DiffusionEngine, family: str, source: GeneratedImage
) -> None:
    params = imagine(family, pipeline=PipelineKind.IMG2IMG, source_image=source.data, strength=0.6, steps=4, seeds=(5,))
    (output,) = run(engine, params)

    assert output.warnings == []
    image = output.images[0]
    assert (image.width, image.height) == (WIDTH, HEIGHT) and image.record.pipeline is PipelineKind.IMG2IMG
    assert difference(image, source) > 1


def test_zoom_out_pan_and_vary_region_keep_the_pixels_outside_their_mask(
    engine: DiffusionEngine, family: str, source: GeneratedImage
) -> None:
    base, limits = EditSource(width=WIDTH, height=HEIGHT, prompt="a harbour"), RequestLimits(max_size=256)
    for params in (zoom_out(limits, base, "2x"), pan(limits, base, "right"), inpaint_region(limits, base, "center")):
        assert params.edit is not None
        canvas = edit_geometry.canvas_of(Image.open(BytesIO(source.data or b"")), params.edit, params.width, params.height)
        kept = np.asarray(canvas, dtype=np.int16)
        outside = np.asarray(edit_geometry.mask_of(params.edit, params.width, params.height)) == 0
        update = {"source_image": source.data, "steps": 2, "seeds": (1,), "guidance": GUIDANCE[family]}
        (output,) = run(engine, params.model_copy(update=update))
        image = pixels(output.images[0].data)
        assert output.warnings == []
        assert output.images[0].record.model_id.endswith(f"pipeline-{family}")
        assert image.shape == (params.height, params.width, 3)
        assert np.abs(image - kept)[outside].max() <= 2
        assert np.abs(image - kept)[~outside].mean() > 1


def test_an_upscale_doubles_the_size(engine: DiffusionEngine, family: str) -> None:
    # The latent upscaler needs sides in multiples of 64.
    square = run(engine, imagine(family, width=64, height=64))[0].images[0]
    params = imagine(family, pipeline=PipelineKind.UPSCALE, source_image=square.data, width=64, height=64, steps=2)
    (output,) = run(engine, params)

    assert (output.images[0].width, output.images[0].height) == (128, 128)


@pytest.mark.parametrize("family", ["sd3"], indirect=True)
def test_sd3_guidance_and_a_negative_prompt_steer_the_image(
    engine: DiffusionEngine, family: str, source: GeneratedImage
) -> None:
    (negative,) = run(engine, imagine(family, negative_prompt="blurry, text"))
    (weaker,) = run(engine, imagine(family, guidance=1.5))

    assert negative.warnings == weaker.warnings == []
    assert negative.images[0].record.negative_prompt == "blurry, text"
    assert difference(negative.images[0], source) > 0.5  # the same seed and prompt, another negative
    assert difference(weaker.images[0], source) > 0.5
    # A weighted negative prompt is read as its plain words too.
    (weighted,) = run(engine, imagine(family, negative_prompt="((blurry)), [text]"))
    assert weighted.warnings == [no_weights(family)]
    assert np.array_equal(pixels(weighted.images[0].data), pixels(negative.images[0].data))
    # Without CFG (guidance 1 or less) SD3 reads no negative prompt, and says so, as SD does.
    (unguided,), (plain,) = run(engine, imagine(family, guidance=1.0, negative_prompt="blurry")), run(
        engine, imagine(family, guidance=1.0))
    assert unguided.warnings == [NO_CFG]
    assert np.array_equal(pixels(unguided.images[0].data), pixels(plain.images[0].data))


@pytest.mark.parametrize("family", ["flux"], indirect=True)
def test_on_flux_schnell_a_negative_prompt_and_guidance_are_ignored_with_a_reason(
    engine: DiffusionEngine, family: str
) -> None:
    (asked,) = run(engine, imagine(family, negative_prompt="blurry, text", guidance=5.0))
    (plain,) = run(engine, imagine(family, guidance=5.0))

    assert asked.warnings == [no_negative("flux"), NO_GUIDANCE]
    assert np.array_equal(pixels(asked.images[0].data), pixels(plain.images[0].data))
    assert asked.images[0].record.negative_prompt == "blurry, text"
    # At guidance 0 (schnell's) the negative prompt alone is told, without SD's advice to raise guidance.
    assert run(engine, imagine(family, negative_prompt="blurry"))[0].warnings == [no_negative("flux")]


def test_guidance_steers_a_model_with_a_guidance_input_like_flux_dev(
    tiny_models: TinyModelPaths, tmp_path_factory: pytest.TempPathFactory
) -> None:
    dev = tmp_path_factory.mktemp("flux-dev") / "pipeline"
    make_flux(dev, guided=True)
    engine = DiffusionEngine.load(tiny_models.engine_config(model_id=str(dev), previews=False))
    (low,), (high,) = run(engine, imagine("flux", guidance=1.5)), run(engine, imagine("flux", guidance=3.5))

    assert low.warnings == high.warnings == []
    assert difference(low.images[0], high.images[0]) > 0.5

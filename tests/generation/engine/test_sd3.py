"""SD3 through the real engine, on the tiny SD3 pipeline (MMDiT on 16-channel latents, two CLIP
encoders and T5, flow matching) loaded by the production code: images, batches, seeds, the A1111
record, real classifier-free guidance with a negative prompt, what SD3 cannot take (weights,
tiling) told on the result, live previews through a 16-channel TAESD, and every button on an SD3
result."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from generation import edit_geometry
from generation.engine.diffusion import DiffusionEngine
from generation.engine.png_metadata import parse_parameters
from generation.engine.tiny_models import TinyModelPaths
from generation.family_limits import no_tile, no_weights
from generation.requests import EditSource, RequestLimits, inpaint_region, pan, zoom_out
from sdbot.types import GeneratedImage, GenerationParams, JobOutput, PipelineKind
from tests.fakes.params import ignore_steps, never, text2img
from tests.generation.engine.test_edit import pixels

# Not square, to catch a swapped width and height; SD3 sides are multiples of its patch (here 4 px).
WIDTH, HEIGHT = 64, 48
GUIDANCE = 4.0  # SD3's usual CFG scale is 4-7


@pytest.fixture(scope="module")
def sd3_engine(tiny_models: TinyModelPaths) -> DiffusionEngine:
    """The tiny SD3 model as the bot's model, its 16-channel TAESD for previews due at every step."""
    return DiffusionEngine.load(tiny_models.engine_config(
        model_id=str(tiny_models.sd3), preview_decoder_id=str(tiny_models.sd3_preview_decoder),
        preview_interval_s=1e-9,
    ))


def imagine(prompt: str = "a harbour at dawn", seeds: tuple[int, ...] = (3,), **fields: object) -> GenerationParams:
    return text2img(prompt, seeds, **({"width": WIDTH, "height": HEIGHT, "guidance": GUIDANCE} | fields))


def run(engine: DiffusionEngine, *batch: GenerationParams) -> list[JobOutput]:
    return engine.run_batch(list(batch), ignore_steps, never)


def difference(first: GeneratedImage, second: GeneratedImage) -> float:
    return float(np.abs(pixels(first.data) - pixels(second.data)).mean())


@pytest.fixture(scope="module")
def source(sd3_engine: DiffusionEngine) -> GeneratedImage:
    return run(sd3_engine, imagine())[0].images[0]


def test_a_batch_of_jobs_gives_each_its_images_at_the_size_asked_with_an_a1111_record(
    sd3_engine: DiffusionEngine, tiny_models: TinyModelPaths
) -> None:
    fox, harbour = run(sd3_engine, imagine("a red fox", seeds=(1, 2)), imagine("a harbour", seeds=(7,)))

    assert (fox.warnings, harbour.warnings) == ([], [])
    images = [*fox.images, *harbour.images]
    assert [image.seed for image in images] == [1, 2, 7]
    for image in images:
        assert (image.width, image.height) == (WIDTH, HEIGHT)
        assert Image.open(BytesIO(image.data or b"")).size == (WIDTH, HEIGHT)
        assert image.record.scheduler == "FlowMatchEulerDiscreteScheduler"
        assert image.record.model_id == str(tiny_models.sd3)
    assert difference(images[0], images[1]) > 1 and difference(images[0], images[2]) > 1
    parameters = parse_parameters(Image.open(BytesIO(fox.images[0].data or b"")).text["parameters"])
    assert parameters["prompt"] == "a red fox"
    assert (parameters["sampler"], parameters["seed"], parameters["size"]) == ("Euler", 1, f"{WIDTH}x{HEIGHT}")
    assert float(parameters["cfg_scale"]) == GUIDANCE


def test_a_seed_reproduces_its_image_alone_or_in_a_batch(sd3_engine: DiffusionEngine) -> None:
    batched = run(sd3_engine, imagine(seeds=(11, 12)))[0].images[1]
    alone = run(sd3_engine, imagine(seeds=(12,)))[0].images[0]
    again = run(sd3_engine, imagine(seeds=(12,)))[0].images[0]

    assert np.array_equal(pixels(alone.data), pixels(again.data))
    assert np.abs(pixels(alone.data) - pixels(batched.data)).max() <= 2


def test_guidance_and_a_negative_prompt_steer_the_image(sd3_engine: DiffusionEngine, source: GeneratedImage) -> None:
    (negative,) = run(sd3_engine, imagine(negative_prompt="blurry, text"))
    (weaker,) = run(sd3_engine, imagine(guidance=1.5))

    assert negative.warnings == weaker.warnings == []
    assert negative.images[0].record.negative_prompt == "blurry, text"
    assert difference(negative.images[0], source) > 0.5  # the same seed and prompt, another negative
    assert difference(weaker.images[0], source) > 0.5
    # Without CFG (guidance 1 or less) SD3 reads no negative prompt, and says so, as on SD.
    (unguided,) = run(sd3_engine, imagine(guidance=1.0, negative_prompt="blurry"))
    (plain,) = run(sd3_engine, imagine(guidance=1.0))
    assert unguided.warnings == ["the negative prompt has no effect at a guidance (CFG scale) of 1 or less"]
    assert np.array_equal(pixels(unguided.images[0].data), pixels(plain.images[0].data))


def test_weights_and_break_are_read_as_their_plain_words_and_the_member_is_told(sd3_engine: DiffusionEngine) -> None:
    weighted, plain = run(
        sd3_engine,
        imagine("a (red:1.3) [small] fox BREAK snow", seeds=(4,), negative_prompt="((blurry))"),
        imagine("a red small fox, snow", seeds=(4,), negative_prompt="blurry"),
    )

    assert weighted.warnings == [no_weights("sd3")] and plain.warnings == []
    assert "SD3 models" in weighted.warnings[0]
    assert weighted.images[0].record.prompt == "a (red:1.3) [small] fox BREAK snow"  # the record keeps what was typed
    # The same words reached CLIP and T5: the same picture (batched rows may differ by rounding).
    assert np.abs(pixels(weighted.images[0].data) - pixels(plain.images[0].data)).max() <= 2


def test_tiling_is_left_off_with_a_reason(sd3_engine: DiffusionEngine, source: GeneratedImage) -> None:
    (output,) = run(sd3_engine, imagine(tile=True))

    assert output.warnings == [no_tile("sd3")]
    assert "tile" not in output.images[0].record.extra
    assert np.array_equal(pixels(output.images[0].data), pixels(source.data))


def test_live_previews_decode_the_16_channel_latents_at_the_image_size(sd3_engine: DiffusionEngine) -> None:
    previews: list[bytes | None] = []
    (output,) = sd3_engine.run_batch(
        [imagine(steps=3)], ignore_steps, never, lambda step, total, made: previews.extend(made)
    )

    assert output.images[0].data and len(previews) == 2  # every step but the last
    for preview in previews:
        assert preview is not None and Image.open(BytesIO(preview)).size == (WIDTH, HEIGHT)


def test_variations_keep_the_size_and_change_the_pixels(sd3_engine: DiffusionEngine, source: GeneratedImage) -> None:
    params = imagine(pipeline=PipelineKind.IMG2IMG, source_image=source.data, strength=0.6, steps=4, seeds=(5,))
    (output,) = run(sd3_engine, params)

    assert output.warnings == []
    image = output.images[0]
    assert (image.width, image.height) == (WIDTH, HEIGHT) and image.record.pipeline is PipelineKind.IMG2IMG
    assert difference(image, source) > 1


def test_zoom_out_pan_and_vary_region_keep_the_pixels_outside_their_mask(
    sd3_engine: DiffusionEngine, source: GeneratedImage
) -> None:
    base, limits = EditSource(width=WIDTH, height=HEIGHT, prompt="a harbour"), RequestLimits(max_size=256)
    for params in (zoom_out(limits, base, "2x"), pan(limits, base, "right"), inpaint_region(limits, base, "center")):
        assert params.edit is not None
        canvas = edit_geometry.canvas_of(Image.open(BytesIO(source.data or b"")), params.edit, params.width, params.height)
        kept = np.asarray(canvas, dtype=np.int16)
        outside = np.asarray(edit_geometry.mask_of(params.edit, params.width, params.height)) == 0
        update = {"source_image": source.data, "steps": 2, "seeds": (1,), "guidance": GUIDANCE}
        (output,) = run(sd3_engine, params.model_copy(update=update))
        image = pixels(output.images[0].data)
        assert output.warnings == []
        assert output.images[0].record.scheduler == "FlowMatchEulerDiscreteScheduler"
        assert image.shape == (params.height, params.width, 3)
        assert np.abs(image - kept)[outside].max() <= 2
        assert np.abs(image - kept)[~outside].mean() > 1


def test_an_upscale_of_an_sd3_result_doubles_its_size(sd3_engine: DiffusionEngine) -> None:
    # The latent upscaler needs sides in multiples of 64.
    square = run(sd3_engine, imagine(width=64, height=64))[0].images[0]
    params = imagine(pipeline=PipelineKind.UPSCALE, source_image=square.data, width=64, height=64, steps=2)
    (output,) = run(sd3_engine, params)

    assert (output.images[0].width, output.images[0].height) == (128, 128)

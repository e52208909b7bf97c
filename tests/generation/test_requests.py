"""The one place requests are built and checked: what is refused, with the message the member sees."""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from generation import requests
from generation.engine.diffusion import DiffusionEngine
from generation.errors import BlockedPrompt, InvalidRequest
from generation.family_limits import no_negative, no_tile, no_weights
from generation.png_info import MadeWith
from generation.requests import RequestLimits
from generation.styles import load_styles
from sdbot.types import GenerationParams, PipelineKind
from tests.fakes.params import never, text2img


def png(width: int, height: int) -> bytes:
    buffer = BytesIO()
    Image.new("RGB", (width, height), "teal").save(buffer, "PNG")
    return buffer.getvalue()


def variation(**fields: object) -> GenerationParams:
    values: dict[str, object] = {"pipeline": PipelineKind.IMG2IMG, "strength": 0.6, "source_image": png(64, 64)}
    return text2img(**(values | fields))


def upscale(**fields: object) -> GenerationParams:
    values: dict[str, object] = {"pipeline": PipelineKind.UPSCALE, "source_image": png(64, 64)}
    return text2img(**(values | fields))


LIMITS = RequestLimits(min_size=64, max_size=1024, max_steps=50, max_count=4, max_prompt_chars=1000)

BAD_REQUESTS = [
    (text2img(width=100), "width and height must be multiples of 8 (got 100x64)"),
    (text2img(height=2048), "width and height must be between 64 and 1024 pixels (got 64x2048)"),
    (text2img(steps=0), "steps must be between 1 and 50 (got 0)"),
    (text2img(steps=51), "steps must be between 1 and 50 (got 51)"),
    (text2img(guidance=-1.0), "guidance must be between 0 and 30 (got -1)"),
    (text2img(seeds=(2**32,)), "seed must be between 0 and 4294967295 (got 4294967296)"),
    (text2img(seeds=(-1,)), "seed must be between 0 and 4294967295 (got -1)"),
    (text2img(seeds=(1, 2, 3, 4, 5)), "at most 4 images per request (got 5)"),
    (text2img("   "), "the prompt is empty: describe the image you want"),
    (text2img("x" * 2000), "the prompt is 2000 characters long; the limit is 1000"),
    (text2img(negative_prompt="x" * 1001), "the negative prompt is 1001 characters long; the limit is 1000"),
    (variation(strength=0.05), "strength must be between 0.1 and 1.0 for a variation (got 0.05)"),
    (variation(strength=1.5), "strength must be between 0.1 and 1.0 for a variation (got 1.5)"),
    (variation(strength=None), "strength must be between 0.1 and 1.0 for a variation (got None)"),
    (variation(source_image=b"not an image"), "the source image could not be read as a PNG, JPEG or WebP file"),
    (upscale(source_image=png(1100, 64)), "the source image is 1100x64; only images up to 1024x1024 can be upscaled"),
]


@pytest.mark.parametrize(("params", "message"), BAD_REQUESTS, ids=[message[:40] for _, message in BAD_REQUESTS])
def test_bad_requests_are_refused_with_a_clear_message(params: GenerationParams, message: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        requests.validate(params, LIMITS)
    assert str(refused.value).startswith(message)


def test_a_good_request_passes() -> None:
    requests.validate(text2img(), LIMITS)
    requests.validate(variation(), LIMITS)
    requests.validate(upscale(), LIMITS)


def test_the_engine_refuses_a_variation_without_its_picture_before_any_step(tiny_engine: DiffusionEngine) -> None:
    steps: list[int] = []
    with pytest.raises(InvalidRequest, match="needs a source image"):
        tiny_engine.run_batch([text2img(), variation(source_image=None)], lambda step, total: steps.append(step), never)
    assert steps == []


def test_huge_source_images_are_refused_before_decoding() -> None:
    limits = RequestLimits(max_upload_pixels=64 * 64)
    with pytest.raises(InvalidRequest, match=r"the source image is 128x128; images over 4,096 pixels are refused"):
        requests.validate(variation(source_image=png(128, 128)), limits)


def test_blocked_words_are_refused_in_prompts_only() -> None:
    limits = RequestLimits(blocked_words=("gore", "bad word"))
    with pytest.raises(BlockedPrompt, match="'bad word'"):
        requests.validate(text2img("A BAD, word! in a field"), limits)
    requests.validate(text2img("a classic gorilla", negative_prompt="gore"), limits)


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("  a  cat\n\tin a hat ", "a cat in a hat"),
        ("a\u200bcat", "acat"),  # zero-width space
        ("\ufeff\u200d\u2060", ""),  # nothing visible: empty
        ("\uff41 cat", "a cat"),  # full-width letters fold to ASCII
    ],
)
def test_text_is_normalised_before_it_is_checked(typed: str, meant: str) -> None:
    assert requests.normalise_text(typed) == meant


def test_an_invisible_prompt_is_empty() -> None:
    (params,) = requests.imagine(LIMITS, prompt="\u200b\u200b \u2060", native_size=64).jobs
    with pytest.raises(InvalidRequest, match="the prompt is empty"):
        requests.validate(params, LIMITS)


def test_seeds_follow_the_first_or_are_random() -> None:
    assert requests.seeds(3, 4294967294) == (4294967294, 4294967295, 0)
    random = requests.seeds(4)
    assert len(set(random)) == 4 and all(0 <= seed < 2**32 for seed in random)


@pytest.mark.parametrize(("aspect", "size"), [("1:1", (512, 512)), ("16:9", (704, 384)), ("2:3", (448, 640))])
def test_aspect_sizes_keep_the_native_pixel_count_in_multiples_of_64(aspect: str, size: tuple[int, int]) -> None:
    width, height = requests.size_for(aspect, 512, LIMITS)
    assert (width, height) == size and width % 64 == height % 64 == 0


def test_an_unknown_aspect_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="`5:4` is not an aspect ratio I know"):
        requests.size_for("5:4", 512, LIMITS)


def test_imagine_uses_the_operators_defaults() -> None:
    limits = RequestLimits(default_steps=7, default_guidance=3.5, max_count=2)
    (params,) = requests.imagine(limits, prompt=" a  fox ", seed=10, native_size=64).jobs
    assert (params.prompt, params.seeds, params.steps, params.guidance) == ("a fox", (10, 11), 7, 3.5)


def test_imagine_on_a_flux_model_notes_what_flux_leaves_out_before_queueing() -> None:
    flux = RequestLimits(family="flux")
    told = requests.imagine(flux, prompt="a {(red:1.2), blue} fox --no blur --tile", native_size=64)
    assert len(told.jobs) == 2 and told.jobs[0].negative_prompt == "blur"
    assert told.notes == (no_weights("flux"), no_negative("flux"), no_tile("flux"))  # each once
    assert requests.imagine(flux, prompt="a red fox", native_size=64).notes == ()
    # CLIP families read weights and negatives: nothing to say.
    assert requests.imagine(RequestLimits(family="sdxl"), prompt="a (red:1.2) fox --no blur", native_size=64).notes == ()


def test_imagine_on_an_sd3_model_notes_weights_and_tiling_but_keeps_the_negative_prompt() -> None:
    sd3 = RequestLimits(family="sd3", default_guidance=4.0)
    told = requests.imagine(sd3, prompt="a (red:1.2) fox --no blur --tile", native_size=64)
    assert told.notes == (no_weights("sd3"), no_tile("sd3"))
    assert "SD3 models" in told.notes[0] and told.jobs[0].negative_prompt == "blur"
    # SD3 reads the negative prompt with real CFG, so weights there are dropped too, and said.
    assert requests.imagine(sd3, prompt="a fox", negative="(blur:1.5)", native_size=64).notes == (no_weights("sd3"),)
    assert requests.imagine(sd3, prompt="a fox", negative="blur", native_size=64).notes == ()


def test_upscale_sizes_go_down_to_multiples_of_64() -> None:
    params = requests.upscale(200, 130)
    assert (params.width, params.height, params.pipeline) == (192, 128, PipelineKind.UPSCALE)


@pytest.mark.parametrize("seed", [-2, 2**32, 2**70])
def test_seeds_outside_the_32_bit_range_are_refused_not_wrapped(seed: int) -> None:
    with pytest.raises(InvalidRequest, match=rf"seed must be between 0 and 4294967295, or -1 .*\(got {seed}\)"):
        requests.imagine(LIMITS, prompt="a cat", seed=seed, native_size=64)


def test_seed_minus_one_is_random_as_in_a1111() -> None:
    drawn = {requests.imagine(LIMITS, prompt="a cat --repeat 2", seed=-1, count=1, native_size=64).jobs[1].seeds[0]
             for _ in range(5)}
    assert len(drawn) > 1 and all(0 <= seed <= 4294967295 for seed in drawn)


# The prompt language: inline flags, permutations, styles, weights and the token cap


def test_inline_flags_are_taken_out_of_the_prompt_and_applied() -> None:
    typed = "a castle at dusk --ar 16:9 --no text, people --seed 42 --steps 3 --tile"
    imagined = requests.imagine(LIMITS, prompt=typed, native_size=512, count=2)
    (params,) = imagined.jobs
    assert params.prompt == "a castle at dusk" and params.negative_prompt == "text, people"
    assert (params.width, params.height, params.seeds, params.steps, params.tile) == (704, 384, (42, 43), 3, True)
    assert params.typed_prompt == typed and imagined.notes == ()


def test_variations_read_seed_steps_and_no_from_their_prompt() -> None:
    limits = LIMITS
    params = requests.variation(limits, prompt="a red barn --seed 42 --steps 6 --no fog, rain", negative="blurry",
                                width=64, height=64, steps=2, count=2)
    assert (params.prompt, params.seeds, params.steps) == ("a red barn", (42, 43), 6)
    assert params.negative_prompt == "blurry, fog, rain"
    plain = requests.variation(limits, prompt="a red barn", negative="", width=64, height=64, steps=2)
    assert plain.steps == 2 and plain.prompt == "a red barn"  # without flags: the job's own steps
    with pytest.raises(InvalidRequest, match="--ar cannot be used for variations"):
        requests.variation(limits, prompt="a red barn --ar 16:9", negative="", width=64, height=64)
    with pytest.raises(InvalidRequest, match="--sed is not a flag"):
        requests.variation(limits, prompt="a red barn --sed 4", negative="", width=64, height=64)


def test_explicit_options_win_over_inline_flags_and_say_so() -> None:
    imagined = requests.imagine(
        LIMITS, prompt="a fox --seed 5 --steps 9 --ar 2:1 --no snow", native_size=512,
        seed=7, steps=2, aspect="1:1", negative="rain",
    )
    (params,) = imagined.jobs
    assert (params.seeds[0], params.steps, params.width, params.height) == (7, 2, 512, 512)
    assert params.negative_prompt == "rain, snow"  # --no adds to the negative option
    assert imagined.notes == (
        "the `seed` option was used instead of `--seed 5` in the prompt",
        "the `steps` option was used instead of `--steps 9` in the prompt",
        "the `aspect` option was used instead of `--ar 2:1` in the prompt",
    )


@pytest.mark.parametrize(
    ("ratio", "native", "size"),
    [("16:9", 512, (704, 384)), ("4:1", 512, (1024, 256)), ("9:16", 512, (384, 704)), ("16:9", 64, (128, 64))],
)
def test_inline_aspect_keeps_the_pixel_count_and_a_wider_shape(ratio: str, native: int, size: tuple[int, int]) -> None:
    (params,) = requests.imagine(LIMITS, prompt=f"a road --ar {ratio}", native_size=native).jobs
    assert (params.width, params.height) == size
    requests.validate(params, LIMITS)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a road --ar 100:1", r"--ar 100:1 would need \d+x64 pixels; the longest side allowed is 1024"),
        ("a road --ar 16/9", "--ar needs a ratio of whole numbers like 16:9"),
        ("a road --quality 2", "--quality is not a flag this bot knows; the flags are --ar"),
        ("a road --repeat 50", r"this prompt makes 50 jobs \(1 prompt\(s\) x --repeat 50\); the limit is 4"),
        ("a {red, green, blue} road --repeat 2", "makes 6 jobs"),
        ("a {a, b, c, d, e} road", r"these \{...\} choices make 5 prompts; the limit is 4"),
        ("a {red, green road", "is never closed"),
    ],
)
def test_bad_prompt_language_is_refused_before_any_job(prompt: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        requests.imagine(LIMITS, prompt=prompt, native_size=512)


def test_permutations_and_repeats_make_one_job_each() -> None:
    imagined = requests.imagine(LIMITS, prompt="a {red, green} bird --repeat 2", native_size=64, seed=10, count=2)
    assert [job.prompt for job in imagined.jobs] == ["a red bird", "a green bird"] * 2
    # With a seed the combinations share seeds (to compare them); each repeat continues the sequence.
    assert [job.seeds for job in imagined.jobs] == [(10, 11), (10, 11), (12, 13), (12, 13)]
    assert {job.typed_prompt for job in imagined.jobs} == {"a {red, green} bird --repeat 2"}


def test_styles_are_applied_in_order_and_recorded() -> None:
    catalogue = load_styles(Path(__file__).parents[2] / "styles.example.csv")
    styles = requests.pick_styles(catalogue, "watercolor, MINIMALIST")
    assert [style.name for style in styles] == ["Watercolor", "Minimalist"]
    (params,) = requests.imagine(LIMITS, prompt="a fox --no snow", native_size=64, styles=styles).jobs
    assert params.prompt.startswith("minimalist composition of watercolor painting of a fox, loose")
    assert params.negative_prompt.startswith("snow, photo, 3d render")
    assert params.styles == ("Watercolor", "Minimalist") and params.typed_prompt == "a fox --no snow"


@pytest.mark.parametrize(
    ("typed", "message"),
    [("Oil painting, Nope", "there is no style called “Nope”"), ("Photo, Anime, Pixel art, Cinematic", "at most 3")],
)
def test_unknown_or_too_many_styles_are_refused(typed: str, message: str) -> None:
    catalogue = load_styles(Path(__file__).parents[2] / "styles.example.csv")
    with pytest.raises(InvalidRequest, match=message):
        requests.pick_styles(catalogue, typed)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (text2img("a (cat:12) on a mat"), "in the prompt, the weight 12 on “cat” is outside 0 to 10"),
        (text2img("a [cat:dog:0.5]"), "in the prompt, prompt editing like"),
        (text2img("a cat AND a dog"), "in the prompt, “AND” in capitals"),
        (text2img("a cat", negative_prompt="(ugly:-1)"), "in the negative prompt, the weight -1"),
        (text2img("a cat <lora:pixel-art:0.8>"), "in the prompt, there is no LoRA called “pixel-art”"),
    ],
)
def test_refused_weight_syntax_is_an_invalid_request(params: GenerationParams, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        requests.validate(params, LIMITS)


def test_the_token_cap_counts_with_the_models_tokenizer(tiny_engine: DiffusionEngine) -> None:
    count = tiny_engine.token_counter()
    limits = RequestLimits(max_prompt_tokens=100)
    requests.validate(text2img("a (castle:1.3) " * 10), limits, count)  # 70 tokens: letters, not brackets
    with pytest.raises(InvalidRequest, match="the prompt is 108 tokens long; the limit is 100"):
        requests.validate(text2img("castle " * 18), limits, count)


def test_describe_makes_a_caption_job_in_the_pictures_shape_that_charges_no_image() -> None:
    params = requests.describe(LIMITS, 512, 1600, 900)
    assert (params.pipeline, params.width, params.height, params.steps) == (PipelineKind.CAPTION, 704, 384, 1)
    assert params.charged_images == 0 and params.image_count == 1
    assert requests.describe(LIMITS, 512, 100, 100, more=True).steps == requests.DESCRIBE_SUGGESTIONS
    requests.validate(params.model_copy(update={"source_image": png(1600, 900)}), LIMITS)


def test_reuse_runs_the_pictures_settings_and_fits_a_size_outside_the_limits() -> None:
    made_with = MadeWith(generator="AUTOMATIC1111", prompt="a  castle", negative_prompt="ugly", seed=42, steps=20,
                         guidance=7.0, width=512, height=768)
    params = requests.reuse(LIMITS, made_with, 512)
    assert (params.prompt, params.negative_prompt, params.seeds, params.steps, params.guidance) == (
        "a castle", "ugly", (42,), 20, 7.0)
    assert (params.width, params.height) == (512, 768)
    huge = requests.reuse(LIMITS, made_with.model_copy(update={"width": 3000, "height": 2000}), 512)
    assert max(huge.width, huge.height) <= LIMITS.max_size and huge.width > huge.height
    with pytest.raises(InvalidRequest, match="no prompt to reuse"):
        requests.reuse(LIMITS, MadeWith(generator="x"), 512)


# Edits (issue 12): built from a posted image or an upload, refused before anything is queued.

EDIT_SOURCE = requests.EditSource(width=128, height=128, prompt="a harbour")


def test_edits_are_masked_img2img_jobs_of_four_images_on_their_canvas() -> None:
    zoom = requests.zoom_out(LIMITS, EDIT_SOURCE, "1.5x")
    assert (zoom.width, zoom.height, zoom.strength, zoom.image_count) == (128, 128, 1.0, 4)
    assert zoom.pipeline is PipelineKind.IMG2IMG and zoom.edit is not None and zoom.edit.label == "1.5x"
    pan = requests.pan(LIMITS, EDIT_SOURCE, "Up")
    assert (pan.width, pan.height) == (128, 192)
    region = requests.inpaint_region(LIMITS, EDIT_SOURCE, "right")
    assert region.edit is not None and region.edit.mask == (64, 0, 64, 128)
    for params in (zoom, pan, region):
        requests.validate(params.model_copy(update={"source_image": png(128, 128)}), LIMITS)
    assert zoom.batch_key != requests.variation(LIMITS, prompt="a", negative="", width=128, height=128,
                                                strength=1.0).batch_key


def test_an_upload_is_edited_at_the_models_native_size_in_its_shape() -> None:
    zoom = requests.zoom_out(LIMITS, requests.EditSource.of_upload(LIMITS, 512, 200, 100), "2x")
    assert (zoom.width, zoom.height) == (704, 384)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: requests.pan(RequestLimits(max_size=128), EDIT_SOURCE, "left"), "largest side allowed (128 pixels)"),
    (lambda: requests.pan(LIMITS, EDIT_SOURCE, "sideways"), "pan left, right, up, down"),
    (lambda: requests.zoom_out(LIMITS, EDIT_SOURCE, "3x"), "zoom out by 2x, 1.5x"),
    (lambda: requests.inpaint_region(LIMITS, EDIT_SOURCE, "120,0,10,10"), "reaches past the picture"),
    (lambda: requests.inpaint_region(LIMITS, EDIT_SOURCE, "0,0,0,0"), "has no area"),
])
def test_bad_edits_are_refused_with_a_reason(build: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        build()  # type: ignore[operator]


def test_validate_refuses_an_edit_whose_boxes_leave_the_canvas() -> None:
    params = requests.inpaint_region(LIMITS, EDIT_SOURCE, "center")
    with pytest.raises(InvalidRequest, match="reaches past the 64x64 picture"):
        requests.validate(params.model_copy(update={"width": 64, "height": 64}), LIMITS)

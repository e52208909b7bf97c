"""PNG info of uploads: sdbot's own record, AUTOMATIC1111 and NovelAI metadata read back; a picture
without any (or not a picture) has none."""

from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin

from generation.engine.png_metadata import encode_png
from generation.png_info import MadeWith, read_made_with
from sdbot.types import GenerationRecord, PipelineKind


def png(**text: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_sdbots_own_record_is_read_exactly() -> None:
    record = GenerationRecord(
        prompt="a (red:1.2) fox, snow", negative_prompt="blur", seed=4294967295, steps=3, guidance=1.5,
        width=64, height=48, strength=None, pipeline=PipelineKind.TEXT2IMG, scheduler="EulerDiscreteScheduler",
        model_id="stabilityai/sd-turbo", model_revision="abc", dtype="float32", device="cpu", versions={},
    )
    made_with = read_made_with(encode_png(Image.new("RGB", (64, 48)), record))
    assert made_with == MadeWith(
        generator="sdbot", prompt="a (red:1.2) fox, snow", negative_prompt="blur", seed=4294967295, steps=3,
        guidance=1.5, sampler="Euler", width=64, height=48, model="stabilityai/sd-turbo",
    )  # the sampler as A1111 names it, as in the PNG's `parameters`


def test_automatic1111_parameters() -> None:
    text = "a castle, sunset\nNegative prompt: ugly\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 42, Size: 512x768, Model: dreamy"
    made_with = read_made_with(png(parameters=text))
    assert made_with is not None
    assert (made_with.generator, made_with.prompt, made_with.negative_prompt) == ("AUTOMATIC1111", "a castle, sunset", "ugly")
    assert (made_with.seed, made_with.steps, made_with.guidance, made_with.sampler) == (42, 20, 7.0, "DPM++ 2M")
    assert (made_with.width, made_with.height, made_with.model) == (512, 768, "dreamy")


def test_novelai_metadata() -> None:
    comment = {"uc": "blurry", "steps": 28, "seed": 7, "sampler": "k_euler", "scale": 5.0, "width": 512, "height": 768}
    made_with = read_made_with(
        png(Software="NovelAI", Source="Stable Diffusion 81274D13", Description="a castle", Comment=json.dumps(comment))
    )
    assert made_with is not None
    assert (made_with.prompt, made_with.negative_prompt, made_with.seed, made_with.steps) == ("a castle", "blurry", 7, 28)
    assert (made_with.guidance, made_with.width, made_with.height) == (5.0, 512, 768)


def test_no_metadata_or_no_picture_reads_as_none() -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    assert read_made_with(png()) is None
    assert read_made_with(jpeg.getvalue()) is None
    assert read_made_with(b"not a picture at all") is None

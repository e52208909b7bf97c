"""What PNG-info tools and sdbot read back from the files the engine writes."""

from __future__ import annotations

from io import BytesIO

import pytest
from PIL import ExifTags, Image

from generation.engine.png_metadata import (
    a1111_sampler,
    encode_for_upload,
    encode_png,
    format_parameters,
    parse_parameters,
    read_record,
)
from sdbot.types import GenerationRecord, PipelineKind


def record(**fields: object) -> GenerationRecord:
    values: dict[str, object] = {
        "prompt": "a castle, on a hill: at dawn",
        "negative_prompt": "blurry, low quality",
        "seed": 123,
        "steps": 4,
        "guidance": 0.0,
        "width": 512,
        "height": 768,
        "strength": None,
        "pipeline": PipelineKind.TEXT2IMG,
        "scheduler": "EulerDiscreteScheduler",
        "model_id": "stabilityai/sd-turbo",
        "model_revision": "b261bac6fd2cf515557d5d0707481eafa0485ec2",
        "dtype": "float16",
        "device": "cuda",
        "versions": {"torch": "2.5.0"},
        "extra": {"safety_checker": "on"},
    }
    return GenerationRecord(**(values | fields))


def test_parameters_text_is_automatic1111_style() -> None:
    assert format_parameters(record()) == (
        "a castle, on a hill: at dawn\n"
        "Negative prompt: blurry, low quality\n"
        "Steps: 4, Sampler: Euler, CFG scale: 0.0, Seed: 123, Size: 512x768, "
        "Model: stabilityai/sd-turbo, Model hash: b261bac6fd"
    )


@pytest.mark.parametrize(
    ("scheduler", "config", "sampler"),
    [
        ("EulerDiscreteScheduler", {}, "Euler"),
        ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
        ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
        ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE"),
        ("PNDMScheduler", {}, "PLMS"),
        ("MyOwnScheduler", {}, "MyOwnScheduler"),
    ],
)
def test_samplers_have_their_a1111_names(scheduler: str, config: dict[str, object], sampler: str) -> None:
    assert a1111_sampler(scheduler, config) == sampler
    with_name = record(scheduler=scheduler, extra={"sampler": sampler})
    assert parse_parameters(format_parameters(with_name))["sampler"] == sampler


def test_parameters_parse_back() -> None:
    parsed = parse_parameters(format_parameters(record(strength=0.6, model_id="C:\\models\\my, model")))
    assert parsed["prompt"] == "a castle, on a hill: at dawn"
    assert parsed["negative_prompt"] == "blurry, low quality"
    assert (parsed["steps"], parsed["seed"], parsed["cfg_scale"]) == (4, 123, 0.0)
    assert (parsed["size"], parsed["width"], parsed["height"]) == ("512x768", 512, 768)
    assert parsed["model"] == "C:\\models\\my, model"  # quoted, because of the comma and colon
    assert (parsed["model_hash"], parsed["denoising_strength"]) == ("b261bac6fd", 0.6)


def test_multiline_prompts_and_no_negative_parse_back() -> None:
    parsed = parse_parameters(format_parameters(record(prompt="line one\nline two", negative_prompt="")))
    assert (parsed["prompt"], parsed["negative_prompt"], parsed["seed"]) == ("line one\nline two", "", 123)


def test_text_written_by_automatic1111_parses() -> None:
    text = (
        "masterpiece, a cat\nNegative prompt: ugly\n"
        'Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: 6ce0161689, '
        'Model: v1-5-pruned-emaonly, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.6.0'
    )
    parsed = parse_parameters(text)
    assert (parsed["prompt"], parsed["seed"], parsed["steps"]) == ("masterpiece, a cat", 42, 20)
    assert parsed["cfg_scale"] == 7.0
    assert parsed["lora_hashes"] == "add_detail: 7c6bad76eb54"


def test_png_carries_the_parameters_and_the_full_record() -> None:
    original = record(prompt="a caf\u00e9 with \U0001f431 cats")  # not Latin-1: stored as iTXt
    data = encode_png(Image.new("RGB", (8, 8), "navy"), original)

    opened = Image.open(BytesIO(data))
    assert opened.format == "PNG"
    assert parse_parameters(opened.text["parameters"])["prompt"] == original.prompt
    assert read_record(data) == original


def test_files_without_a_record_read_as_none() -> None:
    plain = BytesIO()
    Image.new("RGB", (8, 8)).save(plain, "PNG")
    jpeg = BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, "JPEG")
    assert read_record(plain.getvalue()) is None
    assert read_record(jpeg.getvalue()) is None
    assert read_record(b"garbage") is None


def test_fallback_formats_keep_the_parameters_in_exif() -> None:
    noisy = Image.effect_noise((256, 256), 100).convert("RGB")
    png_size = len(encode_png(noisy, record()))
    encoded = encode_for_upload(noisy, record(), max_bytes=png_size // 3)

    assert encoded.format in {"webp", "jpeg"} and len(encoded.data) <= png_size // 3
    comment = Image.open(BytesIO(encoded.data)).getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    assert comment.startswith(b"UNICODE\0")
    assert parse_parameters(comment[8:].decode("utf-16-be"))["seed"] == 123

"""Weighted, long prompt embeddings on the tiny pipeline: identical to the pipeline's own encoding
for plain short prompts (so old images keep their pixels), and really weighted and really longer
otherwise. The tiny tokenizer spends one token per character."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from generation.engine.diffusion import DiffusionEngine
from generation.engine.prompt_embeds import (
    PromptTooLong,
    count_tokens,
    encode_batch,
    read_prompt,
)
from generation.prompt_syntax import PromptSyntaxError


@pytest.fixture
def pipe(tiny_engine: DiffusionEngine) -> Any:
    return tiny_engine.text2img_pipeline


def plain(pipe: Any, prompts: list[str], negatives: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What the pipeline itself makes of the text (truncated to 77 tokens)."""
    with torch.no_grad():
        return pipe.encode_prompt(prompts, pipe.device, 1, True, negatives)  # type: ignore[no-any-return]


def encode(
    pipe: Any, prompts: list[str], negatives: list[str], **options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Our prompt and negative embeddings."""
    embeddings = encode_batch(pipe, prompts, negatives, **options)
    assert embeddings.negative is not None and embeddings.pooled is None  # one encoder: nothing pooled
    return embeddings.prompt, embeddings.negative


def words(count: int) -> str:
    """`count` tokens of comma-free text for the byte-level tokenizer: 'abcd' words of 4 tokens
    each ('a', 'b', 'c', 'd</w>'; spaces cost nothing), so count must be a multiple of 4."""
    assert count % 4 == 0
    return " ".join(["abcd"] * (count // 4))


@pytest.mark.parametrize(
    ("prompts", "negatives"),
    [
        (["a lighthouse at dusk"], [""]),
        (["a lighthouse at dusk"], ["blurry, low quality"]),
        ([""], [""]),
        (["a cat, a dog, 1990s film photo"], ["text"]),
        (["two", "prompts in one batch", "and a third"], ["", "ugly", "cartoon"]),
    ],
)
def test_plain_short_prompts_match_the_pipeline_exactly(
    pipe: Any, prompts: list[str], negatives: list[str]
) -> None:
    ours = encode(pipe, prompts, negatives)
    theirs = plain(pipe, prompts, negatives)
    assert ours[0].shape == (len(prompts), 77, 32)
    assert torch.equal(ours[0], theirs[0])
    assert torch.equal(ours[1], theirs[1])


def test_an_encoder_that_wants_an_attention_mask_gets_the_same_one(pipe: Any) -> None:
    # Some SD 2.x-style encoders set use_attention_mask; encode_prompt then masks the padding.
    config = pipe.text_encoder.config
    before = config.__dict__.get("use_attention_mask", None)
    config.use_attention_mask = True
    try:
        ours = encode(pipe, ["a red car", "a bike"], ["", "fog"])
        theirs = plain(pipe, ["a red car", "a bike"], ["", "fog"])
    finally:
        if before is None:
            del config.use_attention_mask
        else:
            config.use_attention_mask = before
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    # The mask really reached the encoder: without it the padding positions come out differently.
    assert not torch.equal(ours[0], encode(pipe, ["a red car", "a bike"], ["", "fog"])[0])


def test_results_are_inference_tensors_on_the_pipeline_device_and_dtype(pipe: Any) -> None:
    embeds, negative = encode(pipe, ["a (red) car"], [""])
    for tensor in (embeds, negative):
        assert tensor.is_inference()
        assert tensor.device == pipe.device and tensor.dtype == pipe.text_encoder.dtype


def test_a_weight_of_one_is_bit_identical_to_no_brackets(pipe: Any) -> None:
    assert torch.equal(encode(pipe, ["a (red:1.0) car"], [""])[0], encode(pipe, ["a red car"], [""])[0])
    assert torch.equal(encode(pipe, [r"\(red\)"], [""])[0], plain(pipe, ["(red)"], [""])[0])


def test_a_weight_scales_exactly_its_own_tokens(pipe: Any) -> None:
    base = encode(pipe, ["a red car"], [""])[0]
    # Positions: 0 start, 1 "a", 2-4 "red", 5-7 "car", then end and padding.
    raw = encode(pipe, ["a (red:1.6) car"], [""], normalize=False)[0]
    torch.testing.assert_close(raw[0, 2:5], base[0, 2:5] * 1.6)
    assert torch.equal(raw[0, :2], base[0, :2]) and torch.equal(raw[0, 5:], base[0, 5:])

    normalized = encode(pipe, ["a (red:1.6) car"], [""])[0]
    assert not torch.equal(normalized, base)
    # "Original" emphasis puts the mean back where it was, so every position moves a little.
    torch.testing.assert_close(normalized.mean(), base.mean())
    torch.testing.assert_close(normalized, raw * (base.mean() / raw.mean()))


def test_each_prompt_of_a_batch_keeps_its_own_weighting(pipe: Any) -> None:
    # A1111 normalises over the whole batch; here an image does not depend on its batch mates.
    alone = encode(pipe, ["a (red:1.6) car"], [""])[0]
    batched = encode(pipe, ["a (red:1.6) car", "((a blue bike))"], ["", "dull"])[0]
    torch.testing.assert_close(batched[:1], alone, rtol=1e-5, atol=1e-6)


def test_a_long_prompt_keeps_the_words_after_the_77th_token(pipe: Any) -> None:
    red, green = words(80) + " red sky", words(80) + " green sea"
    assert count_tokens(pipe.tokenizer, red) == 86

    # The pipeline truncates both to the same first 75 tokens...
    assert torch.equal(plain(pipe, [red], [""])[0], plain(pipe, [green], [""])[0])
    ours_red, negative = encode(pipe, [red], [""])
    ours_green = encode(pipe, [green], [""])[0]
    assert ours_red.shape == negative.shape == (1, 154, 32)
    # ...which is our first chunk, bit for bit; the second chunk carries the rest.
    assert torch.equal(ours_red[:, :77], plain(pipe, [red], [""])[0])
    assert not torch.equal(ours_red[:, 77:], ours_green[:, 77:])
    # Cut at 75 tokens, the prompt would have an empty chunk where the long one has words.
    assert torch.equal(negative[:, 77:], plain(pipe, [""], [""])[0])
    assert not torch.equal(ours_red[:, 77:], negative[:, 77:])


def test_break_starts_a_new_chunk(pipe: Any) -> None:
    embeds = encode(pipe, ["a red bird BREAK a blue sky"], [""])[0]
    assert embeds.shape == (1, 154, 32)
    assert torch.equal(embeds[:, :77], plain(pipe, ["a red bird"], [""])[0])
    assert torch.equal(embeds[:, 77:], plain(pipe, ["a blue sky"], [""])[0])
    assert read_prompt(pipe.tokenizer, "a red bird BREAK a blue sky").chunk_tokens == [8, 8]


def test_a_chunk_that_fills_soon_after_a_comma_ends_at_the_comma(pipe: Any) -> None:
    head, tail = words(64), "abc " + words(16)  # the comma is token 65, then 19 more
    text = f"{head}, {tail}"
    reading = read_prompt(pipe.tokenizer, text)
    assert reading.chunk_tokens == [65, 19]
    assert reading.length == 75 + 19  # a chunk cut short still costs 75, as A1111 counts
    embeds = encode(pipe, [text], [""])[0]
    assert torch.equal(embeds[:, :77], plain(pipe, [head + ","], [""])[0])
    assert torch.equal(embeds[:, 77:], plain(pipe, [tail], [""])[0])


def test_prompts_and_negatives_are_padded_to_the_same_number_of_chunks(pipe: Any) -> None:
    prompts = ["short", "one BREAK two BREAK three"]
    negatives = ["", words(100)]
    embeds, negative = encode(pipe, prompts, negatives)
    assert embeds.shape == negative.shape == (2, 3 * 77, 32)
    empty = plain(pipe, [""], [""])[0]
    assert torch.equal(embeds[:1, 77:154], empty) and torch.equal(embeds[:1, 154:], empty)
    assert torch.equal(negative[:1, 77:154], empty) and torch.equal(negative[1:, 154:], empty)
    assert not torch.equal(negative[1:, 77:154], empty)


def test_too_long_is_refused_with_the_count_and_the_cap(pipe: Any) -> None:
    with pytest.raises(PromptTooLong, match="the prompt is 500 tokens long; the limit is 450") as raised:
        encode(pipe, [words(500)], [""])
    assert (raised.value.count, raised.value.cap) == (500, 450)
    with pytest.raises(PromptTooLong, match="the negative prompt is 160 tokens long; the limit is 150"):
        encode(pipe, ["a cat"], [words(160)], max_tokens=150)
    # Seven BREAKs make eight chunks: few tokens, but 7 * 75 + 1 positions.
    with pytest.raises(PromptTooLong, match="526 tokens"):
        encode(pipe, [" BREAK ".join("abcdefgh")], [""])


def test_refused_syntax_reaches_the_caller(pipe: Any) -> None:
    with pytest.raises(PromptSyntaxError, match="prompt editing"):
        encode(pipe, ["[cat:dog:0.5]"], [""])


def test_reading_a_prompt(pipe: Any) -> None:
    reading = read_prompt(pipe.tokenizer, "a (red:1.5) car BREAK sky")
    assert reading.fragments == [("a ", 1.0), ("red", 1.5), (" car", 1.0), ("BREAK", -1.0), ("sky", 1.0)]
    assert (reading.chunk_tokens, reading.tokens, reading.length) == ([7, 3], 10, 78)
    assert reading.chunks[0].weights == [1.0, 1.5, 1.5, 1.5, 1.0, 1.0, 1.0]


def run(pipe: Any, guidance: float, seed: int = 7, **text: Any) -> np.ndarray:
    return pipe(  # type: ignore[no-any-return]
        num_inference_steps=2,
        guidance_scale=guidance,
        width=64,
        height=64,
        generator=[torch.Generator("cpu").manual_seed(seed)],
        output_type="np",
        **text,
    ).images


@pytest.mark.parametrize("guidance", [0.0, 5.0])
def test_pipeline_pixels_are_unchanged_for_plain_prompts(pipe: Any, guidance: float) -> None:
    embeds, negative = encode(pipe, ["a lighthouse at dusk"], ["fog"])
    ours = run(pipe, guidance, prompt_embeds=embeds, negative_prompt_embeds=negative)
    theirs = run(pipe, guidance, prompt=["a lighthouse at dusk"], negative_prompt=["fog"])
    assert np.array_equal(ours, theirs)


def test_a_long_weighted_prompt_runs_end_to_end(pipe: Any) -> None:
    long = f"(masterpiece:1.3), {words(100)}, [blurry] BREAK a lighthouse"
    embeds, negative = encode(pipe, [long], ["fog"])
    assert embeds.shape[1] == 3 * 77
    image = run(pipe, 5.0, prompt_embeds=embeds, negative_prompt_embeds=negative)
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    # The words past the pipeline's 77-token cut-off reach the image.
    short = encode(pipe, [long.split(" BREAK ")[0]], ["fog"])
    assert not np.array_equal(image, run(pipe, 5.0, prompt_embeds=short[0], negative_prompt_embeds=short[1]))

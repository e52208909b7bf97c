"""A1111 weights and long prompts on the tiny SDXL pipeline (two CLIP encoders, 32 + 32 features,
a pooled projection of 32; the second tokenizer pads with "!" as SDXL's does): identical to the
pipeline's own `encode_prompt` for plain short prompts, so SDXL images keep their pixels, and really
weighted and really longer otherwise. The tiny tokenizers spend one token per character."""

from __future__ import annotations

import copy
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from PIL import Image

from generation.catalogue import LoraEntry
from generation.engine.diffusion import DiffusionEngine
from generation.engine.loras import Adapters
from generation.engine.prompt_embeds import encode_batch, read_prompt
from generation.engine.tiny_models import TinyModelPaths
from generation.errors import InvalidRequest
from sdbot.types import GeneratedImage, PipelineKind
from tests.fakes.params import ignore_steps, never, text2img

WIDTH = 32  # each encoder's hidden size: features 0-31 are text_encoder's, 32-63 text_encoder_2's


@pytest.fixture(scope="module")
def engine(tiny_models: TinyModelPaths) -> DiffusionEngine:
    return DiffusionEngine.load(tiny_models.engine_config(model_id=str(tiny_models.sdxl)))


@pytest.fixture
def pipe(engine: DiffusionEngine) -> Any:
    return engine.text2img_pipeline


def plain(pipe: Any, prompts: list[str], negatives: list[str] | None = None) -> tuple[torch.Tensor, ...]:
    """What the pipeline itself makes of the text (truncated to 77 tokens), given it as the engine
    used to: a negative (possibly "") under guidance, none without."""
    with torch.no_grad():
        return pipe.encode_prompt(  # type: ignore[no-any-return]
            prompts, device=pipe.device, do_classifier_free_guidance=negatives is not None, negative_prompt=negatives
        )


def words(count: int) -> str:
    """`count` comma-free tokens: 'abcd' words of 4 tokens each."""
    assert count % 4 == 0
    return " ".join(["abcd"] * (count // 4))


def pixels(image: GeneratedImage) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(image.data or b"")).convert("RGB"), dtype=np.int16)


def image(engine: DiffusionEngine, prompt: str, **fields: object) -> np.ndarray:
    (output,) = engine.run_batch([text2img(prompt, seeds=(3,), **fields)], ignore_steps, never)
    return pixels(output.images[0])


@pytest.mark.parametrize(
    ("prompts", "negatives"),
    [
        (["a lighthouse at dusk"], [""]),
        (["a lighthouse at dusk"], ["blurry, low quality"]),
        ([""], [""]),
        (["two", "prompts in one batch", "and a third"], ["", "ugly", "cartoon"]),
    ],
)
def test_plain_short_prompts_match_the_pipeline_exactly(pipe: Any, prompts: list[str], negatives: list[str]) -> None:
    ours = encode_batch(pipe, prompts, negatives)
    theirs = plain(pipe, prompts, negatives)
    assert ours.prompt.shape == (len(prompts), 77, 2 * WIDTH) and ours.pooled is not None
    for mine, expected in zip((ours.prompt, ours.negative, ours.pooled, ours.negative_pooled), theirs, strict=True):
        assert mine is not None and torch.equal(mine, expected)


def test_without_guidance_no_negative_is_encoded(pipe: Any) -> None:
    ours = encode_batch(pipe, ["a (red:1.0) car"], None)
    prompt, negative, pooled, negative_pooled = plain(pipe, ["a red car"])
    assert negative is None and negative_pooled is None
    assert torch.equal(ours.prompt, prompt) and ours.pooled is not None and torch.equal(ours.pooled, pooled)
    assert set(ours.arguments()) == {"prompt_embeds", "pooled_prompt_embeds"}


def run(pipe: Any, guidance: float, **text: Any) -> np.ndarray:
    return pipe(  # type: ignore[no-any-return]
        num_inference_steps=2, guidance_scale=guidance, width=64, height=64,
        generator=[torch.Generator("cpu").manual_seed(7)], output_type="np", **text,
    ).images


@pytest.mark.parametrize(("guidance", "negative"), [(0.0, None), (5.0, ""), (5.0, "fog")])
def test_sdxl_pixels_are_unchanged_for_plain_prompts(pipe: Any, guidance: float, negative: str | None) -> None:
    # The empty negative is encoded as "", as the pipeline does when the engine hands it one
    # (force_zeros_for_empty_prompt zeroes only an absent negative).
    assert pipe.config.force_zeros_for_empty_prompt
    negatives = None if negative is None else [negative]
    ours = encode_batch(pipe, ["a lighthouse at dusk"], negatives)
    text = {"prompt": ["a lighthouse at dusk"]} | ({} if negatives is None else {"negative_prompt": negatives})
    assert np.array_equal(run(pipe, guidance, **ours.arguments()), run(pipe, guidance, **text))


def test_a_weight_scales_exactly_its_own_tokens_in_both_encoders(pipe: Any) -> None:
    base = encode_batch(pipe, ["a red car"], None)
    # Positions: 0 start, 1 "a", 2-4 "red", 5-7 "car", then end and padding.
    raw = encode_batch(pipe, ["a (red:1.6) car"], None, normalize=False)
    torch.testing.assert_close(raw.prompt[0, 2:5], base.prompt[0, 2:5] * 1.6)
    assert torch.equal(raw.prompt[0, :2], base.prompt[0, :2]) and torch.equal(raw.prompt[0, 5:], base.prompt[0, 5:])
    # The pooled embedding is the unweighted first chunk's, as in A1111.
    assert raw.pooled is not None and base.pooled is not None and torch.equal(raw.pooled, base.pooled)

    normalized = encode_batch(pipe, ["a (red:1.6) car"], None).prompt
    assert not torch.equal(normalized, base.prompt)
    # "Original" emphasis restores the mean of each encoder's output on its own, as A1111 does.
    for half in (slice(0, WIDTH), slice(WIDTH, 2 * WIDTH)):
        torch.testing.assert_close(normalized[..., half].mean(), base.prompt[..., half].mean())
        scale = base.prompt[..., half].mean() / raw.prompt[..., half].mean()
        torch.testing.assert_close(normalized[..., half], raw.prompt[..., half] * scale)


def test_a_weighted_negative_prompt_moves_only_the_negative(pipe: Any) -> None:
    base = encode_batch(pipe, ["a cat"], ["blurry"])
    weighted = encode_batch(pipe, ["a cat"], ["(blurry:1.5)"], normalize=False)
    assert weighted.negative is not None and base.negative is not None
    torch.testing.assert_close(weighted.negative[0, 1:7], base.negative[0, 1:7] * 1.5)
    assert torch.equal(weighted.negative[0, 7:], base.negative[0, 7:])
    assert torch.equal(weighted.prompt, base.prompt)
    assert torch.equal(weighted.pooled, base.pooled)  # type: ignore[arg-type]
    assert torch.equal(weighted.negative_pooled, base.negative_pooled)  # type: ignore[arg-type]


def test_break_starts_a_new_chunk_and_the_pooled_embedding_is_the_first_chunks(pipe: Any) -> None:
    ours = encode_batch(pipe, ["a red bird BREAK a blue sky"], [""])
    assert ours.prompt.shape == (1, 154, 2 * WIDTH)
    first, second = plain(pipe, ["a red bird"], [""]), plain(pipe, ["a blue sky"], [""])
    assert torch.equal(ours.prompt[:, :77], first[0]) and torch.equal(ours.prompt[:, 77:], second[0])
    assert torch.equal(ours.pooled, first[2])  # type: ignore[arg-type]
    # The negative is padded to the same two chunks with an encoded empty chunk.
    assert ours.negative is not None and torch.equal(ours.negative[:, 77:], first[1])


def test_a_long_prompt_keeps_the_words_after_the_77th_token(pipe: Any) -> None:
    red, green = words(80) + " red sky", words(80) + " green sea"
    # The pipeline truncates both to the same first 75 tokens...
    assert torch.equal(plain(pipe, [red])[0], plain(pipe, [green])[0])
    ours_red, ours_green = encode_batch(pipe, [red], None), encode_batch(pipe, [green], None)
    # ...which is our first chunk, bit for bit; the second chunk carries the rest.
    assert ours_red.prompt.shape == (1, 154, 2 * WIDTH)
    assert torch.equal(ours_red.prompt[:, :77], plain(pipe, [red])[0])
    assert not torch.equal(ours_red.prompt[:, 77:], ours_green.prompt[:, 77:])


# Through the engine: what a member's job on an SDXL model gets.


def test_weights_change_an_sdxl_image_and_weight_one_does_not(engine: DiffusionEngine) -> None:
    base = image(engine, "a red bird")
    assert np.array_equal(image(engine, "a (red:1.0) bird"), base)
    assert np.abs(image(engine, "a (red:1.6) bird") - base).max() > 0
    assert np.abs(image(engine, "a [red] bird") - base).max() > 0
    # A weighted negative under guidance changes the picture too.
    guided = image(engine, "a red bird", guidance=5.0, negative_prompt="blurry")
    assert np.abs(image(engine, "a red bird", guidance=5.0, negative_prompt="(blurry:1.8)") - guided).max() > 0


def test_a_word_after_the_77th_token_changes_an_sdxl_image(engine: DiffusionEngine) -> None:
    head = words(80)
    assert read_prompt(engine.text2img_pipeline.tokenizer, head + " moon").length == 84
    assert np.abs(image(engine, head + " moon") - image(engine, head + " sun")).max() > 0


def test_batched_sdxl_jobs_with_different_prompts_get_their_own_embeddings(engine: DiffusionEngine) -> None:
    # Two chunks each (a shorter prompt would be padded with an empty chunk, which moves pixels).
    jobs = [text2img("a (red:1.4) bird BREAK sky", seeds=(3,)), text2img(words(80) + " sun", seeds=(3,))]
    together = [pixels(output.images[0]) for output in engine.run_batch(jobs, ignore_steps, never)]
    alone = [image(engine, job.prompt) for job in jobs]
    for batched, single in zip(together, alone, strict=True):
        assert np.abs(batched - single).max() <= 2  # the engine's batching tolerance
    assert np.abs(together[0] - alone[1]).max() > 2  # and each is not the other prompt's image


def test_an_sdxl_variation_reads_the_weights_too(engine: DiffusionEngine) -> None:
    (source,) = engine.run_batch([text2img("a harbour", seeds=(3,))], ignore_steps, never)[0].images

    def vary(prompt: str) -> np.ndarray:
        params = text2img(prompt, pipeline=PipelineKind.IMG2IMG, source_image=source.data, strength=0.8,
                          steps=4, seeds=(5,))
        return pixels(engine.run_batch([params], ignore_steps, never)[0].images[0])

    base = vary("a harbour")
    assert np.array_equal(vary("a (harbour:1.0)"), base)
    assert np.abs(vary("a (harbour:1.8)") - base).max() > 0


def test_a_too_long_sdxl_prompt_is_an_invalid_request(engine: DiffusionEngine) -> None:
    with pytest.raises(InvalidRequest, match=r"the prompt is 480 tokens long; the limit is 450"):
        engine.run_batch([text2img("castle " * 80)], ignore_steps, never)
    assert engine.token_counter()("a (red:1.5) bird BREAK sky") == 75 + 3



def text_encoder_lora(pipe: Any, path: Path) -> Path:
    """A LoRA with random weights on both SDXL text encoders' attention, in diffusers' format."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(2)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    layers = {}
    for name in ("text_encoder", "text_encoder_2"):
        encoder = inject_adapter_in_model(config, copy.deepcopy(getattr(pipe, name)))
        layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder))
    StableDiffusionXLPipeline.save_lora_weights(path.parent, weight_name=path.name, **layers)
    return path


def test_an_sdxl_lora_on_the_text_encoders_reaches_the_weighted_embeddings(
    tiny_models: TinyModelPaths, tmp_path: Path
) -> None:
    pipe = DiffusionEngine.load(tiny_models.engine_config(model_id=str(tiny_models.sdxl))).text2img_pipeline
    lora = LoraEntry(name="words", source=str(text_encoder_lora(pipe, tmp_path / "words.safetensors")), family="sdxl")
    adapters = Adapters()
    base = encode_batch(pipe, ["a red car"], ["fog"])

    adapters.apply(pipe, [(lora, 0.7)])
    ours = encode_batch(pipe, ["a red car"], ["fog"])
    # Exactly what the pipeline encodes with the LoRA on, and not the plain encoding.
    for mine, expected in zip((ours.prompt, ours.negative, ours.pooled, ours.negative_pooled),
                              plain(pipe, ["a red car"], ["fog"]), strict=True):
        assert mine is not None and torch.equal(mine, expected)
    assert not torch.equal(ours.prompt, base.prompt)

    adapters.apply(pipe, [])
    assert torch.equal(encode_batch(pipe, ["a red car"], ["fog"]).prompt, base.prompt)

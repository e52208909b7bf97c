"""Weighted, long prompt embeddings for CLIP pipelines: one text encoder (SD 1.x and 2.x) or two
(SDXL). SD3 and Flux read their prompt as plain text (`weighs_prompts` is False for them).

`encode_batch(pipe, prompts, negatives)` reads each prompt with `prompt_syntax.parse_weights`,
cuts it into 75-token chunks (`prompt_syntax.chunk_tokens`: commas and BREAK), encodes each chunk
as its own 77-token CLIP call and concatenates the results along the sequence axis, so a prompt is
no longer cut off at 77 tokens. Emphasis is A1111's "Original" method: scale each token's vector
by its weight, then (unless `normalize=False`) rescale the chunk so its mean is what it was.

SDXL, as its pipeline's `encode_prompt` does: each chunk goes through both encoders, whose
penultimate hidden states are concatenated on the feature axis; the pooled embedding is
text_encoder_2's projection of the first chunk (unweighted, as in A1111). Weighting and the mean
kept by normalisation are per encoder, as A1111 hooks each SDXL encoder on its own. Both encoders
get the same tokens (SDXL's two tokenizers share CLIP's vocabulary) with each tokenizer's own
start, end and padding tokens (tokenizer_2 pads with "!").

Compatibility: a prompt of one chunk with every weight 1.0 gives exactly (torch.equal) what the
pipeline's own `encode_prompt` gives for the same text (prompt, negative and pooled), so existing
prompts keep their pixels. Chunks are built token by token like the pipeline's tokenizer call
(start token, tokens, end token, `pad_token_id` up to 77, an attention mask only where the pipeline
passes one: a one-encoder pipeline whose encoder's config asks for it), and chunk j of every prompt
in the batch is encoded in one call, as the pipeline encodes its batch. An empty negative prompt
is encoded as the text "", as the pipeline does when handed one (SDXL's
`force_zeros_for_empty_prompt` only zeroes a negative that is absent, which the bot never sends
under guidance).

Unlike A1111, the mean kept by normalisation is each prompt's own (A1111 takes it over the whole
batch), so an image does not depend on the other prompts it was batched with; and the weighting is
computed in float32 before casting back to the encoder's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from generation.catalogue import family_of
from generation.prompt_syntax import TokenChunk, chunk_tokens, is_break, parse_weights

DEFAULT_MAX_TOKENS = 450  # six CLIP chunks


class PromptTooLong(ValueError):
    """The prompt needs more token positions than allowed; `count` and `cap` say how many."""

    def __init__(self, which: str, count: int, cap: int) -> None:
        super().__init__(f"the {which} is {count} tokens long; the limit is {cap}")
        self.count = count
        self.cap = cap


@dataclass(frozen=True)
class PromptReading:
    """How a prompt is read: its weighted fragments (BREAK included, see prompt_syntax), the
    number of real tokens in each chunk, their total, and `length`, A1111's token count: every
    chunk but the last counts as a full 75, because that is what it costs (padding included)."""

    fragments: list[tuple[str, float]]
    chunk_tokens: list[int]
    tokens: int
    length: int
    chunks: list[TokenChunk]


def load_tokenizer(model_id: str, revision: str | None = None) -> Any | None:
    """The tokenizer of a diffusers model folder or of a model already in the local Hugging Face
    cache, without downloading anything; None when it is not here."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer", revision=revision, local_files_only=True)
    except (OSError, ValueError):
        return None


def local_prompt_reader(model_id: str, revision: str | None = None) -> Callable[[str], PromptReading] | None:
    """`read_prompt` with the model's tokenizer when it is on this machine (see load_tokenizer),
    else None. For the loop only: the engine's thread encodes with its own tokenizer."""
    tokenizer = load_tokenizer(model_id, revision)
    if tokenizer is None:
        return None
    return lambda text: read_prompt(tokenizer, text)


def _comma_token(tokenizer: Any) -> int | None:
    ids = tokenizer(",", add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


def _chunk_size(tokenizer: Any) -> int:
    return int(tokenizer.model_max_length) - 2  # room for the start and end tokens


def read_prompt(tokenizer: Any, text: str) -> PromptReading:
    """Parse the emphasis syntax of `text` and cut its tokens into chunks (no model needed).
    Raises PromptSyntaxError for refused syntax."""
    fragments = parse_weights(text)
    words = [fragment for fragment in fragments if not is_break(fragment)]
    ids = tokenizer([piece for piece, _ in words], add_special_tokens=False).input_ids if words else []
    encoded = iter(ids)
    # Each fragment is tokenized on its own, as A1111 does, so a weight never spans half a word.
    pieces = [((), weight) if is_break((piece, weight)) else (next(encoded), weight) for piece, weight in fragments]
    size = _chunk_size(tokenizer)
    chunks = chunk_tokens(pieces, _comma_token(tokenizer), size=size)
    counts = [len(chunk.tokens) for chunk in chunks]
    return PromptReading(
        fragments=fragments,
        chunk_tokens=counts,
        tokens=sum(counts),
        length=size * (len(chunks) - 1) + counts[-1],
        chunks=chunks,
    )


def count_tokens(tokenizer: Any, text: str) -> int:
    """A1111's token count of `text` (see PromptReading.length), the number limited by max_tokens."""
    return read_prompt(tokenizer, text).length


@dataclass(frozen=True)
class Embeddings:
    """A batch's prompt embeddings, one row per image; `pooled` ones only for SDXL, `negative`
    ones only where the pipeline reads a negative (guidance above 1)."""

    prompt: torch.Tensor
    negative: torch.Tensor | None
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None

    def arguments(self) -> dict[str, torch.Tensor]:
        """The pipeline call's keyword arguments for them."""
        named = {
            "prompt_embeds": self.prompt,
            "negative_prompt_embeds": self.negative,
            "pooled_prompt_embeds": self.pooled,
            "negative_pooled_prompt_embeds": self.negative_pooled,
        }
        return {name: value for name, value in named.items() if value is not None}


@dataclass(frozen=True)
class _Encoder:
    """One CLIP text encoder with its tokenizer, read as the pipeline's `encode_prompt` reads it."""

    tokenizer: Any
    model: Any
    penultimate: bool  # SDXL reads the second-to-last hidden states, SD 1.x/2.x the last one
    mask: bool  # pass an attention mask (SD 1.x/2.x encoders whose config asks for one)


def _encoders(pipe: Any) -> list[_Encoder] | None:
    """The CLIP encoders the prompt goes through, in the pipeline's order; None where the prompt
    stays plain text (SD3, Flux: more or other encoders than CLIP)."""
    if getattr(pipe, "text_encoder_2", None) is None:
        mask = bool(getattr(pipe.text_encoder.config, "use_attention_mask", False))
        return [_Encoder(pipe.tokenizer, pipe.text_encoder, penultimate=False, mask=mask)]
    if family_of(type(pipe).__name__) == "sdxl":  # text2img, img2img and inpaint alike
        pairs = ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))
        # An SDXL refiner has only the second encoder.
        return [_Encoder(tokenizer, model, True, False) for tokenizer, model in pairs if model is not None]
    return None


def weighs_prompts(pipe: Any) -> bool:
    """Whether `encode_batch` serves this pipeline (SD 1.x/2.x and SDXL); else it takes text."""
    return _encoders(pipe) is not None


def encode_batch(
    pipe: Any,
    prompts: Sequence[str],
    negatives: Sequence[str] | None,
    *,
    normalize: bool = True,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Embeddings:
    """Embeddings for one image per entry, on the pipeline's device in the encoder's dtype:
    `prompt` and `negative` of shape (len(prompts), 77 * k, hidden), where k is the most chunks
    any prompt or negative needs (shorter ones are padded with encoded empty chunks) and hidden
    sums the encoders' widths; for SDXL also the pooled ones, (len(prompts), projection).
    Pass them to the pipeline with `Embeddings.arguments()`. `negatives=None` (guidance of 1 or
    less, where the pipeline reads no negative) encodes none. Raises PromptSyntaxError for refused
    syntax, PromptTooLong above `max_tokens`, ValueError for a pipeline `weighs_prompts` refuses."""
    if negatives is not None and len(prompts) != len(negatives):
        raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
    encoders = _encoders(pipe)
    if encoders is None:
        raise ValueError(f"{type(pipe).__name__} reads its prompt as text, not as CLIP embeddings")
    tokenizer = encoders[0].tokenizer
    readings = [_checked(read_prompt(tokenizer, text), "prompt", max_tokens) for text in prompts]
    negative_readings = [
        _checked(read_prompt(tokenizer, text), "negative prompt", max_tokens) for text in negatives or ()
    ]
    count = max(len(reading.chunks) for reading in readings + negative_readings)
    # Both properties walk every module of the pipeline, so they are read once, not per chunk.
    device = pipe._execution_device
    dtype = encoders[-1].model.dtype  # encode_prompt casts to the last encoder's dtype
    with torch.inference_mode():
        prompt, pooled = _encode(encoders, readings, count, normalize, device, dtype)
        if negatives is None:
            return Embeddings(prompt, None, pooled)
        negative, negative_pooled = _encode(encoders, negative_readings, count, normalize, device, dtype)
        return Embeddings(prompt, negative, pooled, negative_pooled)


def _checked(reading: PromptReading, which: str, max_tokens: int) -> PromptReading:
    if reading.length > max_tokens:
        raise PromptTooLong(which, reading.length, max_tokens)
    return reading


def _encode(
    encoders: Sequence[_Encoder],
    readings: Sequence[PromptReading],
    count: int,
    normalize: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weighted embeddings of `count` chunks per reading, and the pooled embedding of the
    first chunk where an encoder makes one."""
    empty = TokenChunk()
    encoded: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    for index in range(count):
        chunks = [reading.chunks[index] if index < len(reading.chunks) else empty for reading in readings]
        weights = torch.tensor([_row_weights(encoders[0].tokenizer, chunk) for chunk in chunks], dtype=torch.float32)
        parts = []
        for encoder in encoders:
            z, chunk_pooled = _encode_chunks(encoder, chunks, device)
            # As encode_prompt: the first 2-D output (the projection of text_encoder_2) is pooled.
            if index == 0 and pooled is None:
                pooled = chunk_pooled
            z = z.to(dtype=dtype, device=device)  # as encode_prompt does
            parts.append(_weighted(z, weights, normalize))
        encoded.append(torch.cat(parts, dim=-1))  # SDXL: the two encoders side by side
    return torch.cat(encoded, dim=1), pooled


def _row_weights(tokenizer: Any, chunk: TokenChunk) -> list[float]:
    """The weight of each of a chunk's 77 positions: the start, end and padding positions keep
    1.0, as in A1111 (both SDXL tokenizers have 77)."""
    return [1.0, *chunk.weights] + [1.0] * (int(tokenizer.model_max_length) - len(chunk.weights) - 1)


def _encode_chunks(
    encoder: _Encoder, chunks: Sequence[TokenChunk], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One encoder call for chunk j of every prompt: (hidden states, pooled output or None)."""
    tokenizer = encoder.tokenizer
    length = int(tokenizer.model_max_length)
    ids, mask = [], []
    for chunk in chunks:
        used = len(chunk.tokens) + 2
        ids.append(
            [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (length - used)
        )
        mask.append([1] * used + [0] * (length - used))
    attention = torch.tensor(mask, device=device) if encoder.mask else None
    output = encoder.model(
        torch.tensor(ids, device=device), attention_mask=attention, output_hidden_states=encoder.penultimate
    )
    z = output.hidden_states[-2] if encoder.penultimate else output[0]
    return z, output[0] if output[0].ndim == 2 else None


def _weighted(z: torch.Tensor, weights: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Scale each token vector by its weight, per prompt; rows whose weights are all 1.0 are left
    untouched so that `(x:1.0)` and `x` stay bit-identical."""
    rows = []
    for row, row_weights in zip(z, weights, strict=True):
        if bool((row_weights == 1.0).all()):
            rows.append(row)
            continue
        original = row.float()
        scaled = original * row_weights.to(row.device)[:, None]
        if normalize:
            before, after = original.mean(), scaled.mean()
            # A zero mean cannot be restored by scaling; keep the scaled vectors as they are.
            if not math.isclose(float(after), 0.0, abs_tol=1e-12):
                scaled = scaled * (before / after)
        rows.append(scaled.to(row.dtype))
    return torch.stack(rows)

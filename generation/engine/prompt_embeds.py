"""Weighted, long prompt embeddings for pipelines with one CLIP text encoder (SD 1.x and 2.x).

`encode_batch(pipe, prompts, negatives)` reads each prompt with `prompt_syntax.parse_weights`,
cuts it into 75-token chunks (`prompt_syntax.chunk_tokens`: commas and BREAK), encodes each chunk
as its own 77-token CLIP call and concatenates the results along the sequence axis, so a prompt is
no longer cut off at 77 tokens. Emphasis is A1111's "Original" method: scale each token's vector
by its weight, then (unless `normalize=False`) rescale the chunk so its mean is what it was.

Compatibility: a prompt of one chunk with every weight 1.0 gives exactly (torch.equal) what the
pipeline's own `encode_prompt` gives for the same text, so existing prompts keep their pixels.
Chunks are built token by token like the pipeline's tokenizer call (start token, tokens, end token,
`pad_token_id` up to 77, an attention mask only if the encoder's config asks for one), and chunk j
of every prompt in the batch is encoded in one call, as the pipeline encodes its batch.

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


def encode_batch(
    pipe: Any,
    prompts: Sequence[str],
    negatives: Sequence[str] | None,
    *,
    normalize: bool = True,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embeddings for one image per entry: `(prompt_embeds, negative_prompt_embeds)`, each of shape
    (len(prompts), 77 * k, hidden) on the pipeline's device in the encoder's dtype, where k is the
    most chunks any prompt or negative needs; shorter ones are padded with encoded empty chunks.
    Pass them to the pipeline as `prompt_embeds=` and `negative_prompt_embeds=`. `negatives=None`
    (guidance of 1 or less, where the pipeline reads no negative) encodes none and returns None
    for them. Raises PromptSyntaxError for refused syntax and PromptTooLong above `max_tokens`."""
    if negatives is not None and len(prompts) != len(negatives):
        raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
    tokenizer = pipe.tokenizer
    readings = [_checked(read_prompt(tokenizer, text), "prompt", max_tokens) for text in prompts]
    negative_readings = [
        _checked(read_prompt(tokenizer, text), "negative prompt", max_tokens) for text in negatives or ()
    ]
    count = max(len(reading.chunks) for reading in readings + negative_readings)
    # Both properties walk every module of the pipeline, so they are read once, not per chunk.
    device = pipe._execution_device
    dtype = pipe.text_encoder.dtype
    with torch.inference_mode():
        return (
            _encode(pipe, readings, count, normalize, device, dtype),
            _encode(pipe, negative_readings, count, normalize, device, dtype) if negatives is not None else None,
        )


def _checked(reading: PromptReading, which: str, max_tokens: int) -> PromptReading:
    if reading.length > max_tokens:
        raise PromptTooLong(which, reading.length, max_tokens)
    return reading


def _encode(
    pipe: Any,
    readings: Sequence[PromptReading],
    count: int,
    normalize: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    length = int(tokenizer.model_max_length)
    use_mask = bool(getattr(encoder.config, "use_attention_mask", False))
    empty = TokenChunk()
    encoded: list[torch.Tensor] = []
    for index in range(count):
        chunks = [reading.chunks[index] if index < len(reading.chunks) else empty for reading in readings]
        ids, mask, weights = [], [], []
        for chunk in chunks:
            used = len(chunk.tokens) + 2
            ids.append(
                [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id]
                + [tokenizer.pad_token_id] * (length - used)
            )
            mask.append([1] * used + [0] * (length - used))
            # The start, end and padding positions keep weight 1, as in A1111.
            weights.append([1.0, *chunk.weights] + [1.0] * (length - used + 1))
        attention = torch.tensor(mask, device=device) if use_mask else None
        z = encoder(torch.tensor(ids, device=device), attention_mask=attention)[0]
        z = z.to(dtype=dtype, device=device)  # as encode_prompt does
        encoded.append(_weighted(z, torch.tensor(weights, dtype=torch.float32), normalize))
    return torch.cat(encoded, dim=1)


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

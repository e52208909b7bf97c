"""Batch buckets: a compiled graph is specialised to its batch size, so a compiled engine pads each
batch up to one of a few fixed sizes and drops the padded images before the safety check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

BUCKETS: tuple[int, ...] = (1, 2, 4, 8)


def bucket_for(count: int, buckets: Sequence[int] = BUCKETS) -> int:
    """The smallest bucket that holds `count` images; above the largest, the next multiple of it."""
    if count < 1:
        raise ValueError("a batch has at least one image")
    for bucket in sorted(buckets):
        if count <= bucket:
            return bucket
    largest = max(buckets)
    return -(-count // largest) * largest


def buckets_up_to(max_images: int, buckets: Sequence[int] = BUCKETS) -> tuple[int, ...]:
    """Every bucket a batch of 1..`max_images` images can land in (what a warm-up must cover)."""
    return tuple(sorted({bucket_for(count, buckets) for count in range(1, max_images + 1)}))


def pad_per_image(arguments: dict[str, Any], count: int, size: int) -> dict[str, Any]:
    """Pad every per-image argument (a list or a tensor `count` long, e.g. prompt embeddings) to
    `size` entries by repeating the last one; generators get fresh ones so the real images' noise is
    untouched."""
    padded: dict[str, Any] = {}
    for name, value in arguments.items():
        if isinstance(value, torch.Tensor) and value.shape[0] == count and size > count:
            value = torch.cat([value, value[-1:].expand(size - count, *value.shape[1:])])
        elif isinstance(value, list) and len(value) == count and size > count:
            extra = size - count
            if value and isinstance(value[0], torch.Generator):
                value = value + [torch.Generator(value[0].device).manual_seed(0) for _ in range(extra)]
            else:
                value = value + [value[-1]] * extra
        padded[name] = value
    return padded

"""What FLUX models cannot take from a request, and how a member is told. Pure Python.

FLUX reads its prompt with T5 and CLIP as plain text (no A1111 weights), is guidance-distilled (no
classifier-free guidance, so no negative prompt), and is a transformer (no convolutions for
seamless tiling to wrap). The request is still made, the way FLUX can: the notes go into the queued
reply (`generation.requests.imagine`) and, as job warnings, onto the result (the engine).
"""

from __future__ import annotations

from generation.prompt_syntax import PromptSyntaxError, plain_text

NO_WEIGHTS = "weights, ( ) [ ] and BREAK are not applied on FLUX models: the prompt is read as plain words"
NO_NEGATIVE = "FLUX models take no negative prompt: it is ignored (say what you want in the prompt instead)"
NO_TILE = "seamless tiling (--tile) works on SD and SDXL models only: FLUX images are made without it"
# Told by the engine, which sees whether the model has a guidance input (FLUX.1-dev) or not (schnell).
NO_GUIDANCE = "this FLUX model has no guidance input (like FLUX.1-schnell): the guidance setting has no effect"


def is_weighted(prompt: str) -> bool:
    """Whether the prompt has A1111 emphasis, weights or BREAK (refused syntax is not: it is
    refused elsewhere)."""
    try:
        return plain_text(prompt)[1]
    except PromptSyntaxError:
        return False


def flux_notes(prompt: str, negative_prompt: str, tile: bool) -> list[str]:
    """What a FLUX model leaves out of this request."""
    return [note for note, applies in ((NO_WEIGHTS, is_weighted(prompt)), (NO_NEGATIVE, bool(negative_prompt)),
                                       (NO_TILE, tile)) if applies]

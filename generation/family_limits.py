"""What the transformer families (SD3, FLUX) cannot take from a request, and how a member is told.
Pure Python.

Both read their prompt with T5 beside CLIP as plain text: there are no CLIP weights to scale per
token (T5 takes none, and scaling CLIP's share alone would not do what A1111 weights do), so
weights, emphasis and BREAK are dropped to the plain words. Both are transformers, with no
convolutions for seamless tiling to wrap. FLUX is moreover guidance-distilled (no classifier-free
guidance, so no negative prompt), where SD3 has real CFG and reads a negative prompt. The request
is still made, the way the model can: the notes go into the queued reply
(`generation.requests.imagine`) and, as job warnings, onto the result (the engine).
"""

from __future__ import annotations

from generation.prompt_syntax import PromptSyntaxError, plain_text

# Families whose prompts are read as plain words (and whose denoiser is a transformer).
PLAIN_WORD_FAMILIES = frozenset({"sd3", "flux"})
# Guidance-distilled families: no classifier-free guidance, so no negative prompt.
DISTILLED_FAMILIES = frozenset({"flux"})
# Told by the engine, which sees whether the model has a guidance input (FLUX.1-dev) or not (schnell).
NO_GUIDANCE = "this FLUX model has no guidance input (like FLUX.1-schnell): the guidance setting has no effect"


def no_weights(family: str) -> str:
    return f"weights, ( ) [ ] and BREAK are not applied on {family.upper()} models: prompts are read as plain words"


def no_negative(family: str) -> str:
    return (f"{family.upper()} models take no negative prompt: it is ignored "
            "(say what you want in the prompt instead)")


def no_tile(family: str) -> str:
    return f"seamless tiling (--tile) works on SD and SDXL models only: {family.upper()} images are made without it"


def reads_plain_words(family: str | None) -> bool:
    return family in PLAIN_WORD_FAMILIES


def reads_negative(family: str | None) -> bool:
    return family not in DISTILLED_FAMILIES


def is_weighted(prompt: str) -> bool:
    """Whether the prompt has A1111 emphasis, weights or BREAK (refused syntax is not: it is
    refused elsewhere)."""
    try:
        return plain_text(prompt)[1]
    except PromptSyntaxError:
        return False


def family_notes(family: str | None, prompt: str, negative_prompt: str, tile: bool) -> list[str]:
    """What a model of `family` leaves out of this request (nothing for SD and SDXL)."""
    if family is None or not reads_plain_words(family):
        return []
    negative_read = reads_negative(family)
    weighted = is_weighted(prompt) or (negative_read and is_weighted(negative_prompt))
    return [note for note, applies in ((no_weights(family), weighted),
                                       (no_negative(family), bool(negative_prompt) and not negative_read),
                                       (no_tile(family), tile)) if applies]

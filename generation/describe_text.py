"""Captions into prompts: /describe's text rewriting, with no model in it.

A captioner writes sentences ("The image shows a red fox sitting in the snow. The background is
blurred."); a prompt is comma-separated phrases ("red fox sitting in the snow, blurred background").
`to_prompt` drops the narrator's framing, splits sentences and clauses into phrases and trims the
result to what the text encoder reads in one window.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from generation.requests import normalise_text

# What the text encoder reads in one window, without its start and end tokens (CLIP: 77 - 2).
PROMPT_WINDOW_TOKENS = 75

# Narration that says nothing about the picture, at the start of a sentence.
_FRAMING = re.compile(
    r"^(?:in\s+)?(?:this|the)\s+(?:image|picture|photo(?:graph)?|painting|illustration|scene|artwork)\s+"
    r"(?:shows|depicts|features|captures|is|contains|displays|presents)(?:\s+of)?\s+"
    r"|^(?:there\s+(?:is|are)|we\s+can\s+see|it\s+is|this\s+is)\s+",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|[.!?]$")
# Clause joints that become a comma in a prompt.
_JOINT = re.compile(r"[;:]|\s+(?:and\s+)?(?:while|whereas|with\s+the|which\s+is|that\s+is)\s+", re.IGNORECASE)
_LEADING_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)
# Markup and brackets mean something in the prompt language (weights, alternatives): drop them.
_PROMPT_SYNTAX = re.compile(r"[()\[\]{}<>|\\`*_~#@]")


def phrases(caption: str) -> list[str]:
    """The caption's sentences and clauses as prompt phrases, framing and leading articles dropped."""
    text = normalise_text(_PROMPT_SYNTAX.sub(" ", caption))
    found: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = _FRAMING.sub("", sentence.strip())
        for part in _JOINT.split(sentence):
            phrase = _LEADING_ARTICLE.sub("", part.strip(" ,.!?-")).strip()
            if phrase and phrase.casefold() not in {seen.casefold() for seen in found}:
                found.append(phrase)
    return found


def to_prompt(caption: str, count_tokens: Callable[[str], int], max_tokens: int = PROMPT_WINDOW_TOKENS) -> str:
    """A prompt from a caption: its phrases joined with commas, as many whole phrases as fit in
    `max_tokens` (a first phrase longer than that is cut word by word). Empty when nothing is left."""
    kept: list[str] = []
    for phrase in phrases(caption):
        if count_tokens(", ".join([*kept, phrase])) <= max_tokens:
            kept.append(phrase)
        elif not kept:
            kept.append(_fit_words(phrase, count_tokens, max_tokens))
            break
        else:
            break
    return ", ".join(part for part in kept if part)


def _fit_words(phrase: str, count_tokens: Callable[[str], int], max_tokens: int) -> str:
    words = phrase.split()
    while words and count_tokens(" ".join(words)) > max_tokens:
        words.pop()
    return " ".join(words)


def distinct(prompts: Iterable[str]) -> list[str]:
    """Non-empty prompts, first of each (ignoring case) kept, order kept."""
    seen: set[str] = set()
    kept = []
    for prompt in prompts:
        key = prompt.casefold()
        if prompt and key not in seen:
            seen.add(key)
            kept.append(prompt)
    return kept

"""The operator's blocklist (`SDBOT_BLOCKED_WORDS`), checked before a prompt is queued.

Pure Python and cheap, so the bot can call it without loading any model. Matching is on whole
words, ignoring case, accents and punctuation: "ass" does not match "class", and "bad word"
matches "Bad, WORD!" and "bad-word". Only the prompt is checked: negative prompts name what the
user does *not* want, so blocked words are expected there.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

from generation.errors import BlockedPrompt

# A word is a run of letters and digits; anything else (spaces, punctuation, "_") separates words.
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """Lower-case words with accents removed, e.g. "Naïve, BAD-word!" -> ["naive", "bad", "word"]."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _WORD.findall(bare.casefold())


class PromptFilter:
    """A compiled blocklist: terms become word tuples, looked up at every word position."""

    def __init__(self, blocked: Iterable[str]) -> None:
        self._terms: dict[tuple[str, ...], str] = {}
        for term in blocked:
            key = tuple(words(term))
            if key:  # a term of pure punctuation can never match a word
                self._terms.setdefault(key, term.strip())
        self._lengths = sorted({len(key) for key in self._terms})

    def find(self, text: str) -> str | None:
        """The first blocked term (as the operator wrote it) that occurs in `text`, if any."""
        if not self._terms:
            return None
        tokens = words(text)
        for start in range(len(tokens)):
            for length in self._lengths:
                term = self._terms.get(tuple(tokens[start : start + length]))
                if term is not None:
                    return term
        return None

    def check(self, prompt: str) -> None:
        term = self.find(prompt)
        if term is not None:
            raise BlockedPrompt(f"the prompt contains the blocked term {term!r}; please rephrase it")


@lru_cache(maxsize=8)
def _filter(blocked: tuple[str, ...]) -> PromptFilter:
    return PromptFilter(blocked)


def check_prompt(prompt: str, blocked_words: Sequence[str]) -> None:
    """Raise BlockedPrompt naming the first blocked word or phrase found in `prompt`."""
    _filter(tuple(blocked_words)).check(prompt)

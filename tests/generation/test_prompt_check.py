"""The operator's blocklist: whole words and phrases, whatever the case, accents or punctuation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from generation.errors import BlockedPrompt, InvalidRequest
from generation.prompt_check import PromptFilter, check_prompt

BLOCKED = ["ass", "bad word", "Gore"]


@pytest.mark.parametrize(
    ("prompt", "term"),
    [
        ("an ass in a field", "ass"),
        ("ASS!", "ass"),
        ("a Bad, WORD! here", "bad word"),
        ("bad-word", "bad word"),
        ("bad\n\tword", "bad word"),
        ("so much gore", "Gore"),
        ("g\u00f3re", "Gore"),  # accents do not hide a word
        ("\uff27\uff2f\uff32\uff25", "Gore"),  # nor full-width letters
    ],
)
def test_blocked_terms_are_found(prompt: str, term: str) -> None:
    with pytest.raises(BlockedPrompt) as caught:
        check_prompt(prompt, BLOCKED)
    assert str(caught.value) == f"the prompt contains the blocked term {term!r}; please rephrase it"
    assert isinstance(caught.value, InvalidRequest)  # the bot handles it like any refused request


@pytest.mark.parametrize(
    "prompt",
    ["a classic bass guitar", "passage of time", "badword", "a bad idea, word up? no: bad words", "gory", ""],
)
def test_only_whole_words_match(prompt: str) -> None:
    assert PromptFilter(BLOCKED).find(prompt) is None
    check_prompt(prompt, BLOCKED)  # and the check lets it through


def test_an_empty_blocklist_allows_everything() -> None:
    check_prompt("anything at all", [])
    assert PromptFilter(["", "  ", "!!"]).find("!! anything") is None


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
separators = st.sampled_from([" ", ", ", "! ", " - ", "\n", "... "])


@given(
    before=st.lists(words, max_size=5),
    after=st.lists(words, max_size=5),
    separator=separators,
    upper=st.booleans(),
)
def test_a_blocked_phrase_is_found_anywhere(before: list[str], after: list[str], separator: str, upper: bool) -> None:
    phrase = "BAD" + separator + "Word" if upper else "bad" + separator + "word"
    prompt = " ".join([*before, phrase, *after])
    assert PromptFilter(["bad word"]).find(prompt) == "bad word"

"""Captions rewritten as prompts: no narration, comma-separated phrases, one encoder window."""

from __future__ import annotations

from generation.describe_text import PROMPT_WINDOW_TOKENS, distinct, phrases, to_prompt


def words(text: str) -> int:
    return len(text.split())


def test_narration_goes_and_sentences_become_phrases() -> None:
    caption = (
        "The image shows a red fox sitting in the snow. The background is blurred, "
        "while the light is soft and golden. There are pine trees."
    )
    assert to_prompt(caption, words) == (
        "red fox sitting in the snow, background is blurred, light is soft and golden, pine trees"
    )


def test_prompt_syntax_and_markup_in_a_caption_are_dropped() -> None:
    assert phrases("A (cat) in a [hat] {yes|no} with **bold** `code` @everyone.") == [
        "cat in a hat yes no with bold code everyone"
    ]


def test_whole_phrases_are_kept_up_to_the_window() -> None:
    caption = ". ".join(f"phrase number {n} here" for n in range(40))
    prompt = to_prompt(caption, words)
    assert words(prompt) <= PROMPT_WINDOW_TOKENS
    assert prompt.startswith("phrase number 0 here, phrase number 1 here")
    assert all(part.startswith("phrase number") and part.endswith("here") for part in prompt.split(", "))


def test_one_phrase_longer_than_the_window_is_cut_by_words() -> None:
    prompt = to_prompt(" ".join(["word"] * 200), words, max_tokens=10)
    assert prompt == " ".join(["word"] * 10)


def test_repeated_phrases_and_prompts_appear_once() -> None:
    assert phrases("A cat. a cat. A dog.") == ["cat", "dog"]
    assert distinct(["a", "", "A", "b"]) == ["a", "b"]

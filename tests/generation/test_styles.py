"""A1111 styles.csv: loading, clear errors, applying in order, and autocomplete matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation.prompt_syntax import parse_weights
from generation.styles import (
    Style,
    StyleFileError,
    apply_styles,
    load_styles,
    match_styles,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "styles.example.csv"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "styles.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_a1111_rows_with_quotes_placeholders_and_empty_negatives(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'name,prompt,negative_prompt\n'
        'Watercolor,"watercolor of {prompt}, soft washes","photo, 3d"\n'
        '\n'
        'Sharp,"sharp focus, detailed",\n'
        'Multi-line,"first line\nsecond line",blurry\n'
        'Bare,plain words\n',
    )
    styles = load_styles(path)
    assert list(styles) == ["Watercolor", "Sharp", "Multi-line", "Bare"]
    assert styles["Watercolor"] == Style("Watercolor", "watercolor of {prompt}, soft washes", "photo, 3d")
    assert styles["Sharp"].negative_prompt == ""
    assert styles["Multi-line"].prompt == "first line\nsecond line"
    assert styles["Bare"] == Style("Bare", "plain words", "")


def test_a_byte_order_mark_and_header_case_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    path.write_bytes("\ufeffName,Prompt,Negative_Prompt\nA,b,c\n".encode())
    assert load_styles(path) == {"A": Style("A", "b", "c")}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["is empty"]),
        ("title,prompt\nA,b\n", ["line 1", "no name column"]),
        ("name,negative_prompt\nA,b\n", ["line 1", "no prompt column"]),
        ('name,prompt,negative_prompt\nA,b,c\n,orphan prompt,\n', ["line 3", "has no name"]),
        ("name,prompt,negative_prompt\nA,b,c\nB,d,e,f\n", ["line 3", "4 fields", "quotes"]),
        ('name,prompt,negative_prompt\nA,"two\nlines",c\na,b,c\n', ["line 4", "“a”", "already used on line 2"]),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StyleFileError) as raised:
        load_styles(path)
    assert str(path) in str(raised.value)
    for word in words:
        assert word in str(raised.value)


def test_a_missing_file_is_a_style_file_error(tmp_path: Path) -> None:
    with pytest.raises(StyleFileError, match="cannot read"):
        load_styles(tmp_path / "nope.csv")


WRAP = Style("Wrap", "photo of {prompt}, 35mm", "{prompt}, cartoon")
TAIL = Style("Tail", "highly detailed", "blurry")
EMPTY = Style("Empty")


@pytest.mark.parametrize(
    ("prompt", "negative", "styles", "expected"),
    [
        ("a fox", "", [WRAP], ("photo of a fox, 35mm", "cartoon")),  # no dangling ", "
        ("a fox", "ugly", [WRAP], ("photo of a fox, 35mm", "ugly, cartoon")),
        ("a fox", "", [TAIL], ("a fox, highly detailed", "blurry")),
        ("a fox ", "ugly", [TAIL], ("a fox, highly detailed", "ugly, blurry")),
        ("", "", [TAIL], ("highly detailed", "blurry")),
        ("a fox", "ugly", [EMPTY], ("a fox", "ugly")),
        ("a fox", "", [], ("a fox", "")),
        # In order: the second style wraps what the first made.
        ("a fox", "ugly", [TAIL, WRAP], ("photo of a fox, highly detailed, 35mm", "ugly, blurry, cartoon")),
        ("a fox", "ugly", [WRAP, TAIL], ("photo of a fox, 35mm, highly detailed", "ugly, cartoon, blurry")),
    ],
)
def test_apply_styles(prompt: str, negative: str, styles: list[Style], expected: tuple[str, str]) -> None:
    assert apply_styles(prompt, negative, styles) == expected


CATALOGUE = {name: Style(name) for name in ["Photo", "Portrait photo", "Anime", "Oil painting", "Photobash"]}


@pytest.mark.parametrize(
    ("typed", "names"),
    [
        ("photo", ["Photo", "Photobash", "Portrait photo"]),  # prefix matches first
        ("PAINT", ["Oil painting"]),
        (" anime ", ["Anime"]),
        ("zebra", []),
        ("", list(CATALOGUE)),
    ],
)
def test_match_styles(typed: str, names: list[str]) -> None:
    assert [style.name for style in match_styles(CATALOGUE, typed)] == names


def test_match_styles_stops_at_the_discord_limit() -> None:
    many = {f"style {n}": Style(f"style {n}") for n in range(40)}
    assert len(match_styles(many, "style")) == 25
    assert [s.name for s in match_styles(many, "style", limit=3)] == ["style 0", "style 1", "style 2"]


def test_the_example_catalogue_is_valid_and_useful() -> None:
    styles = load_styles(EXAMPLE)
    assert len(styles) >= 20
    for wanted in ["Photo", "Cinematic", "Anime", "Watercolor", "Oil painting", "Pixel art", "Isometric"]:
        assert wanted in styles
    for style in styles.values():
        assert style.prompt
        # Every style must survive the emphasis parser the prompts go through.
        parse_weights(style.prompt)
        parse_weights(style.negative_prompt)
        prompt, _ = apply_styles("a red fox", "", [style])
        assert "a red fox" in prompt

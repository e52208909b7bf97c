"""The prompt language, without a model: A1111 emphasis, inline --flags, {a, b} permutations and
the 75-token chunking rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from generation.prompt_syntax import (
    BREAK_FRAGMENT,
    InlineParameters,
    PromptSyntaxError,
    chunk_tokens,
    expand_permutations,
    parse_inline_parameters,
    parse_weights,
    plain_text,
)

# ---------------------------------------------------------------------------------------------
# parse_weights
# ---------------------------------------------------------------------------------------------

A1111_EXAMPLES = [
    # The examples from A1111's documentation of its attention syntax.
    ("normal text", [("normal text", 1.0)]),
    ("a (word)", [("a ", 1.0), ("word", 1.1)]),
    ("a ((word))", [("a ", 1.0), ("word", 1.21)]),
    ("a [word]", [("a ", 1.0), ("word", 1 / 1.1)]),
    ("a [[word]]", [("a ", 1.0), ("word", 1 / 1.21)]),
    ("a (word:1.5)", [("a ", 1.0), ("word", 1.5)]),
    ("a (word:0.25)", [("a ", 1.0), ("word", 0.25)]),
    (r"a \(word\)", [("a (word)", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    (
        "(masterpiece:1.2), ((detailed eyes)), [blurry]",
        [("masterpiece", 1.2), (", ", 1.0), ("detailed eyes", 1.21), (", ", 1.0), ("blurry", 1 / 1.1)],
    ),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.573),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641),
            (".", 1.1),
        ],
    ),
]

MORE_CASES = [
    ("", [("", 1.0)]),
    # Nested explicit weights multiply with the brackets around them.
    ("((a:1.5) b)", [("a", 1.65), (" b", 1.1)]),
    ("[(a:2)]", [("a", 2 / 1.1)]),
    ("(a:0)", [("a", 0.0)]),
    ("(a:10)", [("a", 10.0)]),
    ("(a: 1.5 )", [("a", 1.5)]),
    ("(a:.5)", [("a", 0.5)]),
    # Escapes: every bracket and the backslash itself; any other backslash stays.
    (r"\[x\] \\ y", [("[x] \\ y", 1.0)]),
    (r"a \q b", [("a \\q b", 1.0)]),
    (r"(a \) b)", [("a ) b", 1.1)]),
    # Unbalanced: open brackets close at the end, stray closers are text.
    ("a [b", [("a ", 1.0), ("b", 1 / 1.1)]),
    ("((a", [("a", 1.21)]),
    ("a) b] c", [("a) b] c", 1.0)]),
    ("a) (b", [("a) ", 1.0), ("b", 1.1)]),
    # A colon that is not a weight is text; the bracket still emphasises.
    ("(x:abc)", [("x:abc", 1.1)]),
    ("ratio 16:9", [("ratio 16:9", 1.0)]),
    ("[a:b]", [("a:b", 1 / 1.1)]),
    (":1.5) a", [(":1.5) a", 1.0)]),
    # A bar outside square brackets is text.
    ("a | b", [("a | b", 1.0)]),
    ("(a|b)", [("a|b", 1.1)]),
    # Equal weights merge across brackets.
    ("(a)(b:1.1) c", [("ab", 1.1), (" c", 1.0)]),
    ("a (b:1) c", [("a b c", 1.0)]),
    # Lower-case "and" and "break" are ordinary words.
    ("black and white, break dance", [("black and white, break dance", 1.0)]),
    ("BREAKFAST and ANDROID", [("BREAKFAST and ANDROID", 1.0)]),
]


@pytest.mark.parametrize(("text", "expected"), A1111_EXAMPLES + MORE_CASES)
def test_weights(text: str, expected: list[tuple[str, float]]) -> None:
    assert_fragments(parse_weights(text), expected)


def assert_fragments(parsed: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [piece for piece, _ in parsed] == [piece for piece, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a BREAK b", [("a", 1.0), BREAK_FRAGMENT, ("b", 1.0)]),
        ("a, BREAK, b", [("a,", 1.0), BREAK_FRAGMENT, (", b", 1.0)]),
        ("BREAK a", [BREAK_FRAGMENT, ("a", 1.0)]),
        ("a BREAK BREAK b", [("a", 1.0), BREAK_FRAGMENT, BREAK_FRAGMENT, ("b", 1.0)]),
        ("(a BREAK b)", [("a", 1.1), BREAK_FRAGMENT, ("b", 1.1)]),
    ],
)
def test_break_is_its_own_fragment(text: str, expected: list[tuple[str, float]]) -> None:
    assert_fragments(parse_weights(text), expected)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a [cat:dog:0.5] sitting", ["prompt editing", "[cat:dog:0.5]"]),
        ("[cat:dog:5]", ["prompt editing", "[cat:dog:5]"]),
        ("[cat::0.5]", ["prompt editing", "[cat::0.5]"]),
        ("[hat:0.3]", ["prompt editing", "[hat:0.3]"]),
        ("[(big) cat: dog : 12 ]", ["prompt editing"]),
        ("[cat|dog]", ["alternating", "[cat|dog]"]),
        ("[cat|dog|fox] in a field", ["alternating"]),
        ("a cat AND a dog", ["AND", "lower case"]),
        ("(red:12) car", ["the weight 12 on “red” is outside 0 to 10"]),
        ("(dark red:-1)", ["the weight -1 on “dark red” is outside 0 to 10"]),
        ("((red:10.5))", ["10.5", "“red”"]),
    ],
)
def test_refusals_name_the_problem(text: str, words: list[str]) -> None:
    with pytest.raises(PromptSyntaxError) as raised:
        parse_weights(text)
    for word in words:
        assert word in str(raised.value)


def test_colons_inside_round_brackets_are_not_editing() -> None:
    # The colon belongs to the weight of the inner round bracket, not to the square one.
    assert_fragments(parse_weights("[(a:1.2)] b"), [("a", 1.2 / 1.1), (" b", 1.0)])
    assert parse_weights(r"\[a:b:0.5\]") == [("[a:b:0.5]", 1.0)]


@given(st.text(alphabet="ab ()[]:\\1.5", max_size=30))
def test_plain_text_survives_any_bracket_soup(text: str) -> None:
    # Whatever is typed, parsing either refuses it clearly or keeps every non-syntax letter in order.
    try:
        parsed = parse_weights(text)
    except PromptSyntaxError:
        return
    letters = "".join(piece for piece, _ in parsed)
    assert [c for c in letters if c in "ab"] == [c for c in text if c in "ab"]
    assert all(0 <= weight <= 10 for _, weight in parsed)


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("a (red:1.3) fox", ("a red fox", True)),
        ("a [small] ((very)) cat BREAK blue sky", ("a small very cat, blue sky", True)),
        ("BREAK a BREAK", ("a", True)),
        ("re(d:1.2)dish", ("reddish", True)),
        (r"a \(literal\) bracket, (x:1.0)", ("a (literal) bracket, x", False)),
        ("plain, words", ("plain, words", False)),
    ],
)
def test_plain_text_keeps_the_words_and_says_whether_weights_were_dropped(text: str, plain: tuple[str, bool]) -> None:
    # What FLUX's T5 reads instead of `(word:1.3)` drawn as literal text.
    assert plain_text(text) == plain


# ---------------------------------------------------------------------------------------------
# parse_inline_parameters
# ---------------------------------------------------------------------------------------------


def test_no_flags_leaves_the_prompt_alone() -> None:
    assert parse_inline_parameters("a cat -- in a hat") == ("a cat -- in a hat", InlineParameters())


def test_every_flag() -> None:
    prompt, found = parse_inline_parameters(
        "a lighthouse --ar 16:9 --no people, boats --seed 42 --steps 20 --tile --repeat 3"
    )
    assert prompt == "a lighthouse"
    assert found.aspect == (16, 9)
    assert found.no == "people, boats"
    assert (found.seed, found.steps, found.tile, found.repeat) == (42, 20, True, 3)
    assert found.found == {
        "ar": "16:9",
        "no": "people, boats",
        "seed": "42",
        "steps": "20",
        "tile": "",
        "repeat": "3",
    }


@pytest.mark.parametrize(
    ("text", "prompt", "aspect"),
    [
        ("a cat --aspect 2:3", "a cat", (2, 3)),
        ("a cat —ar 3:2", "a cat", (3, 2)),  # phones turn "--" into an em dash
        ("a cat –ar 3:2", "a cat", (3, 2)),  # and sometimes an en dash
        ("--AR 1:1 a cat", "a cat", (1, 1)),
        ("a   cat --ar 4:5   wearing a hat", "a cat wearing a hat", (4, 5)),
    ],
)
def test_aspect_and_dashes(text: str, prompt: str, aspect: tuple[int, int]) -> None:
    assert parse_inline_parameters(text)[0] == prompt
    assert parse_inline_parameters(text)[1].aspect == aspect


def test_no_takes_everything_up_to_the_next_flag() -> None:
    prompt, found = parse_inline_parameters("a forest —no fog, deer, text —tile")
    assert (prompt, found.no, found.tile) == ("a forest", "fog, deer, text", True)


def test_random_seed_and_defaults() -> None:
    prompt, found = parse_inline_parameters("a cat --seed -1")
    assert (prompt, found.seed, found.found) == ("a cat", None, {"seed": "-1"})
    assert (found.tile, found.repeat, found.no, found.steps) == (False, 1, None, None)


def test_an_em_dash_before_an_ordinary_word_is_text() -> None:
    assert parse_inline_parameters("art nouveau —style of mucha")[0] == "art nouveau —style of mucha"
    assert parse_inline_parameters("1990--2000 posters")[0] == "1990--2000 posters"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a cat --chaos 50", ["--chaos", "--ar", "--no", "--seed", "--tile", "--repeat"]),
        ("a cat --seed 4294967296", ["outside 0 to 4294967295"]),
        ("a cat --seed -2", ["outside"]),
        ("a cat --seed abc", ["--seed needs a whole number", "“abc”"]),
        ("a cat --seed", ["--seed needs a whole number, not nothing"]),
        ("a cat --ar 16x9", ["--ar needs a ratio", "16:9"]),
        ("a cat --aspect 0:9", ["--aspect needs a ratio"]),
        ("a cat --steps 0", ["at least 1"]),
        ("a cat --repeat -3", ["at least 1"]),
        ("a cat --no", ["--no needs"]),
        ("a cat --seed 1 --seed 2", ["given twice"]),
        ("a cat --ar 1:1 --aspect 2:3", ["twice"]),
    ],
)
def test_bad_flags(text: str, words: list[str]) -> None:
    with pytest.raises(PromptSyntaxError) as raised:
        parse_inline_parameters(text)
    for word in words:
        assert word in str(raised.value)


# ---------------------------------------------------------------------------------------------
# expand_permutations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a bird", ["a bird"]),
        ("", [""]),
        ("a {red, green} bird", ["a red bird", "a green bird"]),
        ("{a {b, c}, d}", ["a b", "a c", "d"]),
        (
            "a {red, blue} {cat, dog}",
            ["a red cat", "a red dog", "a blue cat", "a blue dog"],
        ),
        ("{solo}", ["solo"]),
        ("a {, big} cat", ["a cat", "a big cat"]),  # an empty option leaves no double space
        (r"a \{not, a group\}", ["a {not, a group}"]),
        (r"{one\, two, three}", ["one, two", "three"]),
        # Weight escapes pass through untouched for parse_weights.
        (r"\(a\) {b, c}", [r"\(a\) b", r"\(a\) c"]),
        (r"\\{a, b}", [r"\\a", r"\\b"]),
        ("({red, blue}:1.3) car", ["(red:1.3) car", "(blue:1.3) car"]),
    ],
)
def test_permutations(text: str, expected: list[str]) -> None:
    assert expand_permutations(text, cap=10) == expected


def test_permutation_cap_counts_before_expanding() -> None:
    assert len(expand_permutations("{a, b} {c, d} {e, f}", cap=8)) == 8
    with pytest.raises(PromptSyntaxError, match="make 9 prompts; the limit is 8"):
        expand_permutations("{a, b, c} {d, e, f}", cap=8)
    # 10 groups of 10 would be 10**10 strings; the count is refused without building them.
    with pytest.raises(PromptSyntaxError, match="10000000000 prompts"):
        expand_permutations(" ".join(["{" + ", ".join("abcdefghij") + "}"] * 10), cap=40)


@pytest.mark.parametrize(("text", "word"), [("a {red, green bird", "never closed"), ("a red} bird", "has no")])
def test_unbalanced_braces(text: str, word: str) -> None:
    with pytest.raises(PromptSyntaxError, match=word):
        expand_permutations(text, cap=10)


# ---------------------------------------------------------------------------------------------
# chunk_tokens
# ---------------------------------------------------------------------------------------------

COMMA = 0


def test_short_and_empty_prompts_are_one_chunk() -> None:
    assert [c.tokens for c in chunk_tokens([], COMMA)] == [[]]
    chunks = chunk_tokens([([5, 6], 1.0), ([7], 1.5)], COMMA)
    assert [(c.tokens, c.weights) for c in chunks] == [([5, 6, 7], [1.0, 1.0, 1.5])]


def test_full_chunks_of_75() -> None:
    chunks = chunk_tokens([(list(range(1, 161)), 1.0)], COMMA)
    assert [len(c.tokens) for c in chunks] == [75, 75, 10]
    assert chunks[1].tokens[0] == 76


def test_a_chunk_filling_up_soon_after_a_comma_ends_at_the_comma() -> None:
    tokens = list(range(1, 61)) + [COMMA] + list(range(100, 130))  # comma is token 61
    chunks = chunk_tokens([(tokens, 1.2)], COMMA)
    assert [len(c.tokens) for c in chunks] == [61, 30]
    assert chunks[0].tokens[-1] == COMMA and chunks[1].tokens[0] == 100
    assert chunks[1].weights == [1.2] * 30


def test_a_comma_more_than_20_tokens_back_is_ignored() -> None:
    tokens = list(range(1, 51)) + [COMMA] + list(range(100, 130))  # 24 tokens after the comma at 75
    assert [len(c.tokens) for c in chunk_tokens([(tokens, 1.0)], COMMA)] == [75, 6]


def test_exactly_20_tokens_after_the_comma_still_moves() -> None:
    tokens = list(range(1, 55)) + [COMMA] + list(range(100, 130))  # comma at 55: 20 more fill 75
    assert [len(c.tokens) for c in chunk_tokens([(tokens, 1.0)], COMMA)] == [55, 30]
    tokens = list(range(1, 54)) + [COMMA] + list(range(100, 130))  # comma at 54: 21 more fill 75
    assert [len(c.tokens) for c in chunk_tokens([(tokens, 1.0)], COMMA)] == [75, 9]


def test_break_ends_the_chunk_unless_it_is_empty() -> None:
    pieces = [([1, 2], 1.0), BREAK_PIECE, ([3], 1.1), BREAK_PIECE, BREAK_PIECE, ([4], 1.0), BREAK_PIECE]
    assert [c.tokens for c in chunk_tokens(pieces, COMMA)] == [[1, 2], [3], [4]]
    assert [c.tokens for c in chunk_tokens([BREAK_PIECE], COMMA)] == [[]]


BREAK_PIECE: tuple[list[int], float] = ([], BREAK_FRAGMENT[1])

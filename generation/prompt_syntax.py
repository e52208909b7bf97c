"""The prompt language members already speak, as pure Python (no torch, no model).

- `parse_weights`: AUTOMATIC1111's emphasis syntax, `(word)`, `[word]`, `(word:1.5)`, escapes and
  `BREAK`, turned into (text, weight) fragments. The A1111 features this bot cannot honour (prompt
  editing `[a:b:0.5]`, alternation `[a|b]`, composition with `AND`) are refused with a message
  rather than silently drawn as literal text.
- `parse_inline_parameters`: Midjourney-style flags typed in the prompt (`--ar 16:9`, `--no
  people`, `--seed 5`, ...), removed from the text and returned as `InlineParameters`.
- `expand_permutations`: Midjourney's `{red, green}` permutations, one prompt per combination.
- `chunk_tokens`: A1111's rule for cutting a long tokenized prompt into 75-token chunks (commas and
  `BREAK`), on plain token ids so it is testable without a tokenizer.

The order the bot applies them in: inline parameters, then permutations, then weights (per prompt).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from sdbot.types import MAX_SEED

# Round brackets multiply by this, square brackets divide by it (A1111's documented value).
EMPHASIS = 1.1
MIN_WEIGHT, MAX_WEIGHT = 0.0, 10.0
# `BREAK` comes back from parse_weights as this fragment: weights are never negative otherwise.
BREAK_WEIGHT = -1.0
BREAK_FRAGMENT: tuple[str, float] = ("BREAK", BREAK_WEIGHT)
# CLIP sees 77 positions: a start token, 75 prompt tokens and an end token.
CHUNK_TOKENS = 75
# A chunk that fills up within this many tokens after a comma is cut at the comma instead.
COMMA_BACKTRACK = 20


class PromptSyntaxError(ValueError):
    """The prompt uses syntax we refuse; the message is written for the member who typed it."""


def is_break(fragment: tuple[str, float]) -> bool:
    return fragment[1] == BREAK_WEIGHT


# ---------------------------------------------------------------------------------------------
# Emphasis: (word), [word], (word:1.5)
# ---------------------------------------------------------------------------------------------

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_LEXEME = re.compile(
    rf"""
      (?P<escape>\\[()\[\]\\])
    | (?P<weight>:\s*(?P<number>{_NUMBER})\s*\))
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<colon>:)
    | (?P<bar>\|)
    | (?P<text>[^\\()\[\]:|]+|\\)
    """,
    re.VERBOSE,
)
# BREAK eats the whitespace around it, so "a BREAK b" gives "a" and "b", not "a " and " b".
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_AND = re.compile(r"\bAND\b")
_WHOLE_NUMBER = re.compile(rf"\s*{_NUMBER}\s*")


@dataclass
class _Open:
    """An open bracket: where its fragments start in the output and where it is in the source."""

    start: int
    position: int
    colons: list[int] = field(default_factory=list)  # only tracked for square brackets
    bar: bool = False


def _quote(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return "“" + (text if len(text) <= limit else text[: limit - 1] + "…") + "”"


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) fragments with AUTOMATIC1111's emphasis rules.

    `(x)` multiplies by 1.1, `[x]` divides by 1.1, `(x:1.5)` multiplies by exactly 1.5; nesting
    multiplies. `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are literal characters. Brackets still open at
    the end of the prompt close there; a stray `)` or `]` is literal text. Adjacent fragments of
    equal weight are merged. `BREAK` (capitals, a word on its own) comes back as `BREAK_FRAGMENT`.
    An empty prompt gives `[("", 1.0)]`. Raises PromptSyntaxError for prompt editing, alternation,
    `AND` and weights outside 0 to 10.
    """
    fragments: list[list[str | float]] = []
    round_open: list[_Open] = []
    square_open: list[_Open] = []

    def scale(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            if fragment[1] != BREAK_WEIGHT:
                fragment[1] = float(fragment[1]) * factor

    def innermost_square() -> _Open | None:
        # Colons and bars only mean editing/alternation when the square bracket is the closest one.
        if not square_open:
            return None
        if round_open and round_open[-1].position > square_open[-1].position:
            return None
        return square_open[-1]

    def add_text(piece: str) -> None:
        if _AND.search(piece):
            raise PromptSyntaxError(
                "“AND” in capitals combines several prompts in AUTOMATIC1111, which this bot does not "
                "support; write “and” in lower case"
            )
        parts = _BREAK.split(piece)
        for index, part in enumerate(parts):
            if index:
                fragments.append(list(BREAK_FRAGMENT))
            if part:
                fragments.append([part, 1.0])

    for match in _LEXEME.finditer(text):
        kind = match.lastgroup
        lexeme = match.group()
        if kind == "escape":
            fragments.append([lexeme[1], 1.0])
        elif kind == "open":
            opened = _Open(start=len(fragments), position=match.start())
            (round_open if lexeme == "(" else square_open).append(opened)
        elif kind == "weight" and round_open:
            opened = round_open.pop()
            number = match.group("number")
            weight = float(number)
            if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
                target = _quote(text[opened.position + 1 : match.start()])
                raise PromptSyntaxError(
                    f"the weight {number} on {target} is outside {MIN_WEIGHT:g} to {MAX_WEIGHT:g}"
                )
            scale(opened.start, weight)
        elif kind == "close" and lexeme == ")" and round_open:
            scale(round_open.pop().start, EMPHASIS)
        elif kind == "close" and lexeme == "]" and square_open:
            opened = square_open.pop()
            _refuse_scheduling(text, opened, match.start())
            scale(opened.start, 1 / EMPHASIS)
        else:
            # Text, and brackets or weights with nothing to close: A1111 draws those as written.
            if kind in ("colon", "bar") and (square := innermost_square()) is not None:
                if kind == "colon":
                    square.colons.append(match.start())
                else:
                    square.bar = True
            add_text(lexeme)

    for opened in round_open:
        scale(opened.start, EMPHASIS)
    for opened in square_open:
        scale(opened.start, 1 / EMPHASIS)

    merged: list[tuple[str, float]] = []
    for piece, weight in fragments:
        assert isinstance(piece, str)
        weight = float(weight)
        if merged and weight != BREAK_WEIGHT and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


def plain_text(text: str) -> tuple[str, bool]:
    """The prompt's words without A1111 emphasis, weights and `BREAK` (for text encoders that take
    no weights, as FLUX's T5), and whether there was any to drop. Raises PromptSyntaxError as
    `parse_weights` does."""
    fragments = parse_weights(text)
    weighted = any(weight != 1.0 for _, weight in fragments)
    words = "".join(", " if is_break((piece, weight)) else piece for piece, weight in fragments)
    return re.sub(r"\s+,", ",", " ".join(words.split())).strip(", "), weighted


def _refuse_scheduling(text: str, opened: _Open, end: int) -> None:
    """`[a|b]` alternates words each step and `[a:b:0.5]`, `[a:0.5]`, `[a::0.5]` switch words at a
    step: both change the prompt during sampling, which one embedding per image cannot do."""
    written = _quote(text[opened.position : end + 1])
    if opened.bar:
        raise PromptSyntaxError(
            f"alternating words like {written} is not supported; pick one of them, or use "
            "{a, b} to make one image with each"
        )
    if opened.colons and _WHOLE_NUMBER.fullmatch(text[opened.colons[-1] + 1 : end]):
        raise PromptSyntaxError(
            f"prompt editing like {written} (switching words part-way through the steps) is not "
            "supported; write the words you want, or \\[ and \\] for literal brackets"
        )


# ---------------------------------------------------------------------------------------------
# Inline parameters: --ar 16:9 --no people --seed 5
# ---------------------------------------------------------------------------------------------

# Typed name -> InlineParameters field. Flags are matched without regard to case.
_FLAGS = {
    "ar": "aspect",
    "aspect": "aspect",
    "no": "no",
    "seed": "seed",
    "steps": "steps",
    "tile": "tile",
    "repeat": "repeat",
}
KNOWN_FLAGS = ("--ar", "--aspect", "--no", "--seed", "--steps", "--tile", "--repeat")
# A flag starts the prompt or follows whitespace: "--" or a dash that phones and Discord made of it
# (— em dash, – en dash). Only "--" flags must be known: a dash before an unknown word is just text.
_FLAG = re.compile(r"(?:(?<=\s)|^)(?P<dash>--|—|–)(?P<name>[A-Za-z][\w-]*)")
_RATIO = re.compile(r"(\d+)\s*:\s*(\d+)")


@dataclass(frozen=True)
class InlineParameters:
    """Flags found in a prompt. `found` maps each typed flag name (lower case, without dashes) to
    the value as typed ("" for --tile), so replies can echo what the member wrote."""

    aspect: tuple[int, int] | None = None
    no: str | None = None
    seed: int | None = None
    steps: int | None = None
    tile: bool = False
    repeat: int = 1
    found: dict[str, str] = field(default_factory=dict)


def parse_inline_parameters(text: str) -> tuple[str, InlineParameters]:
    """Remove `--ar W:H` / `--aspect W:H`, `--no a, b`, `--seed N` (-1: random), `--steps N`,
    `--tile` and `--repeat N` from the prompt; return the rest (whitespace collapsed) and the
    values. `--no` takes everything up to the next flag; the others take one word. Raises
    PromptSyntaxError for an unknown `--flag`, a flag given twice or a bad value."""
    flags = [m for m in _FLAG.finditer(text) if m["dash"] == "--" or m["name"].lower() in _FLAGS]
    for match in flags:
        if match["name"].lower() not in _FLAGS:
            raise PromptSyntaxError(
                f"--{match['name']} is not a flag this bot knows; the flags are {', '.join(KNOWN_FLAGS)}"
            )

    kept: list[str] = []
    values: dict[str, object] = {}  # canonical name -> checked value
    found: dict[str, str] = {}
    cursor = 0
    for index, match in enumerate(flags):
        kept.append(text[cursor : match.start()])
        typed = match["name"].lower()
        name = _FLAGS[typed]
        if name in values:
            raise PromptSyntaxError(f"--{typed} is given twice; keep one")
        rest_end = flags[index + 1].start() if index + 1 < len(flags) else len(text)
        rest = text[match.end() : rest_end]
        if name == "tile":
            raw, cursor = "", match.end()
            values[name] = True
        elif name == "no":
            raw, cursor = rest.strip(), rest_end
            if not raw:
                raise PromptSyntaxError("--no needs the things to leave out after it, like --no people, text")
            values[name] = raw
        else:
            word = re.match(r"\s*(\S*)", rest)
            assert word is not None
            raw, cursor = word.group(1), match.end() + word.end()
            values[name] = _flag_value(typed, name, raw)
        found[typed] = raw
    kept.append(text[cursor:])

    prompt = re.sub(r"[ \t]{2,}", " ", "".join(kept)).strip()
    return prompt, InlineParameters(**values, found=found)  # type: ignore[arg-type]


def _flag_value(typed: str, name: str, raw: str) -> object:
    if name == "aspect":
        ratio = _RATIO.fullmatch(raw)
        if ratio is None or int(ratio[1]) == 0 or int(ratio[2]) == 0:
            shown = f"“{raw}”" if raw else "nothing"
            raise PromptSyntaxError(f"--{typed} needs a ratio of whole numbers like 16:9, not {shown}")
        return int(ratio[1]), int(ratio[2])
    if not re.fullmatch(r"[+-]?\d+", raw):
        shown = f"“{raw}”" if raw else "nothing"
        raise PromptSyntaxError(f"--{typed} needs a whole number, not {shown}")
    number = int(raw)
    if name == "seed":
        if number == -1:
            return None  # A1111's convention for "pick one at random"
        if not 0 <= number <= MAX_SEED:
            raise PromptSyntaxError(f"--seed {raw} is outside 0 to {MAX_SEED} (or -1 for random)")
        return number
    if number < 1:
        raise PromptSyntaxError(f"--{typed} needs a number of at least 1, not {raw}")
    return number


# ---------------------------------------------------------------------------------------------
# Permutations: a {red, green} bird
# ---------------------------------------------------------------------------------------------

# A parsed template: text pieces and groups; a group is a list of options, each a template.
_Template: TypeAlias = "list[str | list[_Template]]"


def expand_permutations(text: str, cap: int) -> list[str]:
    """Every combination of `{a, b}` groups, in order (the first group changes slowest), e.g.
    `a {red, green} bird` -> ["a red bird", "a green bird"]. Groups nest, options are stripped,
    `\\{`, `\\}` and (inside a group) `\\,` are literal; other backslash escapes are left for
    parse_weights. Raises PromptSyntaxError for an unbalanced brace or more than `cap` prompts."""
    template, end = _parse_template(text, 0, inside=False)
    assert end == len(text)
    if len(template) == 1:
        return [template[0]]  # type: ignore[list-item]  # no group: one text piece
    count = _count(template)
    if count > cap:
        raise PromptSyntaxError(f"these {{...}} choices make {count} prompts; the limit is {cap}")
    # An empty option ("{, big}") would leave two spaces side by side.
    return [re.sub(r"[ \t]{2,}", " ", rendered).strip() for rendered in _render(template)]


def _parse_template(text: str, position: int, *, inside: bool) -> tuple[_Template, int]:
    """Parse one option (inside a group) or the whole prompt; return it and where it stopped."""
    parts: _Template = []
    buffer: list[str] = []
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text):
            following = text[position + 1]
            if following in "{}" or (inside and following == ","):
                buffer.append(following)
            else:
                buffer.append(char + following)  # `\\(` etc. belong to parse_weights
            position += 2
        elif char == "{":
            parts.append("".join(buffer))
            buffer = []
            options: list[_Template] = []
            position += 1
            while True:
                option, position = _parse_template(text, position, inside=True)
                options.append(option)
                if position >= len(text):
                    raise PromptSyntaxError("a “{” is never closed; write \\{ for a literal brace")
                position += 1
                if text[position - 1] == "}":
                    break
            parts.append(options)
        elif inside and char in ",}":
            break
        elif char == "}":
            raise PromptSyntaxError("a “}” has no “{” before it; write \\} for a literal brace")
        else:
            buffer.append(char)
            position += 1
    parts.append("".join(buffer))
    if inside:
        # Options are stripped so "{red, green}" gives "red" and "green", not " green".
        parts[0] = parts[0].lstrip() if isinstance(parts[0], str) else parts[0]
        parts[-1] = parts[-1].rstrip() if isinstance(parts[-1], str) else parts[-1]
    return parts, position


def _count(template: _Template) -> int:
    total = 1
    for part in template:
        if isinstance(part, list):
            total *= sum(_count(option) for option in part)
    return total


def _render(template: _Template) -> list[str]:
    choices: list[list[str]] = [
        [part] if isinstance(part, str) else [text for option in part for text in _render(option)]
        for part in template
    ]
    return ["".join(combination) for combination in itertools.product(*choices)]


# ---------------------------------------------------------------------------------------------
# Chunking: 75 tokens per CLIP call
# ---------------------------------------------------------------------------------------------


@dataclass
class TokenChunk:
    """Up to 75 prompt tokens (no start, end or padding tokens) and the weight of each."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def chunk_tokens(
    pieces: Sequence[tuple[Sequence[int], float]],
    comma: int | None,
    *,
    size: int = CHUNK_TOKENS,
    backtrack: int = COMMA_BACKTRACK,
) -> list[TokenChunk]:
    """Cut weighted token runs into chunks of at most `size` tokens, with A1111's rules: a chunk
    that fills up at most `backtrack` tokens after a comma ends at that comma, the tokens after it
    starting the next chunk (so a phrase is not split across two CLIP calls); a piece whose weight
    is BREAK_WEIGHT ends the current chunk (unless it is empty). Always at least one chunk."""
    chunks: list[TokenChunk] = []
    current = TokenChunk()
    last_comma = -1  # index in `current` of its last comma

    def close() -> None:
        nonlocal current, last_comma
        chunks.append(current)
        current, last_comma = TokenChunk(), -1

    for tokens, weight in pieces:
        if weight == BREAK_WEIGHT:
            if current.tokens:
                close()
            continue
        for token in tokens:
            current.tokens.append(token)
            current.weights.append(weight)
            if token == comma:
                last_comma = len(current.tokens) - 1
            if len(current.tokens) == size:
                cut = last_comma + 1
                if last_comma >= 0 and size - cut <= backtrack and cut < size:
                    carried = TokenChunk(current.tokens[cut:], current.weights[cut:])
                    current.tokens, current.weights = current.tokens[:cut], current.weights[:cut]
                    close()
                    current = carried
                else:
                    close()
    if current.tokens or not chunks:
        chunks.append(current)
    return chunks

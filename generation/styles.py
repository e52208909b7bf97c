"""Prompt styles in AUTOMATIC1111's `styles.csv` format, so a server can reuse the file its members
already keep: a `name,prompt,negative_prompt` header and one style per row.

A style's prompt either contains `{prompt}`, which is replaced by the member's prompt, or is added
after it with ", " between them; the negative prompt works the same way. `styles.example.csv` at
the repository root is a starting catalogue.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDER = "{prompt}"
AUTOCOMPLETE_LIMIT = 25  # Discord shows at most 25 autocomplete choices


class StyleFileError(ValueError):
    """The styles file cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def load_styles(path: str | Path) -> dict[str, Style]:
    """Read a styles CSV into {name: Style}, in file order. The header needs `name` and `prompt`;
    `negative_prompt` may be missing or empty. Names must be unique ignoring case, because members
    pick them by typing. Raises StyleFileError naming the file and line of the first bad row."""
    path = Path(path)
    try:
        # utf-8-sig: spreadsheet programs often save CSV with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as file:
            return _read(path, file)
    except (OSError, UnicodeDecodeError) as error:
        raise StyleFileError(f"{path}: cannot read the styles file ({error})") from error


def _read(path: Path, file: object) -> dict[str, Style]:
    reader = csv.reader(file)  # type: ignore[arg-type]
    header = next(reader, None)
    if header is None:
        raise StyleFileError(f"{path}: the file is empty; it needs a name,prompt,negative_prompt header")
    columns = [column.strip().lower() for column in header]
    missing = [column for column in ("name", "prompt") if column not in columns]
    if missing:
        raise StyleFileError(
            f"{path}, line 1: the header has no {' or '.join(missing)} column; it should be "
            "name,prompt,negative_prompt"
        )
    styles: dict[str, Style] = {}
    seen: dict[str, int] = {}
    start = reader.line_num + 1
    for row in reader:
        line = start  # the line the row starts on (a quoted field may span several lines)
        start = reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(columns):
            raise StyleFileError(
                f"{path}, line {line}: {len(row)} fields but the header has {len(columns)}; "
                "put quotes around text that contains commas"
            )
        values = dict(zip(columns, (cell.strip() for cell in row), strict=False))
        name = values.get("name", "")
        if not name:
            raise StyleFileError(f"{path}, line {line}: the style has no name")
        key = name.casefold()
        if key in seen:
            raise StyleFileError(f"{path}, line {line}: the name “{name}” is already used on line {seen[key]}")
        seen[key] = line
        styles[name] = Style(name, values.get("prompt", ""), values.get("negative_prompt", ""))
    return styles


def _merge(text: str, style_text: str) -> str:
    if PLACEHOLDER in style_text:
        merged = style_text.replace(PLACEHOLDER, text.strip())
        # An empty prompt in "{prompt}, cartoon" would leave a dangling ", " at the front.
        return merged if text.strip() else merged.strip(" ,")
    return ", ".join(part for part in (text.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative: str, styles: Sequence[Style]) -> tuple[str, str]:
    """The prompt and negative prompt with each style applied in turn (a later style wraps or
    extends the result of the earlier ones)."""
    for style in styles:
        prompt = _merge(prompt, style.prompt)
        negative = _merge(negative, style.negative_prompt)
    return prompt, negative


def match_styles(catalogue: Mapping[str, Style], typed: str, limit: int = AUTOCOMPLETE_LIMIT) -> list[Style]:
    """Styles whose name contains `typed`, ignoring case, for Discord autocomplete: names that
    start with it first, then the others, each group in catalogue order; at most `limit`."""
    needle = typed.strip().casefold()
    starts, contains = [], []
    for style in catalogue.values():
        name = style.name.casefold()
        if name.startswith(needle):
            starts.append(style)
        elif needle in name:
            contains.append(style)
    return (starts + contains)[:limit]

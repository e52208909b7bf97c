"""Strictness checks: Discord's documented limits, answered with Discord-shaped errors.

Every check raises :class:`APIError`; the server turns it into the HTTP response Discord would send
and records a violation so the test fails unless it expected one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .state import FLAG_COMPONENTS_V2, walk_components

MAX_FILES = 10
SELECT_TYPES = {3, 5, 6, 7, 8}
EMBED_TOTAL = 6000


@dataclass
class UploadedFile:
    index: int  # N of the multipart field files[N]
    filename: str
    content_type: str | None
    data: bytes


class APIError(Exception):
    """An error response. ``violation`` is the kind recorded against the bot (None: not the bot's fault)."""

    def __init__(
        self, status: int, code: int, message: str, *, errors: dict[str, Any] | None = None,
        violation: str | None = None, detail: str = "",
    ) -> None:
        super().__init__(f"{status} {code} {message} {detail}".strip())
        self.status, self.code, self.message, self.errors = status, code, message, errors
        self.violation, self.detail = violation, detail or message

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            out["errors"] = self.errors
        return out


class FormErrors:
    """Collects field errors into Discord's nested ``errors`` tree."""

    def __init__(self) -> None:
        self.tree: dict[str, Any] = {}
        self.flat: list[str] = []

    def add(self, path: Sequence[str | int], code: str, message: str) -> None:
        node = self.tree
        for part in path:
            node = node.setdefault(str(part), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})
        self.flat.append(f"{'.'.join(map(str, path))}: {message}")

    def max_len(self, path: Sequence[str | int], value: Any, limit: int) -> None:
        if value is not None and len(value) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def required(self, path: Sequence[str | int], value: Any) -> None:
        if value is None or value == "":
            self.add(path, "BASE_TYPE_REQUIRED", "This field is required")

    def raise_if_any(self) -> None:
        if self.flat:
            raise APIError(400, 50035, "Invalid Form Body", errors=self.tree, violation="invalid_form_body",
                           detail="; ".join(self.flat))


def check_file_sizes(files: Sequence[UploadedFile], size_limit: int) -> None:
    for f in files:
        if len(f.data) > size_limit:
            raise APIError(413, 40005, "Request entity too large", violation="payload_too_large",
                           detail=f"{f.filename} is {len(f.data)} bytes, limit {size_limit}")


def validate_message(payload: dict[str, Any], files: Sequence[UploadedFile], *, size_limit: int, creating: bool) -> None:
    """Validate a message create/edit body (channel message, webhook, or interaction response data)."""
    check_file_sizes(files, size_limit)
    errors = FormErrors()
    errors.max_len(("content",), payload.get("content"), 2000)
    flags = int(payload.get("flags") or 0)
    embeds = payload.get("embeds") or []
    if len(embeds) > 10:
        errors.add(("embeds",), "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
    total = sum(_validate_embed(errors, i, e) for i, e in enumerate(embeds))
    if total > EMBED_TOTAL:
        errors.add(("embeds",), "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000")
    components = payload.get("components")
    if components:
        _validate_components(errors, components, flags)
        if flags & FLAG_COMPONENTS_V2 and (payload.get("content") or embeds):
            errors.add(("content",), "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
                       "The 'content' and 'embeds' fields cannot be used when using MessageFlags.IS_COMPONENTS_V2")
    if len(files) > MAX_FILES:
        errors.add(("files",), "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length.")
    if len(payload.get("attachments") or []) > MAX_FILES:
        errors.add(("attachments",), "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length.")
    errors.raise_if_any()
    if creating and not (payload.get("content") or embeds or components or files or payload.get("sticker_ids")
                         or payload.get("poll")):
        raise APIError(400, 50006, "Cannot send an empty message", violation="empty_message")


def _validate_embed(errors: FormErrors, i: int, embed: dict[str, Any]) -> int:
    """Check one embed's field limits; return its character count toward the 6000 total."""
    p: tuple[str | int, ...] = ("embeds", i)
    title, desc = embed.get("title") or "", embed.get("description") or ""
    footer = (embed.get("footer") or {}).get("text") or ""
    author = (embed.get("author") or {}).get("name") or ""
    errors.max_len((*p, "title"), title, 256)
    errors.max_len((*p, "description"), desc, 4096)
    errors.max_len((*p, "footer", "text"), footer, 2048)
    errors.max_len((*p, "author", "name"), author, 256)
    fields = embed.get("fields") or []
    if len(fields) > 25:
        errors.add((*p, "fields"), "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    size = len(title) + len(desc) + len(footer) + len(author)
    for j, fld in enumerate(fields):
        name, value = fld.get("name"), fld.get("value")
        errors.required((*p, "fields", j, "name"), name)
        errors.required((*p, "fields", j, "value"), value)
        errors.max_len((*p, "fields", j, "name"), name, 256)
        errors.max_len((*p, "fields", j, "value"), value, 1024)
        size += len(name or "") + len(value or "")
    return size


def _validate_components(errors: FormErrors, components: list[dict[str, Any]], flags: int) -> None:
    if not flags & FLAG_COMPONENTS_V2:
        # Legacy layout: up to 5 action rows, each 1-5 buttons or exactly one select.
        if len(components) > 5:
            errors.add(("components",), "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
        for i, row in enumerate(components):
            if row.get("type") != 1:
                errors.add(("components", i, "type"), "UNION_TYPE_CHOICES", 'Value of field "type" must be one of (1,).')
                continue
            children = row.get("components") or []
            if not children:
                errors.add(("components", i, "components"), "BASE_TYPE_MIN_LENGTH", "Must be 1 or more in length.")
            if len(children) > 5:
                errors.add(("components", i, "components"), "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
            width = sum(5 if c.get("type") in SELECT_TYPES else 1 for c in children)
            if width > 5 and len(children) <= 5:
                errors.add(("components", i, "components"), "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                           "The specified component exceeds the maximum width")
    elif sum(1 for _ in walk_components(components)) > 40:
        errors.add(("components",), "COMPONENT_MAX_TOTAL_COMPONENTS_EXCEEDED", "Must be 40 or fewer components.")

    seen: set[str] = set()
    for p, comp in _walk_with_paths(components, ("components",)):
        cid = comp.get("custom_id")
        if cid is not None:
            errors.max_len((*p, "custom_id"), cid, 100)
            if cid in seen:
                errors.add((*p, "custom_id"), "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated")
            seen.add(cid)
        ctype = comp.get("type")
        if ctype == 2:
            errors.max_len((*p, "label"), comp.get("label"), 80)
            style = comp.get("style")
            if style == 5 and (not comp.get("url") or cid is not None):
                errors.add((*p, "url"), "BUTTON_COMPONENT_INVALID_URL", "Link buttons need a url and no custom_id")
            elif style in (1, 2, 3, 4) and cid is None:
                errors.required((*p, "custom_id"), None)
        elif ctype in SELECT_TYPES:
            errors.max_len((*p, "placeholder"), comp.get("placeholder"), 150)
            if ctype == 3:
                options = comp.get("options") or []
                if not 1 <= len(options) <= 25:
                    errors.add((*p, "options"), "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 25 in length.")
                for k, opt in enumerate(options):
                    errors.max_len((*p, "options", k, "label"), opt.get("label"), 100)
                    errors.max_len((*p, "options", k, "value"), opt.get("value"), 100)


def _walk_with_paths(
    components: list[dict[str, Any]], path: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], dict[str, Any]]]:
    for i, comp in enumerate(components):
        if not isinstance(comp, dict):
            continue
        yield (*path, i), comp
        yield from _walk_with_paths(comp.get("components") or [], (*path, i, "components"))
        for key in ("component", "accessory"):
            if isinstance(comp.get(key), dict):
                yield from _walk_with_paths([comp[key]], (*path, i, key))


def validate_modal(data: dict[str, Any]) -> None:
    errors = FormErrors()
    errors.required(("data", "custom_id"), data.get("custom_id"))
    errors.max_len(("data", "custom_id"), data.get("custom_id"), 100)
    errors.required(("data", "title"), data.get("title"))
    errors.max_len(("data", "title"), data.get("title"), 45)
    comps = data.get("components") or []
    if not 1 <= len(comps) <= 5:
        errors.add(("data", "components"), "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
    errors.raise_if_any()


_NAME_RE = re.compile(r"^[-_\w]{1,32}$")


def validate_commands(commands: list[dict[str, Any]]) -> None:
    """Check a bulk-overwrite body: names, descriptions, option counts and order."""
    errors = FormErrors()
    if len(commands) > 100:
        errors.add((), "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
    seen: set[tuple[int, str]] = set()
    for i, cmd in enumerate(commands):
        ctype = int(cmd.get("type", 1))
        name = cmd.get("name") or ""
        if (ctype, name) in seen:
            errors.add((i, "name"), "APPLICATION_COMMANDS_DUPLICATE_NAME", f"Application command names must be unique: {name}")
        seen.add((ctype, name))
        if ctype == 1:
            _check_name(errors, (i,), name)
            _check_description(errors, (i,), cmd.get("description"))
            _validate_options(errors, (i, "options"), cmd.get("options") or [], depth=0)
        elif ctype in (2, 3):  # user and message context-menu commands: any case and spaces, no text
            if not 1 <= len(name) <= 32:
                errors.add((i, "name"), "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
            if cmd.get("description"):
                errors.add((i, "description"), "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION",
                           "Context menu commands cannot have a description")
            if cmd.get("options"):
                errors.add((i, "options"), "APPLICATION_COMMAND_CONTEXT_MENU_OPTIONS",
                           "Context menu commands cannot have options")
        else:
            errors.add((i, "type"), "BASE_TYPE_CHOICES", f"Value must be one of (1, 2, 3, 4), got {ctype}.")
    errors.raise_if_any()


def _check_name(errors: FormErrors, p: tuple[str | int, ...], name: str) -> None:
    if not _NAME_RE.match(name) or name != name.lower():
        errors.add((*p, "name"), "APPLICATION_COMMAND_INVALID_NAME", f"Command name is invalid: {name!r}")


def _check_description(errors: FormErrors, p: tuple[str | int, ...], desc: str | None) -> None:
    if not desc or len(desc) > 100:
        errors.add((*p, "description"), "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")


def _validate_options(errors: FormErrors, p: tuple[str | int, ...], options: list[dict[str, Any]], depth: int) -> None:
    if len(options) > 25:
        errors.add(p, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    names: set[str] = set()
    optional_seen = False
    for j, opt in enumerate(options):
        q = (*p, j)
        _check_name(errors, q, opt.get("name") or "")
        _check_description(errors, q, opt.get("description"))
        if opt.get("name") in names:
            errors.add((*q, "name"), "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "Option names must be unique")
        names.add(opt.get("name") or "")
        otype = opt.get("type")
        if otype in (1, 2):
            if otype == 2 and depth > 0 or otype == 1 and depth > 1:
                errors.add((*q, "type"), "APPLICATION_COMMAND_SUBCOMMAND_NESTED_TOO_DEEP", "Subcommands nested too deep")
            _validate_options(errors, (*q, "options"), opt.get("options") or [], depth + 1)
            continue
        if opt.get("required"):
            if optional_seen:
                errors.add((*q, "required"), "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                           "Required options must be placed before non-required options")
        else:
            optional_seen = True
        if len(opt.get("choices") or []) > 25:
            errors.add((*q, "choices"), "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")

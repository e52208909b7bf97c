"""Result and queue buttons: labels, and custom ids that survive a restart."""

from __future__ import annotations

import re

from bot.views import Action, JobButton, queued_view, result_view
from tests.bot.test_render import image, job


def ids_and_labels(view: object) -> list[tuple[str | None, str | None]]:
    return [(item.item.custom_id, item.item.label) for item in view.children]  # type: ignore[attr-defined]


def test_result_buttons_cover_posted_images_reroll_and_delete() -> None:
    view = result_view(job(), [image(0), image(2)])
    assert ids_and_labels(view) == [
        ("sd:upscale:12:1", "U1"), ("sd:upscale:12:3", "U3"),
        ("sd:vary:12:1", "V1"), ("sd:vary:12:3", "V3"),
        ("sd:reroll:12", "🔄 Reroll"), ("sd:delete:12", "🗑️"),
    ]
    assert view.timeout is None  # persistent


def test_only_reroll_and_delete_when_every_image_was_withheld() -> None:
    assert ids_and_labels(result_view(job(), [])) == [("sd:reroll:12", "🔄 Reroll"), ("sd:delete:12", "🗑️")]


def test_queued_reply_offers_cancel() -> None:
    assert ids_and_labels(queued_view(7)) == [("sd:cancel:7", "Cancel")]


def test_custom_ids_parse_back_into_the_same_button() -> None:
    template = JobButton.__discord_ui_compiled_template__
    for custom_id in ("sd:upscale:12:1", "sd:vary:12:4", "sd:reroll:12", "sd:cancel:7", "sd:delete:12"):
        match = template.fullmatch(custom_id)
        assert match is not None
        button = JobButton(Action(match["action"]), int(match["job"]), int(match["n"]) if match["n"] else None)
        assert button.item.custom_id == custom_id
    assert template.fullmatch("sd:upscale:12:5") is None and template.fullmatch("sd:explode:12") is None
    assert isinstance(template, re.Pattern)

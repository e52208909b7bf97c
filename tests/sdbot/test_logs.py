"""Log set-up: SDBOT_LOG_FORMAT=json writes one JSON object per line, with structured fields."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from sdbot.logs import FIELDS, configure_logging


@pytest.fixture
def restored_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restored_root_logger")
def test_json_format_is_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    log = logging.getLogger("sdbot.test")
    log.info("job %s done", 7, extra={FIELDS: {"job_id": 7, "wait_s": 0.5}})
    log.debug("not at INFO")
    try:
        raise ValueError("multi\nline")
    except ValueError:
        log.exception("it broke")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["message"] == "job 7 done" and first["job_id"] == 7 and first["wait_s"] == 0.5
    assert first["level"] == "INFO" and first["logger"] == "sdbot.test" and first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: multi\nline" in second["exception"]


@pytest.mark.usefixtures("restored_root_logger")
def test_text_format_is_one_readable_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", "text")
    logging.getLogger("sdbot.test").warning("disk %s full", "almost")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith("WARNING sdbot.test: disk almost full")

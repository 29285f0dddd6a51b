"""configure_logging: formats, levels, timestamps, errors."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from session.logs import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_json_lines_with_iso_utc_timestamps() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    log = get_logger("session")
    log.info("session created", session_id="s1", user_id="u1")
    log.debug("session heartbeat", session_id="s1")
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "session created"
    assert (record["session_id"], record["user_id"], record["level"]) == ("s1", "u1", "info")
    assert record["logger"] == "session"
    assert record["timestamp"].endswith("Z") and "T" in record["timestamp"]


def test_console_format_and_debug_level() -> None:
    out = io.StringIO()
    configure_logging("console", "DEBUG", stream=out)
    log = get_logger("demo")
    log.debug("session heartbeat", remaining=300.0)
    text = out.getvalue()
    assert "session heartbeat" in text and "remaining=300.0" in text and "debug" in text
    assert "\x1b[" not in text  # no colour codes when the stream is not a terminal


def test_disabled_levels_are_filtered_by_the_bound_logger() -> None:
    configure_logging("json", "warning", stream=io.StringIO())
    log = get_logger("session")
    assert not log.is_enabled_for(20)
    assert log.is_enabled_for(30)


def test_exceptions_render_in_json() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("session").exception("listener failed")
    record = json.loads(out.getvalue())
    assert "RuntimeError: boom" in record["exception"]


@pytest.mark.parametrize(
    ("fmt", "level", "message"),
    [("xml", "info", "unknown log format 'xml'"), ("json", "loud", "unknown log level 'loud'")],
)
def test_bad_settings_raise(fmt: str, level: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        configure_logging(fmt, level)

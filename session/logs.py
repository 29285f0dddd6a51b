"""structlog set-up shared by the server and the demo.

Console rendering for people, JSON (one object per line) for machines. The wrapper is
structlog's filtering bound logger, whose methods below the configured level are no-ops, so a
disabled ``log.debug(...)`` costs one call; hot paths go further and test the level once.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["LEVELS", "configure_logging", "get_logger"]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_FORMATS = ("console", "json")


def configure_logging(
    fmt: str = "console", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog process-wide. `stream` defaults to stderr.

    Loggers bound before this call keep the old settings, so call it first thing at start-up.
    Raises `ValueError` naming the bad format or level.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: expected one of {', '.join(_FORMATS)}")
    number = LEVELS.get(level.lower())
    if number is None:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(LEVELS)}")
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        # JSON needs the traceback as a string; the console renderer formats it itself
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        colors = (stream or sys.stderr).isatty()
        processors.append(structlog.dev.ConsoleRenderer(colors=colors, pad_event_to=28))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **context: Any) -> Any:
    """A concrete logger bound now (not a lazy proxy), so each call skips the proxy's rebind."""
    return structlog.get_logger(name).bind(logger=name, **context)

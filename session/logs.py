"""Logging for the library (`quantum`, `session`, `server`) and for the commands built on it.

Every logger here is a structlog logger. Who decides how it renders and what it lets through:

* **The application, when it has configured structlog** (`structlog.configure`, or
  `configure_logging` below, which the `quantum-server` command calls with its `--log-format`
  and `--log-level`): the library's loggers are made from that configuration, like any other
  structlog logger in the process.
* **Nobody yet (the library default)**: the library never calls `structlog.configure` on its
  own, because structlog's configuration is process-wide and belongs to the application.
  Instead each library logger is wrapped by itself with a fixed pipeline: console lines on
  stderr, without colours, INFO and above. The wrapper is structlog's filtering bound logger,
  so a disabled ``log.debug(...)`` is a no-op method call; the hot paths (the heartbeat) go
  further and test the level once, when their owner is built (`debug_enabled`). structlog's
  own unconfigured default would print everything, DEBUG included, on stdout: a line per
  heartbeat, 40-100x slower.

Why not bind the library's loggers to stdlib `logging` instead: its unconfigured default shows
WARNING and up only, through a bare last-resort handler, so INFO events of a server would
vanish unless every application set up logging; and an application that configured structlog
without stdlib behind it would not see them at all. This way the default is useful as it is,
and any structlog configuration (stdlib-backed ones included) receives every event.

Loggers are bound when their owner is built (`get_logger`, e.g. in `SessionManager.__init__`),
so configure logging before building a manager or server. Module-level loggers, made at import
time before any application code ran, are `LazyLogger`s that resolve at each call instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["LEVELS", "LazyLogger", "configure_logging", "debug_enabled", "get_logger"]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_FORMATS = ("console", "json")
#: the library default's threshold (see the module docstring)
DEFAULT_LEVEL = logging.INFO


def _common_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(
    fmt: str = "console", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog process-wide (an application's decision, never the library's):
    `fmt` console (for people) or json (one object per line), `level` a name from `LEVELS`,
    `stream` defaults to stderr.

    Loggers bound before this call keep the old settings, so call it first thing at start-up.
    Raises `ValueError` naming the bad format or level.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: expected one of {', '.join(_FORMATS)}")
    number = LEVELS.get(level.lower())
    if number is None:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(LEVELS)}")
    processors = _common_processors()
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


class _Stderr:
    """The library default's output: one line per event on whatever `sys.stderr` is when the
    event is written (applications and test runners replace it), never on stdout."""

    __slots__ = ()

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


_DEFAULT_WRAPPER = structlog.make_filtering_bound_logger(DEFAULT_LEVEL)
_DEFAULT_PROCESSORS = [*_common_processors(),
                       structlog.dev.ConsoleRenderer(colors=False, pad_event_to=28)]
_STDERR = _Stderr()


def get_logger(name: str, **context: Any) -> Any:
    """A concrete logger bound now (not a lazy proxy, so each call skips the proxy's rebind),
    from the application's structlog configuration if there is one, else the library default
    (see the module docstring). `name` is bound as ``logger``."""
    if structlog.is_configured():
        return structlog.get_logger(name).bind(logger=name, **context)
    return structlog.wrap_logger(_STDERR, processors=_DEFAULT_PROCESSORS,
                                 wrapper_class=_DEFAULT_WRAPPER, context_class=dict,
                                 cache_logger_on_first_use=False).bind(logger=name, **context)


def debug_enabled(logger: Any) -> bool:
    """Whether `logger` would write a debug event: asked once by hot paths, which then skip
    the call altogether. A logger that cannot tell (no level test) is taken at its word."""
    for test in ("is_enabled_for", "isEnabledFor"):  # filtering bound loggers; stdlib ones
        is_enabled = getattr(logger, test, None)
        if callable(is_enabled):
            return bool(is_enabled(logging.DEBUG))
    return True


def _configuration() -> tuple[Any, ...]:
    """What a bound logger was made from: equal while nobody reconfigured structlog."""
    config = structlog.get_config()
    return (structlog.is_configured(), config["processors"], config["wrapper_class"],
            config["logger_factory"], config["context_class"])


class LazyLogger:
    """A module-level logger: ``log = LazyLogger("quantum.server")``. It follows the
    configuration in force at each call (the module was imported before the application
    configured anything): it keeps the logger `get_logger(name)` made and makes a new one
    when structlog's configuration changed since. About a microsecond per call; for events
    off the per-packet path."""

    __slots__ = ("_configuration", "_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._configuration: tuple[Any, ...] | None = None
        self._logger: Any = None

    def __getattr__(self, method: str) -> Any:
        configuration = _configuration()
        if configuration != self._configuration:
            self._logger = get_logger(self._name)
            self._configuration = configuration
        return getattr(self._logger, method)

    def __repr__(self) -> str:
        return f"LazyLogger({self._name!r})"

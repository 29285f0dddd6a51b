"""configure_logging: formats, levels, timestamps, errors; and the library without it: quiet
below INFO, on stderr, and following the application's structlog configuration when it has one."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import LogCapture

from quantum.auth import AnonymousAuthenticator
from quantum.keys import ServerKeyFile
from server import QuantumServer, ServerConfig
from session.logs import LazyLogger, configure_logging, debug_enabled, get_logger
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore


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


# ------------------------------------------------------------- the library, unconfigured


def _unconfigured() -> None:
    structlog.reset_defaults()
    assert not structlog.is_configured()


async def test_an_unconfigured_manager_is_quiet_below_info_and_never_writes_stdout(
        capsys: pytest.CaptureFixture[str]) -> None:
    _unconfigured()
    manager = SessionManager(ManagerConfig(store=MemoryStore(), default_timeout=300))
    session, _ = await manager.create_session("alice", "203.0.113.7", 40000, str(uuid.uuid4()))
    for _ in range(3):
        assert await manager.heartbeat(session.session_id) == 300.0
    await manager.delete_session(session.session_id, "logged out")
    out, err = capsys.readouterr()
    assert out == ""  # structlog's own default prints on stdout, DEBUG included
    created, deleted = err.splitlines()  # no more: nothing per heartbeat
    assert "[info" in created and "session created" in created and "[session]" in created
    assert f"session_id={session.session_id}" in created
    assert "[info" in deleted and "session deleted" in deleted
    assert "heartbeat" not in err and "\x1b[" not in err
    # and the heartbeat path knows it: it does not even call the logger
    assert not debug_enabled(get_logger("session"))
    assert get_logger("session").is_enabled_for(logging.INFO)


async def test_an_unconfigured_server_logs_info_on_stderr_and_nothing_on_stdout(
        capsys: pytest.CaptureFixture[str]) -> None:
    _unconfigured()
    server = QuantumServer(SessionManager(ManagerConfig(store=MemoryStore())),
                           ServerKeyFile.new(), AnonymousAuthenticator(),
                           ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    await server.stop()
    out, err = capsys.readouterr()
    assert out == ""
    assert "server started" in err and "server stopped" in err and "[debug" not in err


def test_importing_the_library_leaves_structlog_unconfigured() -> None:
    # structlog's configuration is process-wide: it is the application's, never the library's
    probe = ("import quantum, server, session.etcd, session.manager, structlog; "
             "print(structlog.is_configured())")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False"


# --------------------------------------------------- the application's configuration wins


async def test_an_applications_structlog_configuration_applies_to_the_library() -> None:
    _unconfigured()
    capture = LogCapture()
    structlog.configure(processors=[capture],
                        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    before = structlog.get_config()
    manager = SessionManager(ManagerConfig(store=MemoryStore()))
    session, _ = await manager.create_session("bob", "203.0.113.8", 40001, str(uuid.uuid4()))
    await manager.heartbeat(session.session_id)
    assert [e["event"] for e in capture.entries] == ["session created", "session heartbeat"]
    assert capture.entries[1]["logger"] == "session"
    assert structlog.get_config() == before  # building the library's loggers changed nothing


def test_module_level_loggers_follow_a_configuration_made_after_import(
        capsys: pytest.CaptureFixture[str]) -> None:
    _unconfigured()
    log = LazyLogger("quantum.server")  # as server.py makes it, at import
    log.info("before")
    assert "before" in capsys.readouterr().err
    capture = LogCapture()
    structlog.configure(processors=[capture],
                        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    log.info("after", n=1)
    log.debug("filtered by the application's level")
    assert capture.entries == [{"event": "after", "n": 1, "logger": "quantum.server",
                                "log_level": "info"}]
    assert capsys.readouterr().err == ""


def test_debug_enabled_asks_filtering_and_stdlib_loggers() -> None:
    info = structlog.wrap_logger(None, wrapper_class=structlog.make_filtering_bound_logger(
        logging.INFO))
    assert not debug_enabled(info.bind())
    assert debug_enabled(structlog.wrap_logger(None, wrapper_class=(
        structlog.make_filtering_bound_logger(logging.DEBUG))).bind())
    stdlib = logging.getLogger("quantum-test-debug-enabled")
    stdlib.setLevel(logging.INFO)
    assert not debug_enabled(stdlib)
    stdlib.setLevel(logging.DEBUG)
    assert debug_enabled(stdlib)
    assert debug_enabled(object())  # cannot tell: taken at its word


def test_a_module_level_logger_is_made_once_per_configuration(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import session.logs

    _unconfigured()
    made: list[str] = []

    def counting(name: str, **context: object) -> object:
        made.append(name)
        return get_logger(name, **context)

    monkeypatch.setattr(session.logs, "get_logger", counting)
    log = LazyLogger("session.etcd")
    for _ in range(3):
        log.debug("skipped")
    assert made == ["session.etcd"]
    configure_logging("json", "error", stream=io.StringIO())
    log.debug("skipped")
    log.info("skipped")
    assert made == ["session.etcd"] * 2

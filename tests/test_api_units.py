"""The small pieces of the API and its tooling: status mapping, limits, flags, token files."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc
import pytest

from quantum_server.api_token import ApiTokenError, load_or_create_token, load_token, token_path
from quantum_server.services import host_port
from session.api.convert import InvalidArgument, require_uuid, state_from_pb
from session.api.service import ApiConfig, _status_of
from session.errors import (
    InvalidSession,
    InvalidToken,
    SessionExists,
    SessionExpired,
    SessionNotFound,
    StoreUnavailable,
)
from session.etcd import SessionConflict


@pytest.mark.parametrize(("error", "code"), [
    (InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidSession("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (SessionNotFound("x"), grpc.StatusCode.NOT_FOUND),
    (SessionExpired("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (SessionExists("x"), grpc.StatusCode.ALREADY_EXISTS),
    (StoreUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
    (SessionConflict("x"), grpc.StatusCode.ABORTED),
    (InvalidToken("x"), grpc.StatusCode.ABORTED),
    (RuntimeError("a bug"), None),
])
def test_errors_map_to_status_codes(error: Exception, code: grpc.StatusCode | None) -> None:
    assert _status_of(error) is code


@pytest.mark.parametrize("field", ["default_page_size", "max_page_size", "max_timeout_seconds",
                                   "max_reason_bytes", "watch_buffer", "max_watchers"])
def test_api_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ApiConfig(**{field: 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="default_page_size must not exceed"):
        ApiConfig(default_page_size=10, max_page_size=5)


def test_request_field_checks_name_the_field() -> None:
    assert require_uuid("6BA7B810-9DAD-11D1-80B4-00C04FD430C8", "id") == (
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8")
    with pytest.raises(InvalidArgument, match=r"^id is required$"):
        require_uuid("", "id")
    with pytest.raises(InvalidArgument, match=r"^state 9 is not a SessionState$"):
        state_from_pb(9, "state")
    assert state_from_pb(0, "state") is None


@pytest.mark.parametrize(("text", "parsed"), [
    ("127.0.0.1:9091", ("127.0.0.1", 9091)), ("[::1]:0", ("::1", 0)),
    ("localhost:80", ("localhost", 80)), ("0.0.0.0:65535", ("0.0.0.0", 65535))])
def test_host_port(text: str, parsed: tuple[str, int]) -> None:
    assert host_port(text) == parsed


@pytest.mark.parametrize("text", ["9091", ":9091", "host:", "host:x", "host:70000", "[::1]"])
def test_host_port_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        host_port(text)


def test_token_file_beside_the_key(tmp_path: Path) -> None:
    assert token_path(Path("/etc/q/server.key")) == Path("/etc/q/server.api-token")
    assert token_path(Path("/etc/q/node")) == Path("/etc/q/node.api-token")
    token, path, created = load_or_create_token(tmp_path / "a" / "server.key")
    assert created and load_token(path) == token
    assert load_or_create_token(tmp_path / "a" / "server.key") == (token, path, False)
    assert [p.name for p in path.parent.iterdir()] == ["server.api-token"]  # no temp left


@pytest.mark.parametrize(("content", "mode", "message"), [
    ("short\n", 0o600, "not an API token file"),
    ("x" * 600, 0o600, "not an API token file"),
    ("a b c d e f g h i j k l m n o p q r s t u v w x y z\n", 0o600, "not an API token file"),
    ("t" * 43 + "\n", 0o640, "too open"),
])
def test_bad_token_files_are_refused_without_quoting_them(
        tmp_path: Path, content: str, mode: int, message: str) -> None:
    path = tmp_path / "server.api-token"
    path.write_text(content)
    os.chmod(path, mode)
    with pytest.raises(ApiTokenError, match=message) as refused:
        load_token(path)
    assert content.strip() not in str(refused.value)


def test_a_missing_token_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ApiTokenError, match="quantum-server api-token"):
        load_token(tmp_path / "none.api-token")

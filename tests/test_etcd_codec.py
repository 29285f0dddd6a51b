"""EtcdStore's record format and endpoint parsing: no etcd needed."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from session.errors import InvalidSession
from session.etcd import SCHEMA_VERSION, EtcdStore, _parse_endpoint, decode_session, encode_session
from session.model import Session, State, Stats, new_session_id

KEY = b"/quantum/s/abc"


def make_session() -> Session:
    now = datetime(2025, 11, 7, 14, 30, tzinfo=UTC)
    return Session(
        session_id=new_session_id(), user_id="user/1 ü", connection_id=str(uuid.uuid4()),
        client_ip="10.0.0.1", client_port=4000, state=State.ACTIVE, created_at=now,
        last_active_at=now, expires_at=now + timedelta(seconds=30), server_addr=None,
        metadata={"device": "phone"}, stats=Stats(bytes_sent=10, current_rtt_ms=1.5),
        token_hash=b"\xaa" * 32,
    )


def test_round_trip_keeps_every_field() -> None:
    session = make_session()
    assert decode_session(KEY, encode_session(session)) == session


def test_record_is_compact_versioned_json() -> None:
    raw = encode_session(make_session())
    assert b" " not in raw.replace(b"user/1 ", b"")  # no padding between tokens
    data = json.loads(raw)
    assert data["v"] == SCHEMA_VERSION
    assert "token" not in data  # only the hash is ever stored


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"\xff\xfe", "is not JSON"),
        (b"{not json", "is not JSON"),
        (b"[1, 2]", "is not a JSON object"),
        (b'{"session_id": "x"}', "schema version None"),
        (b'{"v": 99}', "schema version 99"),
        (b'{"v": 1, "session_id": "x"}', "missing fields"),
    ],
)
def test_malformed_records_raise_invalid_session_naming_the_key(
    value: bytes, message: str
) -> None:
    with pytest.raises(InvalidSession, match=message) as info:
        decode_session(KEY, value)
    assert "/quantum/s/abc" in str(info.value)


def test_record_failing_model_validation_is_rejected() -> None:
    data = json.loads(encode_session(make_session()))
    data["client_port"] = 70000
    with pytest.raises(InvalidSession, match="client_port"):
        decode_session(KEY, json.dumps(data).encode())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2379", ("127.0.0.1", 2379)),
        ("http://etcd-1:2379/", ("etcd-1", 2379)),
        ("[::1]:23790", ("::1", 23790)),
    ],
)
def test_endpoint_forms(text: str, expected: tuple[str, int]) -> None:
    assert _parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["localhost", ":2379", "host:abc", "host:0", "host:70000"])
def test_bad_endpoints_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        _parse_endpoint(text)


def test_constructor_validates_its_settings() -> None:
    with pytest.raises(ValueError, match="prefix"):
        EtcdStore(prefix="/")
    with pytest.raises(ValueError, match="timeout"):
        EtcdStore(timeout=0)
    with pytest.raises(ValueError, match="refresh_fraction"):
        EtcdStore(refresh_fraction=1.5)
    store = EtcdStore("10.0.0.1:2379,10.0.0.2:2379", prefix="app/")
    assert store.endpoints == ["10.0.0.1:2379", "10.0.0.2:2379"]
    assert store.prefix == "/app"

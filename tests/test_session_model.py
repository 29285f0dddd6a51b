"""Session model: states, copies, expiry arithmetic, validation and the JSON form."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from session.errors import InvalidSession
from session.model import (
    Session,
    SessionFilter,
    State,
    Stats,
    new_session_id,
    normalize_client_ip,
    normalize_connection_id,
    require_utc,
    validate_metadata,
    validate_session,
)

T0 = datetime(2025, 11, 7, 14, 30, tzinfo=UTC)


def make(**overrides: Any) -> Session:
    fields: dict[str, Any] = {
        "session_id": new_session_id(), "user_id": "user1",
        "connection_id": str(uuid.uuid4()), "client_ip": "192.168.1.100", "client_port": 5000,
        "state": State.ACTIVE, "created_at": T0, "last_active_at": T0,
        "expires_at": T0 + timedelta(seconds=60), "server_addr": "10.0.0.1:9000",
        "metadata": {"device": "desktop"}, "stats": Stats(1, 2, 3, 4, 5, 6.5),
        "token_hash": bytes(range(32)),
    }
    fields.update(overrides)
    return Session(**fields)


def test_states_print_as_their_names() -> None:
    assert [str(s) for s in State] == ["CONNECTING", "ACTIVE", "IDLE", "DISCONNECTING", "CLOSED"]
    assert f"{State.IDLE}" == "IDLE"


def test_session_ids_are_time_ordered_uuid7() -> None:
    ids = [new_session_id() for _ in range(50)]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert ids == sorted(ids)


def test_copy_shares_no_mutable_state() -> None:
    original = make()
    clone = original.copy()
    assert clone == original and clone is not original
    clone.metadata["device"] = "phone"
    clone.stats.packets_sent = 99
    assert original.metadata == {"device": "desktop"} and original.stats.packets_sent == 1


def test_expiry_arithmetic() -> None:
    session = make()
    assert not session.is_expired(T0 + timedelta(seconds=59.999999))
    assert session.is_expired(T0 + timedelta(seconds=60))
    assert session.remaining(T0 + timedelta(seconds=15.5)) == 44.5
    assert session.remaining(T0 + timedelta(seconds=600)) == 0.0


def test_token_hash_is_kept_out_of_repr() -> None:
    assert "token_hash" not in repr(make())


def test_json_round_trip() -> None:
    session = make(server_addr=None)
    text = json.dumps(session.to_dict())
    assert Session.from_dict(json.loads(text)) == session


def test_from_dict_converts_other_utc_spellings() -> None:
    data = make().to_dict()
    data["created_at"] = "2025-11-07T14:30:00Z"
    parsed = Session.from_dict(data)
    assert parsed.created_at == T0 and parsed.created_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("user_id"), "missing fields: \\['user_id'\\]"),
        (lambda d: d.update(extra=1), "unknown session fields"),
        (lambda d: d.update(state="ASLEEP"), "unknown session state"),
        (lambda d: d.update(token_hash="zz"), "token_hash is not hex"),
        (lambda d: d.update(token_hash=5), "token_hash must be a hex string"),
        (lambda d: d.update(created_at="yesterday"), "created_at is not an ISO 8601"),
        (lambda d: d.update(expires_at="2025-11-07T14:30:00"), "expires_at must be timezone-aware"),
        (lambda d: d.update(expires_at="2025-11-07T14:30:00+08:00"), "timezone-aware UTC"),
        (lambda d: d.update(user_id=7), "user_id must be a string"),
        (lambda d: d.update(client_port="80"), "client_port"),
        (lambda d: d.update(metadata=[]), "metadata must be an object"),
        (lambda d: d.update(stats={"packets_sent": -1}), "stats.packets_sent"),
        (lambda d: d.update(stats={"bogus": 1}), "unknown stats fields"),
        (lambda d: d.update(stats={"current_rtt_ms": float("nan")}), "current_rtt_ms"),
        (lambda d: d.update(stats=[]), "stats must be an object"),
        (lambda d: d.update(session_id="123"), "session_id is not a UUID"),
        (lambda d: d.update(session_id=d["session_id"].upper()), "not canonical"),
    ],
)
def test_from_dict_rejects_malformed_input(mutate: Any, message: str) -> None:
    data = make().to_dict()
    mutate(data)
    with pytest.raises(InvalidSession, match=message):
        Session.from_dict(data)


def test_from_dict_rejects_non_objects() -> None:
    with pytest.raises(InvalidSession, match="session must be an object"):
        Session.from_dict(["not", "a", "dict"])


def test_invalid_session_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        validate_session(make(client_port=-5))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"state": "ACTIVE"}, "state must be a State"),
        ({"server_addr": 5}, "server_addr"),
        ({"token_hash": "abc"}, "token_hash must be bytes"),
        ({"stats": None}, "stats must be a Stats"),
        ({"connection_id": str(uuid.uuid4()).upper()}, "not canonical"),
        ({"created_at": T0.replace(tzinfo=None)}, "created_at"),
    ],
)
def test_validate_session(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSession, match=message):
        validate_session(make(**overrides))


def test_validate_session_rejects_other_types() -> None:
    with pytest.raises(InvalidSession, match="expected a Session"):
        validate_session({"session_id": "x"})  # type: ignore[arg-type]


def test_require_utc() -> None:
    assert require_utc(T0, "t") is T0
    other = T0.astimezone(timezone(timedelta(0), "Z0"))
    assert require_utc(other, "t").tzinfo is UTC
    with pytest.raises(InvalidSession, match="t must be a datetime"):
        require_utc("2025", "t")
    with pytest.raises(InvalidSession, match="timezone-aware UTC"):
        require_utc(datetime(2025, 1, 1), "t")


def test_normalizers() -> None:
    cid = uuid.uuid4()
    assert normalize_connection_id(cid) == str(cid)
    assert normalize_connection_id(cid.hex) == str(cid)
    with pytest.raises(InvalidSession, match="connection_id must be a UUID"):
        normalize_connection_id(cid.bytes)
    assert normalize_client_ip("2001:DB8:0::1") == "2001:db8::1"
    with pytest.raises(InvalidSession, match="client_ip must be a string"):
        normalize_client_ip(None)


def test_validate_metadata_copies() -> None:
    source = {"a": "b"}
    copied = validate_metadata(source)
    source["a"] = "c"
    assert copied == {"a": "b"}
    assert validate_metadata(None) == {}
    with pytest.raises(InvalidSession, match="metadata must be a mapping"):
        validate_metadata([("a", "b")])


def test_filter_matches_and_pages() -> None:
    sessions = [make(user_id=u, state=s) for u, s in
                [("a", State.ACTIVE), ("a", State.IDLE), ("b", State.ACTIVE)]]
    flt = SessionFilter(user_id="a", state=State.ACTIVE)
    assert [flt.matches(s) for s in sessions] == [True, False, False]
    assert SessionFilter(limit=1, offset=1).page(sessions) == sessions[1:2]
    assert SessionFilter(offset=2).page(sessions) == sessions[2:]

"""The restart snapshot's bytes (session/snapshot.py): what is written comes back exactly, and
anything else (truncated, damaged, foreign, from a newer server, or well signed but malformed)
is refused with `SnapshotError` and its kind, whole: never half a snapshot."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from session.model import Session, State, Stats
from session.snapshot import (
    FORMAT_VERSION,
    HEADER,
    MAC_SIZE,
    MAGIC,
    Retained,
    Snapshot,
    SnapshotError,
    SnapshotKey,
    decode,
    encode,
    for_restart,
)
from tests.profiles import scaled

KEY = SnapshotKey.derive(b"k" * 64)
OTHER_KEY = SnapshotKey.derive(b"o" * 64)
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

_text = st.characters(blacklist_categories=("Cs",))
_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                      timezones=st.just(UTC))


@st.composite
def sessions(draw: st.DrawFn, session_id: str, connection_id: str) -> Session:
    return Session(
        session_id=session_id,
        user_id=draw(st.text(_text, min_size=1, max_size=12)),
        connection_id=connection_id,
        client_ip=str(draw(st.ip_addresses(v=4) | st.ip_addresses(v=6).filter(
            lambda a: a.ipv4_mapped is None))),
        client_port=draw(st.integers(0, 65535)),
        state=draw(st.sampled_from([State.CONNECTING, State.ACTIVE, State.IDLE,
                                    State.DISCONNECTING])),
        created_at=draw(_times), last_active_at=draw(_times), expires_at=draw(_times),
        server_addr=draw(st.none() | st.text(_text, max_size=30)),
        metadata=draw(st.dictionaries(st.text(_text, min_size=1, max_size=8),
                                      st.text(_text, max_size=8), max_size=4)),
        stats=Stats(*draw(st.tuples(*[st.integers(0, 2**63)] * 5)),
                    draw(st.floats(0.0, 1e9, allow_nan=False))),
        token_hash=draw(st.binary(max_size=32)),
        timeout=draw(st.none() | st.floats(0.001, 1e7)),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    ids = draw(st.lists(st.uuids(), max_size=4, unique=True))
    connections = draw(st.lists(st.uuids(), min_size=len(ids), max_size=len(ids), unique=True))
    made = []
    for sid, cid in zip(ids, connections, strict=True):
        claimed = draw(st.booleans())
        made.append(draw(sessions(str(sid), str(cid) if claimed else "")))
    retained = tuple(
        Retained(s.session_id, draw(st.binary(max_size=64)),
                 draw(st.floats(0, 4e9, allow_nan=False)))
        for s in made if draw(st.booleans()))
    return Snapshot(tuple(made), retained, draw(st.floats(0, 4e9)))


def one(state: State = State.ACTIVE, expires_in: float = 60.0, connection: bool = True,
        n: int = 1) -> Session:
    return Session(f"0192e4a0-0000-7000-8000-{n:012d}", f"user-{n}",
                   f"0192e4a0-0000-4000-8000-{n:012d}" if connection else "", "192.0.2.1",
                   4000 + n, state, T0, T0, T0 + timedelta(seconds=expires_in),
                   token_hash=bytes(32))


def signed(body: bytes, version: int = FORMAT_VERSION, key: SnapshotKey = KEY) -> bytes:
    """A snapshot whose body is `body`, correctly signed: what only a key holder can make."""
    import hashlib
    import hmac

    head = HEADER.pack(MAGIC, version, key.key_id, 1.0, len(body)) + body
    return head + hmac.new(key.secret, head, hashlib.sha256).digest()


def body_of(document: object, blobs: bytes = b"") -> bytes:
    text = json.dumps(document).encode()
    return struct.pack(">I", len(text)) + text + blobs


# ------------------------------------------------------------------ round trip


@given(snapshots())
@settings(max_examples=scaled(40))
def test_what_is_encoded_decodes_to_the_same(snapshot: Snapshot) -> None:
    assert decode(encode(snapshot, KEY), KEY) == snapshot


def test_the_file_begins_with_the_magic_and_version_and_holds_no_token() -> None:
    session = one()
    session.token_hash = bytes.fromhex("ab" * 32)
    data = encode(Snapshot((session,), (Retained(session.session_id, b"owed", 5.0),), 2.0), KEY)
    assert data.startswith(MAGIC + struct.pack(">H", FORMAT_VERSION) + KEY.key_id)
    assert ("ab" * 32).encode() in data  # the hash, as hex: all a restart needs
    assert data[-MAC_SIZE - 4:-MAC_SIZE] == b"owed"


# ------------------------------------------------------------------ refusals


@given(snapshots(), st.data())
@settings(max_examples=scaled(40))
def test_every_truncation_and_every_damaged_byte_is_refused(snapshot: Snapshot,
                                                           data: st.DataObject) -> None:
    encoded = encode(snapshot, KEY)
    for cut in data.draw(st.lists(st.integers(0, len(encoded) - 1), min_size=1, max_size=8)):
        with pytest.raises(SnapshotError) as refused:
            decode(encoded[:cut], KEY)
        assert refused.value.kind in ("truncated", "not-a-snapshot")
    for at in data.draw(st.lists(st.integers(0, len(encoded) - 1), min_size=1, max_size=8)):
        damaged = bytearray(encoded)
        damaged[at] ^= data.draw(st.integers(1, 255))
        with pytest.raises(SnapshotError) as refused:
            decode(bytes(damaged), KEY)
        assert refused.value.kind in SnapshotError.KINDS


@given(st.binary(max_size=200))
@example(MAGIC)
@example(MAGIC + b"\x00")
def test_arbitrary_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        decode(data, KEY)


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(SnapshotError, match="1 bytes after the end") as refused:
        decode(encode(Snapshot((one(),)), KEY) + b"\x00", KEY)
    assert refused.value.kind == "corrupt"


def test_a_snapshot_of_another_server_key_is_told_apart_from_a_corrupt_one() -> None:
    data = encode(Snapshot((one(),)), OTHER_KEY)
    with pytest.raises(SnapshotError, match="another server key") as refused:
        decode(data, KEY)
    assert refused.value.kind == "foreign"
    # same key id, another secret (a forgery): the MAC refuses it
    forged = SnapshotKey(b"x" * 32, KEY.key_id)
    with pytest.raises(SnapshotError, match="integrity check failed") as refused:
        decode(encode(Snapshot((one(),)), forged), KEY)
    assert refused.value.kind == "corrupt"


def test_a_future_version_is_refused_whatever_follows() -> None:
    data = MAGIC + struct.pack(">H", FORMAT_VERSION + 1) + b"anything at all, another layout"
    with pytest.raises(SnapshotError, match=r"version 2 \(written by a newer server\)") as refused:
        decode(data, KEY)
    assert refused.value.kind == "version"


def test_a_text_file_is_not_a_snapshot() -> None:
    with pytest.raises(SnapshotError, match="no snapshot magic") as refused:
        decode(b'{"sessions": []}\n' * 10, KEY)
    assert refused.value.kind == "not-a-snapshot"


GOOD = one().to_dict()


@pytest.mark.parametrize(("body", "message"), [
    (b"", "no JSON length"),
    (struct.pack(">I", 99) + b"{}", "runs past the body"),
    (body_of([]), "exactly 'sessions' and 'retained'"),
    (body_of({"sessions": [], "retained": [], "more": 1}), "exactly"),
    (body_of({"sessions": {}, "retained": []}), "must be lists"),
    (body_of({"sessions": [{**GOOD, "state": "GONE"}], "retained": []}), "unknown session state"),
    (body_of({"sessions": [{**GOOD, "client_port": 70000}], "retained": []}), "client_port"),
    (body_of({"sessions": [{**GOOD, "state": "CLOSED"}], "retained": []}), "is CLOSED"),
    (body_of({"sessions": [GOOD, GOOD], "retained": []}), "appears twice"),
    (body_of({"sessions": [GOOD, {**GOOD, "session_id": one(n=2).session_id}],
              "retained": []}), "holds two sessions"),
    (body_of({"sessions": [GOOD], "retained": [[GOOD["session_id"], 1.0, 5]]}, b"abc"),
     "runs past the body"),
    (body_of({"sessions": [GOOD], "retained": [[GOOD["session_id"], 1.0, 1]]}, b"ab"),
     "1 body bytes belong to no retained blob"),
    (body_of({"sessions": [GOOD], "retained": [[one(n=2).session_id, 1.0, 0]]}),
     "a session not in the snapshot"),
    (body_of({"sessions": [GOOD], "retained": [[GOOD["session_id"], 1.0, 0]] * 2}),
     "appears twice"),
    (body_of({"sessions": [GOOD], "retained": [[GOOD["session_id"], True, 0]]}),
     "must be \\[session id, expires at, length\\]"),
    (body_of({"sessions": [], "retained": []})[:-1] + b"\xff", "malformed content"),
    (struct.pack(">I", 2) + b"[[", "malformed content"),
    (struct.pack(">I", 200_000) + b"[" * 100_000 + b"]" * 100_000, "malformed content"),
])
def test_well_signed_but_malformed_content_is_refused_whole(body: bytes, message: str) -> None:
    with pytest.raises(SnapshotError, match=message) as refused:
        decode(signed(body), KEY)
    assert refused.value.kind == "malformed"


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12),
       st.binary(max_size=8))
@settings(max_examples=scaled(50))
def test_any_well_signed_document_loads_whole_or_not_at_all(document: object,
                                                             blobs: bytes) -> None:
    try:
        snapshot = decode(signed(body_of(document, blobs)), KEY)
    except SnapshotError as exc:
        assert exc.kind == "malformed"
    else:  # only a complete, consistent snapshot comes back
        assert decode(encode(snapshot, KEY), KEY) == snapshot


def test_the_writer_refuses_what_the_reader_would() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        encode(Snapshot((one(), one())), KEY)
    with pytest.raises(ValueError, match="not in the snapshot"):
        encode(Snapshot((one(),), (Retained(one(n=2).session_id, b"", 1.0),)), KEY)
    with pytest.raises(ValueError, match="finite deadline"):
        encode(Snapshot((one(),), (Retained(one().session_id, b"", float("inf")),)), KEY)


def test_the_key_needs_a_real_secret_and_never_shows_it() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        SnapshotKey.derive(b"short")
    assert KEY.secret.hex() not in repr(KEY)
    assert SnapshotKey.derive(b"k" * 64) == KEY and KEY.key_id != OTHER_KEY.key_id


# ------------------------------------------------------------------ what a restart takes back


def test_a_restart_drops_the_expired_and_turns_connected_sessions_resumable() -> None:
    active, idle = one(State.ACTIVE, n=1), one(State.IDLE, n=2)
    gone = one(State.DISCONNECTING, expires_in=5.0, n=3)
    unclaimed = one(State.CONNECTING, connection=False, n=4)
    mid_handshake = one(State.CONNECTING, n=5)
    now = T0 + timedelta(seconds=10)
    ts = now.timestamp()
    snapshot = Snapshot((active, idle, gone, unclaimed, mid_handshake), (
        Retained(active.session_id, b"a", ts + 1), Retained(idle.session_id, b"i", ts),
        Retained(gone.session_id, b"g", ts + 100)))
    live, expired, blobs_expired = for_restart(snapshot, now, ts)
    states = {s.session_id: s.state for s in live.sessions}
    assert states == {active.session_id: State.DISCONNECTING, idle.session_id: State.DISCONNECTING,
                      unclaimed.session_id: State.CONNECTING,
                      mid_handshake.session_id: State.DISCONNECTING}
    # the one with time left keeps its blob; one due now, or whose session expired, is dropped
    assert live.retained == (Retained(active.session_id, b"a", ts + 1),)
    assert (expired, blobs_expired) == (1, 2)
    assert active.state is State.ACTIVE  # the caller's snapshot is untouched


@given(snapshots(), _times)
@settings(max_examples=scaled(25))
def test_what_a_restart_takes_back_is_always_a_valid_snapshot(snapshot: Snapshot,
                                                               now: datetime) -> None:
    live, expired, _ = for_restart(snapshot, now, now.timestamp())
    assert all(not s.is_expired(now) for s in live.sessions)
    assert all(s.state is State.DISCONNECTING or not s.connection_id for s in live.sessions)
    assert len(live.sessions) + expired == len(snapshot.sessions)
    assert decode(encode(live, KEY), KEY) == live

"""The restart snapshot: a single-node server's sessions, and what their lost connections still
owed their peers, as one authenticated file (sans-I/O: bytes in, bytes out).

A `MemoryStore` server writes it when it stops cleanly and reads it when it starts again
(`quantum_server.restart` does the file and the store; this module only the bytes). The format
(version 1, every integer big-endian; docs/SNAPSHOT.md describes it for re-implementers)::

    magic        8 bytes   b"QSNP\\r\\n\\x1a\\n"
    version      u16       1
    key id       8 bytes   which server key wrote it (derived from the key, reveals nothing)
    written at   f64       wall-clock seconds since the epoch
    body length  u64
    body         body length bytes:
        json length  u32
        json         UTF-8 JSON: {"sessions": [Session.to_dict(), ...],
                                  "retained": [[session id, expires at, blob length], ...]}
        blobs        the retained blobs' bytes, one after the other, in "retained" order
    mac          32 bytes  HMAC-SHA256 under the snapshot key of every byte before it

The MAC is keyed from the server key file (`SnapshotKey.derive`), so a snapshot cannot be
forged or altered by anyone without the key, and one written by another server (another key)
is told apart from a corrupt one by its key id. Only token hashes are in it, never tokens.

`decode` checks everything (length, magic, version, key, MAC, then every session and blob)
before it returns anything: a bad snapshot raises `SnapshotError` and nothing else, so a caller
never sees half of one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from session.errors import InvalidSession
from session.model import Session, State

__all__ = [
    "FORMAT_VERSION",
    "HEADER",
    "MAC_SIZE",
    "MAGIC",
    "PROGRESS_EVERY",
    "Progress",
    "Retained",
    "Snapshot",
    "SnapshotError",
    "SnapshotKey",
    "decode",
    "encode",
    "encode_parts",
    "for_restart",
]

MAGIC: Final = b"QSNP\r\n\x1a\n"  # PNG-style: a text-mode copy or a ^Z truncation breaks it
FORMAT_VERSION: Final = 1
#: magic, version, key id, written at, body length
HEADER: Final = struct.Struct(">8sH8sdQ")
_VERSION: Final = struct.Struct(">H")
_VERSIONED: Final = len(MAGIC) + _VERSION.size
_JSON_LENGTH: Final = struct.Struct(">I")
MAC_SIZE: Final = 32
KEY_ID_SIZE: Final = 8
#: the states a session may be written in (CLOSED sessions are never stored)
_STORED_STATES: Final = frozenset(State) - {State.CLOSED}


#: sessions between two calls of a `Progress` callback (big snapshots say how far they got)
PROGRESS_EVERY: Final = 10_000
#: ``progress(sessions done, sessions in all)``
Progress = Callable[[int, int], None]
_In = TypeVar("_In")
_Out = TypeVar("_Out")


class SnapshotError(Exception):
    """A snapshot that cannot be loaded. `kind` is one of `KINDS`; the message says why."""

    KINDS: Final = ("truncated", "not-a-snapshot", "version", "foreign", "corrupt", "malformed")

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class SnapshotKey:
    """The MAC key and the key id of one server key. `repr()` never shows the secret."""

    secret: bytes = field(repr=False)
    key_id: bytes

    @classmethod
    def derive(cls, master: bytes) -> SnapshotKey:
        """Keys for the snapshot from the server's long-term secret (its key file's secrets),
        domain-separated from every other use of them by HKDF's info."""
        if len(master) < 16:
            raise ValueError("the snapshot key needs a secret of at least 16 bytes")
        okm = HKDF(algorithm=hashes.SHA256(), length=MAC_SIZE + KEY_ID_SIZE, salt=None,
                   info=b"quantum restart snapshot v1").derive(master)
        return cls(okm[:MAC_SIZE], okm[MAC_SIZE:])


@dataclass(frozen=True, slots=True)
class Retained:
    """What a lost connection left for its session's resume (`quantum_server.retained`)."""

    session_id: str
    blob: bytes = field(repr=False)
    expires_at: float  # wall-clock seconds since the epoch


@dataclass(frozen=True, slots=True)
class Snapshot:
    sessions: tuple[Session, ...]
    retained: tuple[Retained, ...] = ()
    written_at: float = 0.0


def encode_parts(snapshot: Snapshot, key: SnapshotKey,
                 progress: Progress | None = None) -> Iterator[bytes]:
    """The snapshot's bytes in pieces (header, JSON, each blob, MAC), so a writer need not
    hold a second copy of every blob in memory. Raises `ValueError` for a snapshot that
    `decode` would refuse (a blob for a session not in it, two sessions with one id, ...).
    `progress(done, total)` is called every `PROGRESS_EVERY` sessions encoded."""
    _check(snapshot.sessions, snapshot.retained)
    document = {
        "sessions": _each(snapshot.sessions, Session.to_dict, progress),
        "retained": [[r.session_id, r.expires_at, len(r.blob)] for r in snapshot.retained],
    }
    text = json.dumps(document, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")
    if len(text) >= 1 << 32:
        raise ValueError(f"the snapshot's JSON is {len(text)} bytes, at most 2**32 - 1")
    body_length = _JSON_LENGTH.size + len(text) + sum(len(r.blob) for r in snapshot.retained)
    mac = hmac.new(key.secret, digestmod=hashlib.sha256)
    parts: Iterable[bytes] = (
        HEADER.pack(MAGIC, FORMAT_VERSION, key.key_id, snapshot.written_at, body_length),
        _JSON_LENGTH.pack(len(text)), text, *(r.blob for r in snapshot.retained))
    for part in parts:
        mac.update(part)
        yield part
    yield mac.digest()


def encode(snapshot: Snapshot, key: SnapshotKey) -> bytes:
    return b"".join(encode_parts(snapshot, key))


def decode(data: bytes, key: SnapshotKey, progress: Progress | None = None) -> Snapshot:
    """The snapshot in `data`, checked whole; `SnapshotError` (with its kind) otherwise.
    `progress(done, total)` is called every `PROGRESS_EVERY` sessions decoded."""
    view = memoryview(data)
    if bytes(view[:len(MAGIC)]) != MAGIC[:len(view)]:
        raise SnapshotError("not-a-snapshot", "not a session snapshot (no snapshot magic)")
    if len(view) >= _VERSIONED:  # the version first: a later format may lay out the rest anew
        (version,) = _VERSION.unpack_from(view, len(MAGIC))
        if version != FORMAT_VERSION:
            newer = "a newer" if version > FORMAT_VERSION else "an older"
            raise SnapshotError("version", f"format version {version} (written by {newer} "
                                           f"server); this server reads version "
                                           f"{FORMAT_VERSION}")
    minimum = HEADER.size + MAC_SIZE
    if len(view) < minimum:
        raise SnapshotError("truncated", f"truncated: {len(view)} bytes, a snapshot has at "
                                         f"least {minimum}")
    _, _, key_id, written_at, body_length = HEADER.unpack_from(view)
    if not hmac.compare_digest(key_id, key.key_id):
        raise SnapshotError("foreign", f"written with another server key (key id "
                                       f"{key_id.hex()}, this server's is {key.key_id.hex()})")
    expected = HEADER.size + body_length + MAC_SIZE
    if len(view) < expected:
        raise SnapshotError("truncated", f"truncated: {len(view)} bytes of {expected}")
    if len(view) > expected:
        raise SnapshotError("corrupt", f"{len(view) - expected} bytes after the end")
    signed = view[:-MAC_SIZE]
    mac = hmac.new(key.secret, signed, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, bytes(view[-MAC_SIZE:])):
        raise SnapshotError("corrupt", "integrity check failed: the snapshot was altered or "
                                       "damaged")
    if not math.isfinite(written_at):
        raise SnapshotError("malformed", "the write time is not a finite number")
    try:
        sessions, retained = _parse_body(signed[HEADER.size:], progress)
        _check(sessions, retained)
    except (InvalidSession, ValueError, TypeError, KeyError, RecursionError) as exc:
        # only reachable with the key: a bug in a writer, never a damaged file (the MAC)
        raise SnapshotError("malformed", f"malformed content: {exc}") from None
    return Snapshot(sessions, retained, written_at)


def _parse_body(body: memoryview, progress: Progress | None
                ) -> tuple[tuple[Session, ...], tuple[Retained, ...]]:
    if len(body) < _JSON_LENGTH.size:
        raise ValueError("the body has no JSON length")
    (json_length,) = _JSON_LENGTH.unpack_from(body)
    end = _JSON_LENGTH.size + json_length
    if end > len(body):
        raise ValueError(f"the JSON length {json_length} runs past the body")
    document = json.loads(str(body[_JSON_LENGTH.size:end], "utf-8"))
    if not isinstance(document, Mapping) or set(document) != {"sessions", "retained"}:
        raise ValueError("the JSON must be an object of exactly 'sessions' and 'retained'")
    entries, index = document["sessions"], document["retained"]
    if not isinstance(entries, list) or not isinstance(index, list):
        raise ValueError("'sessions' and 'retained' must be lists")
    sessions = tuple(_each(entries, Session.from_dict, progress))
    retained: list[Retained] = []
    offset = end
    for item in index:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and type(item[1]) in (int, float) and type(item[2]) is int):
            raise ValueError(f"a retained entry must be [session id, expires at, length], got "
                             f"{str(item)[:80]}")
        session_id, expires_at, length = item
        if not 0 <= length <= len(body) - offset:
            raise ValueError(f"retained blob of {length} bytes runs past the body")
        retained.append(Retained(session_id, bytes(body[offset:offset + length]),
                                 float(expires_at)))
        offset += length
    if offset != len(body):
        raise ValueError(f"{len(body) - offset} body bytes belong to no retained blob")
    return sessions, tuple(retained)


def _each(items: Sequence[_In], convert: Callable[[_In], _Out],
          progress: Progress | None) -> list[_Out]:
    """`convert` applied to each item, telling `progress` every `PROGRESS_EVERY` items."""
    if progress is None or len(items) < PROGRESS_EVERY:
        return [convert(item) for item in items]
    done: list[_Out] = []
    for start in range(0, len(items), PROGRESS_EVERY):
        done.extend(convert(item) for item in items[start:start + PROGRESS_EVERY])
        progress(len(done), len(items))
    return done


def _check(sessions: Iterable[Session], retained: Iterable[Retained]) -> None:
    """What a store and a `RetainedStore` need to take it all: one session per id and per
    connection id, stored states only, a blob only for a session in the snapshot (one each)
    with a finite deadline."""
    ids: set[str] = set()
    connections: set[str] = set()
    for session in sessions:
        if session.session_id in ids:
            raise ValueError(f"session {session.session_id} appears twice")
        if session.state not in _STORED_STATES:
            raise ValueError(f"session {session.session_id} is {session.state.value}")
        ids.add(session.session_id)
        if session.connection_id:
            if session.connection_id in connections:
                raise ValueError(f"connection {session.connection_id} holds two sessions")
            connections.add(session.connection_id)
    held: set[str] = set()
    for item in retained:
        if item.session_id not in ids:
            raise ValueError(f"retained data for a session not in the snapshot: "
                             f"{item.session_id[:40]!r}")
        if item.session_id in held:
            raise ValueError(f"retained data appears twice for session {item.session_id}")
        held.add(item.session_id)
        if not math.isfinite(item.expires_at):
            raise ValueError(f"retained data for {item.session_id} has no finite deadline")


def for_restart(snapshot: Snapshot, now: datetime, now_ts: float) -> tuple[Snapshot, int, int]:
    """What a restarted server takes back at `now` (the same instant as `now_ts`, seconds
    since the epoch): the sessions that have not expired, each that a connection held
    (ACTIVE, IDLE, or CONNECTING mid-handshake) now DISCONNECTING, resumable until it
    expires, since no connection survives a restart; a session no connection held yet (created
    over the API, CONNECTING with no connection id) stays claimable as it was. Retained blobs
    go with their sessions and their own deadlines. Returns it with the counts of sessions and
    blobs dropped as expired."""
    live: list[Session] = []
    for session in snapshot.sessions:
        if session.is_expired(now):
            continue
        if session.state is not State.DISCONNECTING and session.connection_id:
            session = session.copy()  # the caller's snapshot stays as it was
            session.state = State.DISCONNECTING
        live.append(session)
    ids = {s.session_id for s in live}
    kept = tuple(r for r in snapshot.retained if r.session_id in ids and r.expires_at > now_ts)
    dropped_sessions = len(snapshot.sessions) - len(live)
    dropped_blobs = len(snapshot.retained) - len(kept)
    return Snapshot(tuple(live), kept, snapshot.written_at), dropped_sessions, dropped_blobs


"""The session data model, its validation rules and its JSON-friendly form.

Sessions are plain mutable ``__slots__`` dataclasses: the manager's hot path (heartbeat) changes
two timestamps in place, which a frozen model would turn into a whole-object copy per keepalive.
Stores protect themselves instead, by copying on the way in and on the way out
(`Session.copy`), so nothing a caller holds aliases stored state.

All timestamps are timezone-aware UTC `datetime`s; all durations are float seconds.

The bounds on what a client sends (user id, metadata) are the protocol's, `quantum.limits`,
counted in bytes of UTF-8: the handshake refuses exactly what `validate_user_id` and
`validate_metadata` refuse here, before any session work is done.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import uuid6

from quantum.limits import (
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES,
    MAX_USER_ID_BYTES,
)
from session.errors import InvalidSession

__all__ = [
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY_BYTES",
    "MAX_METADATA_VALUE_BYTES",
    "MAX_SERVER_ADDR_LENGTH",
    "MAX_USER_ID_BYTES",
    "Session",
    "SessionFilter",
    "State",
    "Stats",
    "client_address_text",
    "new_session_id",
    "normalize_client_ip",
    "normalize_connection_id",
    "require_utc",
    "validate_metadata",
    "validate_port",
    "validate_server_addr",
    "validate_session",
    "validate_stats",
    "validate_timeout",
    "validate_user_id",
]

#: the server's own address text (set by the server, not by clients)
MAX_SERVER_ADDR_LENGTH = 300
_ZERO = timedelta(0)
#: the text `str(uuid.UUID(...))` gives: lower-case hex, 8-4-4-4-12 (no braces, no urn:)
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class State(enum.StrEnum):
    """Lifecycle of a session. Values equal names so they print, log and serialise as names."""

    CONNECTING = "CONNECTING"
    ACTIVE = "ACTIVE"
    IDLE = "IDLE"
    DISCONNECTING = "DISCONNECTING"
    CLOSED = "CLOSED"


_STATS_INT_FIELDS = (
    "packets_sent",
    "packets_received",
    "bytes_sent",
    "bytes_received",
    "retransmissions",
)


@dataclass(slots=True)
class Stats:
    """Transport counters of the session's current connection, as last reported by the server."""

    packets_sent: int = 0
    packets_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retransmissions: int = 0
    current_rtt_ms: float = 0.0

    def copy(self) -> Stats:
        return Stats(
            self.packets_sent,
            self.packets_received,
            self.bytes_sent,
            self.bytes_received,
            self.retransmissions,
            self.current_rtt_ms,
        )

    def to_dict(self) -> dict[str, int | float]:
        return {
            "packets_sent": self.packets_sent,
            "packets_received": self.packets_received,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "retransmissions": self.retransmissions,
            "current_rtt_ms": self.current_rtt_ms,
        }

    @classmethod
    def from_dict(cls, data: object) -> Stats:
        """Parse `to_dict` output; anything malformed raises `InvalidSession`."""
        if not isinstance(data, Mapping):
            raise InvalidSession(f"stats must be an object, got {type(data).__name__}")
        unknown = set(data) - {*_STATS_INT_FIELDS, "current_rtt_ms"}
        if unknown:
            raise InvalidSession(f"unknown stats fields: {sorted(map(str, unknown))}")
        values: dict[str, Any] = {}
        for name in _STATS_INT_FIELDS:
            value = data.get(name, 0)
            if type(value) is not int or value < 0:
                raise InvalidSession(f"stats.{name} must be a non-negative integer, got {value!r}")
            values[name] = value
        rtt = data.get("current_rtt_ms", 0.0)
        if type(rtt) not in (int, float) or not 0.0 <= rtt < float("inf"):
            raise InvalidSession(f"stats.current_rtt_ms must be a finite number >= 0, got {rtt!r}")
        values["current_rtt_ms"] = float(rtt)
        return cls(**values)


def validate_stats(stats: Stats) -> None:
    """The checks `Stats.from_dict` makes, on the object itself (no dict, no copy)."""
    if not isinstance(stats, Stats):
        raise InvalidSession(f"stats must be a Stats, got {type(stats).__name__}")
    for name in _STATS_INT_FIELDS:
        value = getattr(stats, name)
        if type(value) is not int or value < 0:
            raise InvalidSession(f"stats.{name} must be a non-negative integer, got {value!r}")
    rtt = stats.current_rtt_ms
    if type(rtt) not in (int, float) or not 0.0 <= rtt < float("inf"):
        raise InvalidSession(f"stats.current_rtt_ms must be a finite number >= 0, got {rtt!r}")


@dataclass(slots=True)
class Session:
    """One client's session. `token_hash` is the only trace of the resume token ever kept.

    `connection_id` is empty while no connection holds the session yet (one created over the
    API for a client that has still to connect and claim it). `timeout` is the session's own
    timeout in seconds, or None for the manager's default (the usual case).
    """

    session_id: str
    user_id: str
    connection_id: str
    client_ip: str
    client_port: int
    state: State
    created_at: datetime
    last_active_at: datetime
    expires_at: datetime
    server_addr: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    token_hash: bytes = field(default=b"", repr=False)
    timeout: float | None = None
    #: the token a resume replaced, good for resuming until the client acknowledged the new
    #: one (`SessionManager.confirm_token`); b"" when there is none (PROTOCOL.md 12.3)
    previous_token_hash: bytes = field(default=b"", repr=False)

    def copy(self) -> Session:
        """An independent copy: its metadata dict and stats are new objects too."""
        return Session(
            self.session_id,
            self.user_id,
            self.connection_id,
            self.client_ip,
            self.client_port,
            self.state,
            self.created_at,
            self.last_active_at,
            self.expires_at,
            self.server_addr,
            dict(self.metadata),
            self.stats.copy(),
            self.token_hash,
            self.timeout,
            self.previous_token_hash,
        )

    def is_expired(self, now: datetime) -> bool:
        """Expired from the instant `expires_at` is reached, so a zero remaining time is dead."""
        return now >= self.expires_at

    def remaining(self, now: datetime) -> float:
        """Seconds until expiry, never negative."""
        left = (self.expires_at - now).total_seconds()
        return left if left > 0.0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (for stores that keep bytes, e.g. etcd). `timeout` appears
        only when set, so a session on the default timeout encodes as it always did."""
        data: dict[str, Any] = {
            "session_id": self.session_id,
            "user_id": self.user_id,
            "connection_id": self.connection_id,
            "client_ip": self.client_ip,
            "client_port": self.client_port,
            "server_addr": self.server_addr,
            "state": self.state.value,
            "created_at": self.created_at.isoformat(),
            "last_active_at": self.last_active_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "metadata": dict(self.metadata),
            "stats": self.stats.to_dict(),
            "token_hash": self.token_hash.hex(),
        }
        if self.timeout is not None:
            data["timeout"] = self.timeout
        if self.previous_token_hash:
            data["previous_token_hash"] = self.previous_token_hash.hex()
        return data

    @classmethod
    def from_dict(cls, data: object) -> Session:
        """Parse and validate `to_dict` output; anything malformed raises `InvalidSession`."""
        if not isinstance(data, Mapping):
            raise InvalidSession(f"session must be an object, got {type(data).__name__}")
        required = {
            "session_id", "user_id", "connection_id", "client_ip", "client_port", "state",
            "created_at", "last_active_at", "expires_at",
        }
        missing = required - set(data)
        if missing:
            raise InvalidSession(f"session is missing fields: {sorted(missing)}")
        optional = {"server_addr", "metadata", "stats", "token_hash", "timeout",
                    "previous_token_hash"}
        unknown = set(data) - required - optional
        if unknown:
            raise InvalidSession(f"unknown session fields: {sorted(map(str, unknown))}")
        state = data["state"]
        if state not in State.__members__:
            raise InvalidSession(f"unknown session state: {state!r}")
        token_hash = _parse_hex(data.get("token_hash", ""), "token_hash")
        previous_token_hash = _parse_hex(data.get("previous_token_hash", ""),
                                         "previous_token_hash")
        metadata = data.get("metadata", {})
        if not isinstance(metadata, Mapping):
            raise InvalidSession("metadata must be an object")
        session = cls(
            session_id=_parse_str(data["session_id"], "session_id"),
            user_id=_parse_str(data["user_id"], "user_id"),
            connection_id=_parse_str(data["connection_id"], "connection_id"),
            client_ip=_parse_str(data["client_ip"], "client_ip"),
            client_port=data["client_port"],
            state=State(state),
            created_at=_parse_time(data["created_at"], "created_at"),
            last_active_at=_parse_time(data["last_active_at"], "last_active_at"),
            expires_at=_parse_time(data["expires_at"], "expires_at"),
            server_addr=data.get("server_addr"),
            metadata=dict(metadata),
            stats=Stats.from_dict(data.get("stats", {})),
            token_hash=token_hash,
            timeout=validate_timeout(data.get("timeout")),
            previous_token_hash=previous_token_hash,
        )
        validate_session(session)
        return session


def _parse_hex(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidSession(f"{name} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise InvalidSession(f"{name} is not hex: {value[:80]!r}") from None


def _parse_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidSession(f"{name} must be a string, got {type(value).__name__}")
    return value


def _parse_time(value: object, name: str) -> datetime:
    text = _parse_str(value, name)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidSession(f"{name} is not an ISO 8601 timestamp: {text[:80]!r}") from None
    return require_utc(parsed, name)


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """Which sessions `list` returns: all fields optional; `limit=None` means no limit.

    Results are ordered by session id, which for UUIDv7 ids is creation order, so paging with
    `offset` is stable while sessions are only added.
    """

    user_id: str | None = None
    state: State | None = None
    limit: int | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        if self.state is not None and not isinstance(self.state, State):
            raise InvalidSession(f"filter state must be a State, got {self.state!r}")
        if self.limit is not None and (type(self.limit) is not int or self.limit < 0):
            raise InvalidSession(f"filter limit must be an integer >= 0, got {self.limit!r}")
        if type(self.offset) is not int or self.offset < 0:
            raise InvalidSession(f"filter offset must be an integer >= 0, got {self.offset!r}")

    def matches(self, session: Session) -> bool:
        return (self.user_id is None or session.user_id == self.user_id) and (
            self.state is None or session.state is self.state
        )

    def page(self, ordered: list[Session]) -> list[Session]:
        """The slice of an already filtered, ordered list that this filter's paging selects."""
        end = None if self.limit is None else self.offset + self.limit
        return ordered[self.offset:end]


def new_session_id() -> str:
    """A UUIDv7 string: time-ordered, so sorting ids sorts by creation."""
    return str(uuid6.uuid7())


def require_utc(value: object, name: str) -> datetime:
    """Accept only timezone-aware datetimes at UTC offset zero; naive times are ambiguous."""
    if not isinstance(value, datetime):
        raise InvalidSession(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() != _ZERO:
        raise InvalidSession(f"{name} must be timezone-aware UTC, got {value.isoformat()}")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _utf8_size(text: str, name: str) -> int:
    """Bytes of UTF-8 in `text`; InvalidSession for text that has none (a lone surrogate)."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidSession(f"{name} is not valid UTF-8 text (a lone surrogate)") from None


def validate_user_id(user_id: object) -> str:
    if not isinstance(user_id, str):
        raise InvalidSession(f"user_id must be a string, got {type(user_id).__name__}")
    if not user_id:
        raise InvalidSession("user_id must not be empty")
    size = _utf8_size(user_id, "user_id")
    if size > MAX_USER_ID_BYTES:
        raise InvalidSession(
            f"user_id is {size} bytes of UTF-8, at most {MAX_USER_ID_BYTES} allowed"
        )
    return user_id


def validate_port(port: object) -> int:
    if type(port) is not int or not 0 <= port <= 65535:
        raise InvalidSession(f"client_port must be an integer 0-65535, got {port!r}")
    return port


def normalize_connection_id(connection_id: object) -> str:
    """Canonical lower-case hyphenated UUID text, whatever UUID spelling the caller used."""
    if isinstance(connection_id, uuid.UUID):
        return str(connection_id)
    if not isinstance(connection_id, str):
        raise InvalidSession(
            f"connection_id must be a UUID, got {type(connection_id).__name__}"
        )
    if _CANONICAL_UUID.fullmatch(connection_id):
        return connection_id  # already what str(UUID) gives: the usual case, no parse
    try:
        return str(uuid.UUID(connection_id))
    except ValueError:
        raise InvalidSession(f"connection_id is not a UUID: {connection_id[:80]!r}") from None


def normalize_client_ip(client_ip: object) -> str:
    if not isinstance(client_ip, str):
        raise InvalidSession(f"client_ip must be a string, got {type(client_ip).__name__}")
    if ":" not in client_ip and _is_canonical_ipv4(client_ip):
        return client_ip  # what str(ip_address(...)) gives: the usual case, no parse
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        raise InvalidSession(f"client_ip is not an IP address: {client_ip[:80]!r}") from None
    # canonical text, an IPv4-mapped IPv6 address (a dual-stack socket's IPv4 client) as its
    # IPv4 address, as quantum.addresses.ip_text writes it (session/ imports only
    # quantum.limits); already canonical (the usual case), the caller's string itself
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    text = str(address)
    return client_ip if text == client_ip else text


def _is_canonical_ipv4(text: str) -> bool:
    """Whether `text` is an IPv4 address in the dotted-quad form `ipaddress` prints (no
    leading zeros, nothing around it): what the C library packs and prints back unchanged."""
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)) == text
    except (OSError, ValueError):  # not an address; ValueError: an embedded NUL
        return False


def client_address_text(client_ip: str, client_port: int) -> str:
    """`ip:port` as logs show it, an IPv6 address in brackets: `[2001:db8::1]:4433`."""
    return f"[{client_ip}]:{client_port}" if ":" in client_ip else f"{client_ip}:{client_port}"


def validate_timeout(timeout: object) -> float | None:
    """A session's own timeout: None (the manager's default) or positive finite seconds."""
    if timeout is None:
        return None
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not 0.0 < timeout < float("inf")):
        raise InvalidSession(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def validate_server_addr(server_addr: object) -> str | None:
    if server_addr is None:
        return None
    if not isinstance(server_addr, str) or len(server_addr) > MAX_SERVER_ADDR_LENGTH:
        raise InvalidSession(
            f"server_addr must be a string of at most {MAX_SERVER_ADDR_LENGTH} characters"
        )
    return server_addr


def validate_metadata(metadata: object) -> dict[str, str]:
    """Check the bounds and return a private copy, so later caller mutations change nothing."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidSession(f"metadata must be a mapping, got {type(metadata).__name__}")
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidSession(
            f"metadata has {len(metadata)} entries, at most {MAX_METADATA_ENTRIES} allowed"
        )
    for key, value in metadata.items():
        if not (isinstance(key, str) and key
                and _utf8_size(key, "metadata key") <= MAX_METADATA_KEY_BYTES):
            raise InvalidSession(
                f"metadata key {str(key)[:40]!r} must be a string of 1-"
                f"{MAX_METADATA_KEY_BYTES} bytes of UTF-8"
            )
        if not (isinstance(value, str)
                and _utf8_size(value, f"metadata value for {key!r}") <= MAX_METADATA_VALUE_BYTES):
            raise InvalidSession(
                f"metadata value for {key!r} must be a string of at most "
                f"{MAX_METADATA_VALUE_BYTES} bytes of UTF-8"
            )
    return dict(metadata)


def validate_session(session: Session) -> None:
    """Check a whole session before a store accepts it; raises `InvalidSession`."""
    if not isinstance(session, Session):
        raise InvalidSession(f"expected a Session, got {type(session).__name__}")
    if not (isinstance(session.session_id, str)
            and _CANONICAL_UUID.fullmatch(session.session_id)):
        try:
            uuid.UUID(session.session_id)
        except (ValueError, TypeError, AttributeError):
            raise InvalidSession(f"session_id is not a UUID: {session.session_id!r}") from None
        raise InvalidSession(f"session_id is not canonical UUID text: {session.session_id!r}")
    validate_user_id(session.user_id)
    if session.connection_id != "" and (
            normalize_connection_id(session.connection_id) != session.connection_id):
        raise InvalidSession(
            f"connection_id is not canonical UUID text: {session.connection_id!r}"
        )
    normalize_client_ip(session.client_ip)
    validate_port(session.client_port)
    validate_server_addr(session.server_addr)
    if not isinstance(session.state, State):
        raise InvalidSession(f"state must be a State, got {session.state!r}")
    require_utc(session.created_at, "created_at")
    require_utc(session.last_active_at, "last_active_at")
    require_utc(session.expires_at, "expires_at")
    validate_metadata(session.metadata)
    validate_stats(session.stats)
    if not isinstance(session.token_hash, bytes):
        raise InvalidSession("token_hash must be bytes")
    if not isinstance(session.previous_token_hash, bytes):
        raise InvalidSession("previous_token_hash must be bytes")
    validate_timeout(session.timeout)

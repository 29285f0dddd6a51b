"""What a connection tells its owner: small dataclasses pulled with `Connection.next_event()`.

The protocol core never calls out into application code; it queues these and the owner (the
asyncio server, the client, a test) pulls them after each input, as in aioquic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quantum.frames import Delivery


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every connection event."""


@dataclass(frozen=True, slots=True)
class AuthenticationRequested(Event):
    """Server side: a client finished the cryptographic handshake and presented credentials.

    The owner authenticates them and answers with `Connection.accept()` or
    `Connection.reject()`; until then nothing is delivered on the connection.
    """

    user_id: str
    ticket: str | None
    resume: tuple[bytes, str] | None
    resume_fallback: bool
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(Event):
    """The connection is established (client: the server accepted us; server: we accepted)."""

    session_id: bytes
    session_token: str
    remaining: float | None
    resumed: bool


@dataclass(frozen=True, slots=True)
class HandshakeRejected(Event):
    """Client side: the server refused the handshake with a reason code."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A whole application message arrived on a channel, with its delivery mode."""

    data: bytes
    channel: int
    mode: Delivery


@dataclass(frozen=True, slots=True)
class KeepaliveReceived(Event):
    """The peer sent a keepalive; the server answers with `acknowledge_keepalive`."""

    keepalive_id: int


@dataclass(frozen=True, slots=True)
class KeepaliveAcknowledged(Event):
    """Our keepalive was answered; `remaining` is the session's remaining seconds (None: none)."""

    keepalive_id: int
    remaining: float | None
    rtt: float | None


@dataclass(frozen=True, slots=True)
class PathMigrated(Event):
    """An authenticated packet from a new address was validated; the peer now lives there."""

    old_addr: tuple[str, int]
    new_addr: tuple[str, int]


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The connection is closed: by us, by the peer, or by a timeout. Always the last event."""

    code: int
    reason: str
    by_peer: bool

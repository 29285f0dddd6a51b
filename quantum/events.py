"""What a connection tells its owner: small dataclasses pulled with `Connection.next_event()`.

The protocol core never calls out into application code; it queues these and the owner (the
asyncio server, the client, a test) pulls them after each input, as in aioquic.

Two shapes. The events of a connection's life (authentication, handshake, migration, close)
are plain frozen dataclasses: immutable, compared and hashed by value (a field that is not
hashable, like `AuthenticationRequested.metadata`, makes `hash()` raise). The three that come
with packets (`MessageReceived`, `KeepaliveReceived`, `KeepaliveAcknowledged`) are mutable
slots dataclasses with a hand-written `__init__`, which mypyc compiles (a dataclass's generated
one runs interpreted: callgrind counts in docs/ARCHITECTURE.md, "The compiled core"); being
mutable, they compare by value and are not hashable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quantum.addresses import Address
from quantum.frames import Delivery


class Event:
    """Base class of every connection event."""

    __slots__ = ()


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
    #: the client asks to continue its lost connection's streams (PROTOCOL.md 12.4): how far
    #: it delivered each reliable stream; None: it does not ask
    delivered: tuple[tuple[int, int, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(Event):
    """The connection is established (client: the server accepted us; server: we accepted)."""

    session_id: bytes
    session_token: str
    #: the session's remaining lifetime in seconds
    remaining: float
    resumed: bool
    #: the lost connection's streams continue on this one (nothing in flight was lost)
    carried: bool = False

    def __repr__(self) -> str:
        return (f"HandshakeCompleted(session_id={self.session_id.hex()}, session_token=<hidden>,"
                f" remaining={self.remaining}, resumed={self.resumed}, carried={self.carried})")


@dataclass(frozen=True, slots=True)
class HandshakeRejected(Event):
    """Client side: the server refused the handshake with a reason code."""

    code: int
    reason: str


@dataclass(slots=True, init=False)
class MessageReceived(Event):
    """A whole application message arrived on a channel, with its delivery mode."""

    data: bytes
    channel: int
    mode: Delivery

    def __init__(self, data: bytes, channel: int, mode: Delivery) -> None:
        self.data = data
        self.channel = channel
        self.mode = mode


@dataclass(slots=True, init=False)
class KeepaliveReceived(Event):
    """The peer sent a keepalive; the server answers with `acknowledge_keepalive`."""

    keepalive_id: int

    def __init__(self, keepalive_id: int) -> None:
        self.keepalive_id = keepalive_id


@dataclass(slots=True, init=False)
class KeepaliveAcknowledged(Event):
    """Our keepalive was answered; `remaining` is the session's remaining seconds (None: none)."""

    keepalive_id: int
    remaining: float | None
    rtt: float | None

    def __init__(self, keepalive_id: int, remaining: float | None, rtt: float | None) -> None:
        self.keepalive_id = keepalive_id
        self.remaining = remaining
        self.rtt = rtt


@dataclass(frozen=True, slots=True)
class SendBufferDrained(Event):
    """After a `send` was refused with `SendBufferFull` (or a `drain` began): the buffer is
    down to half its limit and the largest refused message fits; `available` bytes can be
    queued now."""

    available: int


@dataclass(frozen=True, slots=True)
class PathMigrated(Event):
    """An authenticated packet from a new address was validated; the peer now lives there.
    Both are the socket's tuples (`quantum.addresses.Address`): an IPv4 client that moves to
    IPv6, or back, migrates like any other."""

    old_addr: Address
    new_addr: Address


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The connection is closed: by us, by the peer, or by a timeout. Always the last event."""

    code: int
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class SessionConfirmed(Event):
    """Server side: the client acknowledged the packet that carried its SESSION frame, so it
    holds the session's (new) token: a token the resume replaced may stop working now."""


@dataclass(frozen=True, slots=True)
class CarryoverLost(Event):
    """Client side: the session was resumed but the server had nothing of the lost
    connection (another node, a restart without snapshot, a carry-over over its cap), so
    its streams start again at id 0. `unacknowledged` reliable messages we had sent were not
    known to have arrived, and `undelivered` pieces of messages the server had begun to send
    us are gone with it (PROTOCOL.md 12.4)."""

    unacknowledged: int
    reason: str

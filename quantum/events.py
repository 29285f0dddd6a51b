"""What a connection tells its owner: small dataclasses pulled with `Connection.next_event()`.

The protocol core never calls out into application code; it queues these and the owner (the
asyncio server, the client, a test) pulls them after each input, as in aioquic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quantum.frames import Delivery


@dataclass(slots=True, init=False, unsafe_hash=True)
class Event:
    """Base class of every connection event."""


@dataclass(slots=True, init=False, unsafe_hash=True)
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

    def __init__(
        self,
        user_id: str,
        ticket: str | None,
        resume: tuple[bytes, str] | None,
        resume_fallback: bool,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.user_id = user_id
        self.ticket = ticket
        self.resume = resume
        self.resume_fallback = resume_fallback
        self.metadata = {} if metadata is None else metadata


@dataclass(slots=True, init=False, unsafe_hash=True)
class HandshakeCompleted(Event):
    """The connection is established (client: the server accepted us; server: we accepted)."""

    session_id: bytes
    session_token: str
    #: the session's remaining lifetime in seconds
    remaining: float
    resumed: bool

    def __init__(
        self,
        session_id: bytes,
        session_token: str,
        remaining: float,
        resumed: bool,
    ) -> None:
        self.session_id = session_id
        self.session_token = session_token
        self.remaining = remaining
        self.resumed = resumed


@dataclass(slots=True, init=False, unsafe_hash=True)
class HandshakeRejected(Event):
    """Client side: the server refused the handshake with a reason code."""

    code: int
    reason: str

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


@dataclass(slots=True, init=False, unsafe_hash=True)
class MessageReceived(Event):
    """A whole application message arrived on a channel, with its delivery mode."""

    data: bytes
    channel: int
    mode: Delivery

    def __init__(self, data: bytes, channel: int, mode: Delivery) -> None:
        self.data = data
        self.channel = channel
        self.mode = mode


@dataclass(slots=True, init=False, unsafe_hash=True)
class KeepaliveReceived(Event):
    """The peer sent a keepalive; the server answers with `acknowledge_keepalive`."""

    keepalive_id: int

    def __init__(self, keepalive_id: int) -> None:
        self.keepalive_id = keepalive_id


@dataclass(slots=True, init=False, unsafe_hash=True)
class KeepaliveAcknowledged(Event):
    """Our keepalive was answered; `remaining` is the session's remaining seconds (None: none)."""

    keepalive_id: int
    remaining: float | None
    rtt: float | None

    def __init__(self, keepalive_id: int, remaining: float | None, rtt: float | None) -> None:
        self.keepalive_id = keepalive_id
        self.remaining = remaining
        self.rtt = rtt


@dataclass(slots=True, init=False, unsafe_hash=True)
class SendBufferDrained(Event):
    """After a `send` was refused with `SendBufferFull` (or a `drain` began): the buffer is
    down to half its limit and the largest refused message fits; `available` bytes can be
    queued now."""

    available: int

    def __init__(self, available: int) -> None:
        self.available = available


@dataclass(slots=True, init=False, unsafe_hash=True)
class PathMigrated(Event):
    """An authenticated packet from a new address was validated; the peer now lives there."""

    old_addr: tuple[str, int]
    new_addr: tuple[str, int]

    def __init__(self, old_addr: tuple[str, int], new_addr: tuple[str, int]) -> None:
        self.old_addr = old_addr
        self.new_addr = new_addr


@dataclass(slots=True, init=False, unsafe_hash=True)
class ConnectionClosed(Event):
    """The connection is closed: by us, by the peer, or by a timeout. Always the last event."""

    code: int
    reason: str
    by_peer: bool

    def __init__(self, code: int, reason: str, by_peer: bool) -> None:
        self.code = code
        self.reason = reason
        self.by_peer = by_peer

"""The protocol's error types and reason codes, in one place."""

from __future__ import annotations

import enum


class QuantumError(Exception):
    """Base class of every error the Quantum protocol package raises."""


class ProtocolError(QuantumError):
    """The peer violated the protocol; the connection is reset (RST)."""


class MessageError(QuantumError, ValueError):
    """A message handed to `send()` cannot be sent (too large, bad channel, closed...)."""


class SendBufferFull(MessageError):
    """A reliable message would take the connection past its send buffer
    (`QuantumConfiguration.max_send_buffer`: bytes queued or sent and not yet acknowledged).

    Backpressure, not a failure: nothing was queued, and the message can be sent again once
    the peer has acknowledged enough (the connection tells with a `SendBufferDrained` event;
    the asyncio client's `send` waits for it, the server's `Peer.drain()` too)."""

    def __init__(self, size: int, buffered: int, limit: int) -> None:
        super().__init__(f"send buffer full: a {size}-byte message on top of {buffered} bytes "
                         f"queued or unacknowledged exceeds the limit of {limit} bytes")
        self.size = size
        self.buffered = buffered
        self.limit = limit


class ConnectionClosedError(QuantumError):
    """An operation needs an open connection and this one is closed."""


class CloseCode(enum.IntEnum):
    """Reason codes carried in CLOSE frames and handshake rejections (u16 on the wire)."""

    NORMAL = 0  # application closed the connection (client logout, server shutdown...)
    IDLE_TIMEOUT = 1
    PROTOCOL_VIOLATION = 2
    SESSION_ENDED = 3  # the session was deleted or expired in the session service
    SERVER_SHUTDOWN = 4
    HANDSHAKE_TIMEOUT = 5
    INTERNAL_ERROR = 6
    #: the connection sealed as many packets as one key may protect (QuantumConfiguration.
    #: packets_per_key); the client reconnects, resuming its session
    KEYS_EXHAUSTED = 7
    #: the peer acknowledged nothing for `QuantumConfiguration.stall_timeout` while data was
    #: outstanding (it keeps sending, so the idle timeout never fires)
    STALLED = 8
    # handshake rejections
    BAD_TICKET = 16
    EXPIRED_TICKET = 17
    UNKNOWN_USER = 18
    SERVER_FULL = 19
    RATE_LIMITED = 20
    VERSION_NOT_SUPPORTED = 21
    BAD_RESUME = 22
    BAD_SERVER_KEY = 23
    BAD_REQUEST = 24  # malformed credentials or metadata
    STORE_UNAVAILABLE = 25  # the session store cannot be reached; try again later
    # resource limits (docs/PROTOCOL.md 10.4): the client may try again later
    #: the user already has `max_sessions_per_user` sessions, none of them evictable (every one
    #: is held by a live connection)
    TOO_MANY_SESSIONS = 26
    #: the session service holds `max_sessions` sessions
    SESSIONS_FULL = 27
    #: the user already has `max_connections_per_user` connections to this server
    TOO_MANY_CONNECTIONS = 28
    #: the source address already has `max_connections_per_address` connections to this server
    ADDRESS_FULL = 29
    #: the ClientHello offered no cipher the server has (plaintext REJECT)
    CIPHER_NOT_SUPPORTED = 30


class ConnectError(QuantumError):
    """The server refused us (with its reason code) or never answered."""

    def __init__(self, code: int, reason: str) -> None:
        name = CloseCode(code).name if code in CloseCode._value2member_map_ else str(code)
        super().__init__(f"connection refused ({name}): {reason}")
        self.code = code
        self.reason = reason

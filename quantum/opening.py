"""The client's side of the opening handshake, as the connection runs it.

`quantum/handshake.py` holds the messages and the cryptography; this is the client's driver of
them while the handshake runs (states SYN_SENT and AWAIT_ACCEPT): which datagram goes out,
when it is sent again, when the whole handshake has run out of time, and what to make of an
unauthenticated REJECT. It exists only while needed: the connection creates it with a client
connection, and drops it (secrets wiped) once the server accepted, refused, or time ran out.
A server connection never has one. Sans-I/O like everything in `quantum/`.
"""

from __future__ import annotations

from quantum.config import QuantumConfiguration
from quantum.frames import RejectFrame, decode_frames
from quantum.handshake import ClientHandshake, Credentials, ServerParams, SessionKeys
from quantum.packet import ACK, SYN, Packet, PacketError, encode_packet


class ClientOpening:
    """Tries, resends and the deadline of one client handshake, and its secrets."""

    __slots__ = ("connection_id", "credentials", "crypto", "deadline", "interval", "last",
                 "max_tries", "out", "reject", "resend_at", "sent_at", "tries")

    def __init__(self, connection_id: bytes, credentials: Credentials,
                 configuration: QuantumConfiguration, now: float, *,
                 server_key: bytes | str | None = None,
                 ephemeral_private: bytes | None = None) -> None:
        self.connection_id = connection_id
        #: what the client presented (the ticket is a secret: gone with `clear`)
        self.credentials: Credentials | None = credentials
        self.crypto: ClientHandshake | None = ClientHandshake(
            connection_id, credentials, server_key=server_key,
            ephemeral_private=ephemeral_private)
        self.deadline = now + configuration.handshake_timeout  # the whole handshake's
        self.max_tries = configuration.handshake_tries
        self.interval = configuration.handshake_timeout / configuration.handshake_tries
        self.tries = 0  # transmissions of the current message (SYN, or the finishing ACK)
        self.out: list[bytes] | None = None  # datagrams not yet collected
        self.last = b""  # the current message, as resent
        self.sent_at = now
        self.resend_at: float | None = None
        #: the last plaintext REJECT, remembered while SYNs are left to send (code, reason)
        self.reject: tuple[int, str] | None = None

    def _crypto(self) -> ClientHandshake:
        crypto = self.crypto
        assert crypto is not None, "the handshake was cleared"
        return crypto

    # ---------------------------------------------------------------- sending

    def send(self, flags: int, payload: bytes, now: float) -> int:
        """A new handshake message; its datagram's size (the caller counts it)."""
        self.tries += 1
        datagram = encode_packet(Packet(flags, self.connection_id, 0, 0, (), payload))
        self._queue(datagram)
        self.last = datagram
        self.sent_at = now
        self.resend_at = now + self.interval
        return len(datagram)

    def hello(self, now: float) -> int:
        """The SYN: the first one, or the one carrying the server's retry cookie."""
        self.tries = 0
        return self.send(SYN, self._crypto().client_hello(), now)

    def take_out(self) -> list[bytes] | None:
        out, self.out = self.out, None
        return out

    def _queue(self, datagram: bytes) -> None:
        if self.out is None:
            self.out = [datagram]
        else:
            self.out.append(datagram)

    # ---------------------------------------------------------------- time

    def timer(self) -> float:
        """The earliest of the resend time and the handshake's deadline."""
        resend = self.resend_at
        return self.deadline if resend is None or resend > self.deadline else resend

    def on_timer(self, now: float) -> tuple[bool, int]:
        """Whether the handshake has run out of time, and the bytes of any resend queued."""
        if now >= self.deadline:
            return True, 0
        resend = self.resend_at
        if resend is None or now < resend:
            return False, 0
        if self.tries >= self.max_tries:
            self.resend_at = None  # the deadline decides now
            return False, 0
        self.tries += 1
        self._queue(self.last)
        self.resend_at = now + self.interval
        return False, len(self.last)

    def proven(self) -> None:
        """A protected packet arrived: the server has our finish, stop resending it."""
        self.resend_at = None

    # ---------------------------------------------------------------- receiving

    def on_reject(self, payload: bytes) -> RejectFrame | None:
        """A plaintext REJECT (RST). Unauthenticated: anyone who saw our SYN could have sent
        it. While SYNs are left to send it is only remembered (`reject`, for the owner to
        report should the handshake then time out) and None returned; the one answering the
        last SYN ends the handshake (docs/PROTOCOL.md 10.2). Raises PacketError if it
        carries no reason."""
        reject = next((f for f in decode_frames(payload) if isinstance(f, RejectFrame)), None)
        if reject is None:
            raise PacketError("handshake reset without a reason")
        self.reject = (reject.code, reject.reason)
        return reject if self.tries >= self.max_tries else None

    def on_retry(self, payload: bytes, now: float) -> int:
        """The server asked for its retry cookie: the next SYN carries it."""
        self._crypto().on_retry(payload)
        return self.hello(now)

    def on_server_hello(self, payload: bytes,
                        now: float) -> tuple[ServerParams, SessionKeys, float | None]:
        """The server proved its key: the negotiated parameters, the packet keys, and an RTT
        sample if the SYN was sent once (Karn: a resent one's answer is ambiguous). The
        finishing ACK is queued; it is resent until a protected packet proves it arrived."""
        crypto = self._crypto()
        params = crypto.on_server_hello(payload)
        keys = crypto.keys
        assert keys is not None
        rtt = now - self.sent_at if self.tries == 1 else None
        self.tries = 0
        self.send(ACK, crypto.client_finish(), now)
        return params, keys, rtt

    # ---------------------------------------------------------------- the end

    def clear(self) -> None:
        """Forget the handshake's secrets (the ephemeral private key and encoded credentials,
        wiped by `ClientHandshake.clear`; the ticket in `credentials`) and its datagrams."""
        crypto = self.crypto
        if crypto is not None:
            crypto.clear()
            self.crypto = None
        self.credentials = None
        self.last = b""
        self.out = None
        self.resend_at = None

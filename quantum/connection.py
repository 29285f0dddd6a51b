"""The Quantum connection state machine, sans-I/O.

A `Connection` owns one peer. It never touches a socket or a clock: every input carries `now`
(float seconds of a monotonic clock, 0 or more: `time.monotonic()` counts from boot, and the
congestion controller, the stall clock and the path MTU search mark "never" with -1; a
connection created at a negative time is refused), output datagrams are pulled with
`datagrams_to_send`, and what happened is pulled as events with `next_event`. Everything with
an algorithm of its own lives in its own module; this one only wires them together:

    wire codec ........ packet.py, frames.py      reliability .... reliability.py
    channels .......... channels.py               congestion ..... bbr.py
    FEC ............... fec.py                    keys, AEAD ..... handshake.py, crypto.py
    path MTU .......... pmtu.py                   migration ...... migration.py

States (client):  SYN_SENT -> AWAIT_ACCEPT -> ESTABLISHED -> CLOSING -> CLOSED
States (server):                AUTHENTICATING -> ESTABLISHED -> CLOSING -> CLOSED
The server's stateless first half of the handshake lives in listener.py.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, cast

from quantum import packet as wire
from quantum.addresses import Address as Address  # re-exported: the type every owner uses
from quantum.bbr import BBR
from quantum.carryover import Carryover, CarryoverError, capture
from quantum.channels import ChannelReceiver, ChannelSender
from quantum.config import KEY_LIMIT_HEADROOM, QuantumConfiguration
from quantum.crypto import PacketProtection, ProtectionError
from quantum.errors import (
    CloseCode,
    ConnectionClosedError,
    MessageError,
    ProtocolError,
    SendBufferFull,
)
from quantum.events import (
    AuthenticationRequested,
    CarryoverLost,
    ConnectionClosed,
    Event,
    HandshakeCompleted,
    HandshakeRejected,
    KeepaliveAcknowledged,
    KeepaliveReceived,
    MessageReceived,
    PathMigrated,
    SendBufferDrained,
    SessionConfirmed,
)
from quantum.fec import FecState, ParityShard
from quantum.frames import (
    MAX_DELIVERED_MARKS,
    MESSAGE_OVERHEAD,
    PATH_DATA_SIZE,
    AckFloorFrame,
    CloseFrame,
    DeliveredFrame,
    Delivery,
    Frame,
    KeepaliveAckFrame,
    KeepaliveFrame,
    MessageFrame,
    ParityFrame,
    PathChallengeFrame,
    PathResponseFrame,
    PingFrame,
    RejectFrame,
    SessionFrame,
    cut_reason,
    decode_frames,
    elicits_ack,
    encode_frames,
    is_retransmittable,
    remaining_ms,
    remaining_seconds,
)
from quantum.handshake import (
    MAX_CREDENTIAL_MARKS,
    Credentials,
    HandshakeError,
    ServerParams,
    SessionKeys,
)
from quantum.keepalive import KeepaliveClock
from quantum.keyupdate import PreviousKeys, open_other_phase
from quantum.limits import MAX_MESSAGE_SIZE
from quantum.migration import PathValidation
from quantum.opening import ClientOpening
from quantum.packet import (
    ACK,
    FEC,
    FIN,
    KEY_PHASE,
    PSH,
    RST,
    SYN,
    URG,
    PacketError,
    build_header,
    decode_header,
    encode_sack,
    split_body,
)
from quantum.pmtu import PathMtu, max_data_payload, max_datagram_for_address
from quantum.reliability import (
    BEYOND_WINDOW,
    DUPLICATE,
    TOO_OLD,
    ReceiveTracker,
    SendTracker,
    SentPacket,
)

AEAD_TAG: Final = 16
#: header and tag around every protected payload
_PROTECTED_OVERHEAD: Final = wire.HEADER_SIZE + AEAD_TAG
#: `_stall_since` when the peer owes us no acknowledgement
_NOT_STALLED: Final = -1.0
_INF: Final = float("inf")
#: `_events` and `_control` while nothing waits in them (most of a connection's life): one
#: shared immutable empty tuple instead of two empty lists per connection (112 bytes, two
#: objects for the collector); a list only while something is queued. Immutable, so an append
#: that skipped `_push_event`/`_queue_control` fails at once instead of reaching every
#: connection's queue.
_NOTHING_QUEUED: Final[tuple[Any, ...]] = ()
#: `stats.drops` until the first drop: shared, and read-only for the same reason
_NO_DROPS: Final[Mapping[str, int]] = MappingProxyType({})


def _same_address(a: Address, b: Address) -> bool:
    """Whether two socket addresses are one path, per packet: port and host text compared as
    native int and str (a generic tuple comparison costs ~170 more instructions a packet:
    callgrind, docs/ARCHITECTURE.md), then an IPv6 tuple's scope id (the zone; the flow label
    is not the path's)."""
    a_port: int = a[1]
    b_port: int = b[1]
    if a_port != b_port:
        return False
    a_host: str = a[0]
    b_host: str = b[0]
    if a_host != b_host:
        return False
    if len(a) == 2:
        return len(b) == 2
    return len(b) == 4 and a[3] == b[3]


class ConnectionState(enum.Enum):
    SYN_SENT = "SYN_SENT"
    AWAIT_ACCEPT = "AWAIT_ACCEPT"
    AUTHENTICATING = "AUTHENTICATING"
    ESTABLISHED = "ESTABLISHED"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


# The states as module constants: mypyc keeps a Final in a C static, where `ConnectionState.X`
# is a dict lookup plus an attribute lookup on the enum class (about 50 ns, several per packet)
_SYN_SENT: Final = ConnectionState.SYN_SENT
_AWAIT_ACCEPT: Final = ConnectionState.AWAIT_ACCEPT
_AUTHENTICATING: Final = ConnectionState.AUTHENTICATING
_ESTABLISHED: Final = ConnectionState.ESTABLISHED
_CLOSING: Final = ConnectionState.CLOSING
_CLOSED: Final = ConnectionState.CLOSED


@dataclass(slots=True)
class ConnectionStats:
    """Counters of one connection, readable at any time."""

    packets_sent: int = 0
    packets_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    fast_retransmits: int = 0
    timeout_retransmits: int = 0
    packets_lost: int = 0
    fec_recovered: int = 0
    #: parity packets sent: how much FEC's adaptive policy spent (PROTOCOL.md 9)
    fec_parity_sent: int = 0
    #: the datagram size in use on the current path (PLPMTU), and path MTU probes sent and
    #: lost (lost probes are in neither packets_lost nor the retransmission counters), and
    #: black holes met (the path stopped carrying the size in use: back to 1200 bytes)
    plpmtu: int = wire.BASE_DATAGRAM
    pmtu_probes_sent: int = 0
    pmtu_probes_lost: int = 0
    pmtu_black_holes: int = 0
    srtt: float | None = None
    min_rtt: float | None = None
    cwnd: int = 0
    pacing_rate: float = 0.0
    bbr_state: str = ""
    #: reason -> datagrams dropped (read-only; its own dict from the connection's first drop)
    drops: Mapping[str, int] = field(default_factory=lambda: _NO_DROPS)

    @property
    def retransmissions(self) -> int:
        return self.fast_retransmits + self.timeout_retransmits


class Connection:
    """One end of a Quantum connection. Build with `Connection.client` or via `Listener`."""

    __slots__ = (
        "_acks",
        "_carry",
        "_carry_wanted",
        "_cc",
        "_close_at_pn",
        "_close_deadline",
        "_continue",
        "_control",
        "_data_room",
        "_events",
        "_fec",
        "_fin_pn",
        "_flight",
        "_hold_messages",
        "_inbox",
        "_keepalives",
        "_largest_pn",
        "_last_received",
        "_migration",
        "_now",
        "_open",
        "_opening",
        "_outbox",
        "_peer",
        "_peer_marks",
        "_pending_out",
        "_pmtu",
        "_previous_keys",
        "_refused_size",
        "_seal",
        "_send_blocked",
        "_session_unconfirmed",
        "_stall_since",
        "_unacked_data",
        "_update_at_pn",
        "close_code",
        "close_reason",
        "config",
        "connection_id",
        "is_client",
        "params",
        "session_id",
        "session_token",
        "state",
        "stats",
    )

    def __init__(
        self,
        *,
        is_client: bool,
        connection_id: bytes,
        peer_addr: Address,
        configuration: QuantumConfiguration,
        now: float,
    ) -> None:
        if len(connection_id) != 16:
            raise ValueError("connection_id must be 16 bytes")
        if not now >= 0.0:  # NaN too
            raise ValueError(f"now must be a monotonic time of 0 or more seconds, got {now!r}")
        self.is_client = is_client
        self.connection_id = connection_id
        # the address as a Python tuple: datagrams_to_send pairs it with every datagram as it
        # is, where a typed `tuple[str, int]` field (stored unboxed) is boxed anew each time
        self._peer: Any = peer_addr
        self.config = configuration
        self.state = _SYN_SENT if is_client else _AUTHENTICATING
        self.stats = ConnectionStats()
        # client side only: what the client presented and the session the server gave it
        # (a server connection hands these to its owner in events and keeps none of them)
        self.session_id: bytes | None = None
        self.session_token: str | None = None
        self.params: ServerParams | None = None
        # the code as a number, known to this version or not (a newer peer's): the same in
        # both builds (mypyc stores an int attribute unboxed, so a CloseCode member would come
        # back a plain int there); CloseCode(close_code) names a known one
        self.close_code: int = int(CloseCode.NORMAL)
        self.close_reason = ""

        self._events: list[Event] | tuple[Event, ...] = _NOTHING_QUEUED  # see _push_event
        # packet protection, one per direction, once the handshake produced keys (the two
        # objects of the handshake's SessionKeys, held directly: one object less per connection)
        self._seal: PacketProtection | None = None
        self._open: PacketProtection | None = None
        # the client's handshake while it runs (None on a server connection, and once done)
        self._opening: ClientOpening | None = None
        # the graceful close before the key's packet limit starts here (see _keys_running_out)
        self._close_at_pn = configuration.packets_per_key - KEY_LIMIT_HEADROOM
        # the send side's key update: the packet number from which the next packet is sealed
        # with the next key generation (once the current one is acknowledged)
        interval = configuration.key_update_interval
        self._update_at_pn = (1 << 64) if interval is None else interval + 1
        # the receive side's previous generation, while reordered packets may still need it
        self._previous_keys: PreviousKeys | None = None

        # packets: what we sent and await acks for (loss detection, RTO), and what we received
        # (the replay window, and the acks we owe)
        self._flight = SendTracker(window=configuration.window)
        self._acks = ReceiveTracker(
            window=configuration.window, max_ack_delay=configuration.max_ack_delay
        )
        self._cc = BBR()
        # messages: queued and cut into fragments, and reassembled and ordered (channels.py);
        # created on first use: a keepalive-only connection never needs them
        self._outbox: ChannelSender | None = None
        self._inbox: ChannelReceiver | None = None
        # control frames waiting for the next packet (see _queue_control)
        self._control: list[Frame] | tuple[Frame, ...] = _NOTHING_QUEUED
        self._fec: FecState | None = None  # while FEC is negotiated on
        # the datagram size on the peer's path and the search for a larger one (pmtu.py);
        # _data_room is what it leaves for frames in a data packet (pmtu.max_data_payload)
        self._pmtu = PathMtu(max_datagram_for_address(peer_addr), now)
        self._data_room = 0
        self._resized()

        self._last_received = now
        # the keepalives we send (None until the first: a server connection sends none)
        self._keepalives: KeepaliveClock | None = None
        self._fin_pn: int | None = None
        self._close_deadline: float | None = None
        # a candidate address being validated (exists only while a migration is checked)
        self._migration: PathValidation | None = None
        self._largest_pn = 0
        self._now = now  # the latest time any entry point was given (for pacing deadlines)
        self._pending_out: list[bytes] | None = None  # sealed datagrams not yet collected
        # since when the peer has acknowledged nothing while owing us an acknowledgement
        self._stall_since = _NOT_STALLED
        self._send_blocked = False  # a send was refused: SendBufferDrained is owed
        self._refused_size = 0  # the largest message refused since the last drain
        # reliable message bytes sent and not yet acknowledged (nor declared lost: those are
        # queued again); with the sender's pending bytes, what the send buffer holds
        self._unacked_data = 0
        # carry-over across resumes (PROTOCOL.md 12.4, quantum/carryover.py): whether this
        # connection's streams may continue on the one that resumes its session; the client's
        # carry-over from the connection it resumes, until SESSION says whether it continues;
        # the server's: how far the client delivered (its credentials), whether messages wait
        # for the SESSION frame's acknowledgement, and whether that came
        self._carry_wanted = False
        self._continue = False  # server: the client asked to continue its streams here
        self._carry: Carryover | None = None
        self._peer_marks: tuple[tuple[int, int, int], ...] = ()
        self._hold_messages = False
        self._session_unconfirmed = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def client(
        cls,
        server_addr: Address,
        credentials: Credentials,
        now: float,
        *,
        configuration: QuantumConfiguration | None = None,
        server_key: bytes | str | None = None,
        connection_id: bytes | None = None,
        ephemeral_private: bytes | None = None,
        carry: bool = False,
        carryover: Carryover | None = None,
    ) -> Connection:
        """A client connection; its SYN is ready in `datagrams_to_send` at once.

        `carry=True` asks the server to keep what this connection owes should it be lost,
        and `carryover` (with a resume in the credentials: what the connection it resumes
        left, `carryover()`) continues those streams here (PROTOCOL.md 12.4); until the
        server's SESSION frame says whether they continue, `send` refuses."""
        config = configuration or QuantumConfiguration()
        # FEC is asked for only if both the credentials and the configuration want it (with
        # the configuration's (k, m)); the server may still say no
        fec = config.fec if credentials.fec is not None else None
        carrying = carry or carryover is not None
        continuing = carryover is not None and credentials.resume is not None
        delivered = None if not continuing or carryover is None else tuple(
            carryover.delivered_marks()[:MAX_CREDENTIAL_MARKS])
        credentials = dataclasses.replace(credentials, fec=fec, delivered=delivered,
                                          carry=carrying)
        cid = connection_id if connection_id is not None else os.urandom(16)
        conn = cls(is_client=True, connection_id=cid, peer_addr=server_addr,
                   configuration=config, now=now)
        conn._carry_wanted = carrying
        if continuing:
            conn._carry = carryover
        opening = conn._opening = ClientOpening(cid, credentials, config, now,
                                                server_key=server_key,
                                                ephemeral_private=ephemeral_private)
        conn._count_sent(opening.hello(now))
        return conn

    @property
    def credentials(self) -> Credentials | None:
        """Client: what it presents, while the handshake runs (None after: the ticket is a
        secret it no longer needs)."""
        opening = self._opening
        return None if opening is None else opening.credentials

    @property
    def handshake_reject(self) -> tuple[int, str] | None:
        """Client, during the handshake: the last plaintext (unauthenticated) REJECT as
        (code, reason), remembered should the handshake then time out."""
        opening = self._opening
        return None if opening is None else opening.reject

    @classmethod
    def server(
        cls,
        connection_id: bytes,
        peer_addr: Address,
        keys: SessionKeys,
        credentials: Credentials | None,
        params: ServerParams,
        now: float,
        *,
        configuration: QuantumConfiguration | None = None,
    ) -> Connection:
        """The server side of a connection whose handshake the listener has verified.
        `credentials` None: they were refused already, and the listener only rejects it."""
        conn = cls(is_client=False, connection_id=connection_id, peer_addr=peer_addr,
                   configuration=configuration or QuantumConfiguration(), now=now)
        conn._set_keys(keys)
        # the credentials and (in `accept`) the session token only pass through the server
        # side: handed to the owner in events, not kept for the connection's lifetime
        conn._apply_params(params)
        if credentials is not None:
            conn._carry_wanted = credentials.carry
            conn._continue = credentials.delivered is not None
            conn._peer_marks = credentials.delivered or ()
            conn._push_event(
                AuthenticationRequested(
                    user_id=credentials.user_id,
                    ticket=credentials.ticket,
                    resume=credentials.resume,
                    resume_fallback=credentials.resume_fallback,
                    metadata=dict(credentials.metadata),
                    delivered=credentials.delivered,
                )
            )
        return conn

    def _apply_params(self, params: ServerParams) -> None:
        self.params = params
        if self.is_client:
            # the server's keepalive interval and idle timeout bound ours (5.2.6): a client
            # keeping alive less often than the server expects would see its session go IDLE.
            # One copy of the configuration per client connection; the server keeps its own.
            cfg = self.config
            keepalive = cfg.keepalive_interval
            if keepalive is not None:
                keepalive = min(keepalive, params.keepalive_interval)
            idle = min(cfg.idle_timeout, params.idle_timeout)
            if keepalive != cfg.keepalive_interval or idle != cfg.idle_timeout:
                self.config = dataclasses.replace(cfg, keepalive_interval=keepalive,
                                                  idle_timeout=idle)
        if params.fec is not None:
            self._fec = FecState(*params.fec, target=self.config.fec_target_loss)
            self._resized()

    def _resized(self) -> None:
        """The datagram size (or FEC's k) changed: so does the room for frames in a packet."""
        fec = self._fec
        room = max_data_payload(self._pmtu.size, 0 if fec is None else fec.k)
        self._data_room = room
        sender = self._outbox
        if sender is not None:
            sender.packet_room = room

    # ------------------------------------------------------------------ application calls

    def accept(self, session_id: bytes, session_token: str, remaining: float,
               resumed: bool = False, carryover: Carryover | None = None) -> None:
        """Server: the credentials are good; hand the client its session and go ESTABLISHED.

        `carryover`: what the connection this one resumes left (`carryover()`); used only if
        the client asked to continue its streams (`continues`, PROTOCOL.md 12.4). Raises
        `CarryoverError` (nothing changed) if it cannot be restored."""
        if self.state is not _AUTHENTICATING:
            raise ConnectionClosedError(f"cannot accept a connection in state {self.state.value}")
        carried = resumed and self._continue and carryover is not None
        if carried:
            assert carryover is not None
            self._restore_carryover(carryover, self._peer_marks)
        session = SessionFrame(session_id, session_token, remaining_ms(remaining), resumed,
                               carried)
        control = self._control  # SESSION goes first, before what the restore queued
        self._control = [session] if not isinstance(control, list) else [session, *control]
        # a resume rotated the token: the owner hears when the client holds the new one; and
        # the client learns from SESSION whether its streams continue, so no message may
        # reach it before (12.4): they wait for that frame's acknowledgement
        self._session_unconfirmed = resumed
        self._hold_messages = resumed and self._continue
        self.state = _ESTABLISHED
        self._push_event(HandshakeCompleted(session_id, session_token, remaining, resumed,
                                            carried))

    # -- carry-over across a resume (PROTOCOL.md 12.4)

    def carryover(self) -> Carryover | None:
        """What this connection still owes and how far it delivered, for the connection that
        resumes its session (None if the peer did not ask for carry-over). A client whose
        resume never got its SESSION frame hands on the carry-over it started with."""
        if not self._carry_wanted:
            return None
        if self._carry is not None:
            return self._carry
        sender = self._outbox
        next_ids, owed = ([], []) if sender is None else sender.export_state()
        in_flight = [f for p in self._flight.unacknowledged() for f in p.frames
                     if type(f) is MessageFrame and f.mode <= Delivery.RELIABLE_UNORDERED]
        return capture(next_ids, in_flight + owed, self._inbox)

    @property
    def continues(self) -> bool:
        """Server: the client asked to continue its lost connection's streams here."""
        return self._continue

    @property
    def carries(self) -> bool:
        """Whether this connection's streams may continue on the one that resumes its
        session (the client asked for carry-over, PROTOCOL.md 12.4)."""
        return self._carry_wanted

    def hand_over(self, reason: str, now: float) -> Carryover | None:
        """Server: the session was resumed on another connection. Returns this one's
        carry-over and ends it at once (an RST with SESSION_ENDED): nothing more is sent or
        delivered here, so what the carry-over holds is delivered once, there."""
        carryover = self.carryover()
        self._abort(CloseCode.SESSION_ENDED, reason, now)
        return carryover

    def _restore_carryover(self, carryover: Carryover,
                           peer_marks: tuple[tuple[int, int, int], ...]) -> None:
        """Continue the streams of `carryover` here, dropping what the peer says it has."""
        receiver = carryover.receiver(4 * MAX_MESSAGE_SIZE)  # may raise CarryoverError
        if self._inbox is not None or self._outbox is not None:
            raise CarryoverError("streams already began on this connection")
        sender = self._outbox = ChannelSender(packet_room=self._data_room)
        sender.restore_state(list(carryover.next_ids), list(carryover.owed))
        for channel, mode, mark in peer_marks:
            sender.trim_delivered(channel, mode, mark)
        self._unacked_data = 0
        self._inbox = receiver
        if not self.is_client:
            marks = receiver.delivered_marks()
            for start in range(0, len(marks), MAX_DELIVERED_MARKS):
                self._queue_control(
                    DeliveredFrame(tuple(marks[start:start + MAX_DELIVERED_MARKS])))

    def reject(self, code: int, reason: str, now: float) -> None:
        """Server: refuse the client; one sealed REJECT goes out and the connection is closed."""
        if self.state is not _AUTHENTICATING:
            raise ConnectionClosedError(f"cannot reject a connection in state {self.state.value}")
        if self._can_seal():
            self._send_protected([RejectFrame(code, cut_reason(reason))], now, flags=ACK | RST)
        self._terminate(code, reason, by_peer=False)

    def send(self, message: object, channel: object = 0,
             mode: object = Delivery.RELIABLE_ORDERED) -> int:
        """Queue one application message (bytes-like) on `channel` (0..255) with delivery
        `mode`; returns its id within its channel. Raises `MessageError` for anything that
        cannot be sent as asked (`ChannelSender.queue` says why the parameters are `object`).

        Backpressure: a reliable message that would take `send_buffered` past
        `max_send_buffer` raises `SendBufferFull` (a `MessageError`; nothing is queued, and a
        `SendBufferDrained` event follows once the peer has acknowledged half the buffer); an
        unreliable one is dropped, counted in `stats.drops["send_buffer_full"]`, and -1
        returned."""
        if self.state not in (_ESTABLISHED, _AWAIT_ACCEPT,
                              _AUTHENTICATING) and not self._closing_into_carryover():
            raise MessageError(f"cannot send on a connection in state {self.state.value}")
        if self._carry is not None:
            raise MessageError("cannot send before the resume says whether the lost "
                               "connection's streams continue (wait for HandshakeCompleted)")
        sender = self._outbox
        if sender is None:
            sender = self._outbox = ChannelSender(packet_room=self._data_room)
        room = self.config.max_send_buffer - sender.pending_bytes - self._unacked_data
        try:
            message_id = sender.queue(message, channel, mode, room=room)
        except SendBufferFull as exc:
            self._send_blocked = True
            if exc.size > self._refused_size:
                self._refused_size = exc.size
            raise SendBufferFull(exc.size, self.send_buffered,
                                 self.config.max_send_buffer) from None
        if message_id < 0:  # an unreliable message the full buffer had no room for
            self._drop("send_buffer_full")
            return message_id
        self.stats.messages_sent += 1
        return message_id

    def drain_wanted(self) -> bool:
        """Whether the owner must wait before sending more: the buffer is above half its
        limit, or the largest message refused since the last drain does not fit yet. If so,
        a `SendBufferDrained` event will say when neither holds (what `drain()` waits for),
        so `try: send() except SendBufferFull: await drain()` always makes progress."""
        if self._drained_enough():
            return False
        self._send_blocked = True
        return True

    def _drained_enough(self) -> bool:
        limit = self.config.max_send_buffer
        need = limit >> 1
        if self._refused_size > need:
            need = self._refused_size
        return limit - self.send_buffered >= need

    @property
    def send_buffered(self) -> int:
        """Bytes queued or sent and not yet acknowledged; `send` refuses reliable messages
        that would take it past `QuantumConfiguration.max_send_buffer`."""
        sender = self._outbox
        return (0 if sender is None else sender.pending_bytes) + self._unacked_data

    def send_keepalive(self) -> int:
        """Queue a keepalive now; the answer arrives as `KeepaliveAcknowledged`."""
        if self.state is not _ESTABLISHED:
            raise ConnectionClosedError(f"no keepalive in state {self.state.value}")
        return self._queue_keepalive(None)

    def acknowledge_keepalive(self, keepalive_id: int, remaining: float | None) -> None:
        """Server: answer a `KeepaliveReceived` with the session's remaining seconds."""
        if self.state is _CLOSED:
            return
        self._queue_control(KeepaliveAckFrame(keepalive_id, remaining_ms(remaining)))

    @property
    def peer_addr(self) -> Address:
        """Where the peer's packets come from and ours go (it follows a validated migration)."""
        addr: Address = self._peer
        return addr

    @property
    def last_received_at(self) -> float:
        """When the last packet from the peer was accepted (the connection's idle clock)."""
        return self._last_received

    @property
    def hibernating(self) -> bool:
        """Whether both cipher objects are released (see `hibernate`)."""
        seal, open_ = self._seal, self._open
        return (seal is not None and open_ is not None
                and not seal.loaded and not open_.loaded)

    def hibernate(self) -> bool:
        """Release what a quiet connection can rebuild on demand: the two packet-protection
        cipher objects (about 4.8 KB of OpenSSL state with AES-GCM), and the loss detector's
        SACK memory once nothing is in flight (`SendTracker.release_idle`). Safe at any
        time; the next packet sealed or opened rebuilds its cipher (about 0.7 us each). The
        owner decides when a connection is quiet (the server: no packet for `hibernate_after`
        seconds). Returns whether any cipher was released."""
        self._flight.release_idle()
        seal, open_ = self._seal, self._open
        if seal is None or open_ is None or not (seal.loaded or open_.loaded):
            return False
        seal.release()
        open_.release()
        previous = self._previous_keys
        if previous is not None:
            previous.protection.release()
        return True

    def close(self, reason: str = "", code: int = CloseCode.NORMAL) -> None:
        """Graceful close: pending data is flushed first, then a FIN goes out."""
        if self.state in (_CLOSING, _CLOSED):
            return
        self.close_code, self.close_reason = int(CloseCode(code)), cut_reason(reason)
        if self._seal is None or self.state is _AUTHENTICATING:
            self._terminate(code, reason, by_peer=False)
            return
        self.state = _CLOSING

    # ------------------------------------------------------------------ sans-I/O surface

    def next_event(self) -> Event | None:
        """The oldest event not yet handed out, or None. Pull until None after every input
        (a datagram, a timer, a `send`, `close`...); `ConnectionClosed` is always the last."""
        events = self._events
        if not isinstance(events, list):
            return None
        if len(events) == 1:
            # the last one: back to the shared empty tuple instead of popping (a list popped
            # empty keeps a zero-byte buffer from the C allocator, and growing it again is a
            # libc realloc, twice per packet); the next event gets a fresh list
            self._events = _NOTHING_QUEUED
            return events[0]
        return events.pop(0)

    def _push_event(self, event: Event) -> None:
        """Queue an event for `next_event`. `_events` is a list only while it holds some."""
        events = self._events
        if isinstance(events, list):
            events.append(event)
        else:
            self._events = [event]

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Process one datagram that arrived from `addr` at `now`; then pull what it caused
        with `next_event` and `datagrams_to_send`.

        Nothing unauthenticated changes the connection: a datagram that is malformed, for
        another connection, a replay, or fails authentication is dropped and counted in
        `stats.drops`. An authenticated one that breaks a frame rule ends the connection
        with PROTOCOL_VIOLATION (an RST tells the peer why)."""
        if self.state is _CLOSED:
            return
        self._now = now
        try:
            version, flags, cid, seq, ack, payload_len = decode_header(data)
        except PacketError:
            self._drop("malformed")
            return
        if cid != self.connection_id:
            self._drop("wrong_connection")
            return
        open_ = self._open
        if open_ is None or (flags & SYN and self.is_client):
            self._receive_handshake_packet(data, version, flags, addr, now)
            return
        received = self._acks
        pn = received.expand(seq)
        verdict = received.check(pn)
        if verdict:
            self._drop(_VERDICT_NAMES[verdict])
            return
        header = data[: wire.HEADER_SIZE]
        try:
            if flags & KEY_PHASE == open_.phase_flag:
                body = open_.open(pn, header, data[wire.HEADER_SIZE:])
            else:
                body = self._open_other_phase(pn, header, data[wire.HEADER_SIZE:], now)
        except ProtectionError:
            self._drop("auth_failed")
            return
        # authenticated, so it really came from the peer: whatever breaks a rule from here on
        # (frames, channels, FEC raise ProtocolError) is a protocol violation, caught once
        try:
            self._on_authenticated(pn, flags, ack, body, payload_len, len(data), addr, now)
        except ProtocolError as exc:  # one clause: mypyc gives a name one type per function
            reason = f"malformed frames: {exc}" if isinstance(exc, PacketError) else str(exc)
            self._protocol_violation(reason, now)

    def _open_other_phase(self, pn: int, header: bytes, ciphertext: bytes, now: float) -> bytes:
        """A packet of the previous or the next key generation (the peer's key update)."""
        current = self._open
        assert current is not None
        following, body = open_other_phase(current, self._previous_keys, pn, header, ciphertext,
                                           now)
        if following is not None:  # the peer moved on: so do we, keeping the old keys a while
            self._open = following
            self._previous_keys = PreviousKeys(current, now + 3 * self._flight.rtt.base_rto)
        return body

    def _update_send_keys(self, pn: int) -> PacketProtection:
        """`pn` reached the key update point: seal from it on with the next generation, if
        the peer acknowledged a packet of the current one (so it holds the current keys and
        can derive the next); else ask again at the next packet."""
        seal = self._seal
        assert seal is not None
        interval = self.config.key_update_interval
        # without key updates _update_at_pn is 2**64 (__init__), a pn no connection reaches
        assert interval is not None
        if self._flight.largest_acked < seal.first_pn:
            self._update_at_pn = pn + 1
            return seal
        following = self._seal = seal.next()
        self._update_at_pn = pn + interval
        self._close_at_pn = pn + self.config.packets_per_key - KEY_LIMIT_HEADROOM
        return following

    @property
    def cipher(self) -> str | None:
        """The AEAD cipher the handshake chose, once there are keys."""
        seal = self._seal
        return None if seal is None else seal.algorithm

    @property
    def key_generations(self) -> tuple[int, int]:
        """(send, receive) key generations: how many key updates each direction made."""
        seal, open_ = self._seal, self._open
        return (0 if seal is None else seal.generation, 0 if open_ is None else open_.generation)

    def _on_authenticated(self, pn: int, flags: int, ack: int, body: bytes, payload_len: int,
                          size: int, addr: Address, now: float) -> None:
        sack, payload = split_body(body, payload_len)
        frames = decode_frames(payload)
        received = self._acks
        received.on_received(pn, elicits_ack(frames), now)
        stats = self.stats
        stats.packets_received += 1
        stats.bytes_received += size
        self._last_received = now
        if not _same_address(addr, self._peer):
            self._on_other_path(addr, pn, size, now)
        if pn > self._largest_pn:
            self._largest_pn = pn
        if self.state is _AWAIT_ACCEPT:
            opening = self._opening
            if opening is not None:
                opening.proven()  # any protected packet proves our finishing ACK arrived
        if flags & ACK:
            self._on_ack(ack, sack, now)
            if self.state is _CLOSED:  # it acknowledged our FIN: the rest comes after the end
                return
        fec = self._fec
        if flags & PSH and fec is not None:
            for rpn, rpayload in fec.on_data(pn, payload):
                self._on_recovered(rpn, rpayload, now)
        self._process_frames(frames, flags, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Every datagram to send now, each with its destination (the peer's validated
        address; a path probe goes to the address being validated). Builds as many packets
        as the windows and pacing allow; call after every input, then `get_timer`."""
        addr: Any = self._peer
        opening = self._opening
        handshake_out = None if opening is None else opening.take_out()
        out = [] if handshake_out is None else [(d, addr) for d in handshake_out]
        self._now = now
        if self._seal is not None and self.state is not _CLOSED:
            self._fill(now)
        pending_out = self._pending_out
        if pending_out:
            for d in pending_out:
                out.append((d, addr))
            self._pending_out = None
        migration = self._migration
        if migration is not None and migration.out:
            probe_addr: Any = migration.addr
            for d in migration.out:
                out.append((d, probe_addr))
            migration.out = None
        return out

    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called (same clock as `now`), or None once
        closed. The earliest of: idle timeout, handshake resend or deadline, keepalive, the
        ack owed, retransmission, stall, path probe, pacing. Never a moment the connection
        would not act on: at that time `handle_timer` (and the `datagrams_to_send` after it)
        makes progress or the timer moves later (tests/test_migration.py checks this)."""
        state = self.state
        if state is _CLOSED:
            return None
        at = self._last_received + self.config.idle_timeout
        if state is not _ESTABLISHED:
            opening = self._opening
            if opening is not None:  # SYN_SENT or AWAIT_ACCEPT
                opening_at = opening.timer()
                if opening_at < at:
                    at = opening_at
            if self._close_deadline is not None:
                at = min(at, self._close_deadline)
        elif self.config.keepalive_interval:
            keepalives = self._keepalives
            if keepalives is not None:
                at = min(at, keepalives.last_sent + self.config.keepalive_interval)
        sent = self._flight
        t = self._acks.ack_deadline()
        if t is not None and t < at and sent.can_send():  # else no pure ACK may leave (6.4)
            at = t
        t = sent.loss_deadline()
        if t is not None and t < at:
            at = t
        stall = self._stall_since
        if stall >= 0.0 and self._last_received > stall:
            # only a peer that still talks while owing us acks is stalling; a silent one is
            # the idle timeout's
            t = stall + self.config.stall_timeout
            if t < at:
                at = t
        migration = self._migration
        if migration is not None and migration.deadline < at:
            at = migration.deadline
        pmtu = self._pmtu
        if pmtu.probe_pn >= 0:
            if pmtu.probe_deadline < at:
                at = pmtu.probe_deadline
        elif self._may_probe():
            # a probe is due at the next search (or now, in a search), and goes out then if
            # `_send_wait` lets it (its gate in `_fill`): never a moment it would not
            t = pmtu.timer()
            now = self._now
            if t < now:
                t = now
            if t < at:
                wait = self._send_wait(now)
                if wait < at:
                    at = wait if wait > t else t
        if self._has_data():
            # what `_fill` waits for (`_send_wait` is its gate too): 0.0 means it can send at
            # once, which the owner's next datagrams_to_send does
            t = self._send_wait(self._now)
            if t < at:
                at = t if t > 0.0 else self._now
        return at

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that has come by `now` (called at, or after, `get_timer`);
        then pull events and `datagrams_to_send` as after any input."""
        if self.state is _CLOSED:
            return
        self._now = now
        if now >= self._last_received + self.config.idle_timeout:
            self._terminate(CloseCode.IDLE_TIMEOUT, "idle timeout", by_peer=False)
            return
        opening = self._opening
        if opening is not None:  # SYN_SENT or AWAIT_ACCEPT
            timed_out, resent = opening.on_timer(now)
            if timed_out:
                bad_key = opening.bad_server_key
                if bad_key is None:
                    self._terminate(CloseCode.HANDSHAKE_TIMEOUT, "handshake timeout",
                                    by_peer=False)
                else:  # only a wrong server answered: report it as such (10.2)
                    self._push_event(HandshakeRejected(CloseCode.BAD_SERVER_KEY, bad_key))
                    self._terminate(CloseCode.BAD_SERVER_KEY, bad_key, by_peer=False)
                return
            self._count_sent(resent)
        if self._close_deadline is not None and now >= self._close_deadline:
            self._terminate(self.close_code, self.close_reason, by_peer=False)
            return
        stall = self._stall_since
        if (stall >= 0.0 and self._last_received > stall
                and now >= stall + self.config.stall_timeout):
            self._abort(CloseCode.STALLED,
                        f"peer acknowledged nothing for {self.config.stall_timeout:g} s", now)
            return
        pmtu = self._pmtu
        if pmtu.probe_pn >= 0 and now >= pmtu.probe_deadline:
            # the probe is lost (unless the tracker said so first): it leaves the flight
            # without a word to congestion control or the retransmission timer
            self._flight.forget(pmtu.probe_pn)
            pmtu.on_probe_timeout(now)
            if not self._flight.bytes_in_flight:
                self._stall_since = _NOT_STALLED  # the peer owes us nothing now
        loss_at = self._flight.loss_deadline()
        if loss_at is not None and now >= loss_at:
            lost = self._flight.on_loss_timer(now)
            self.stats.timeout_retransmits += self._requeue_lost(lost, now)
        migration = self._migration
        if migration is not None and now >= migration.deadline:
            self._on_migration_timer(now)
        keepalives = self._keepalives
        if (self.state is _ESTABLISHED and self.config.keepalive_interval
                and keepalives is not None
                and now >= keepalives.last_sent + self.config.keepalive_interval):
            self._queue_keepalive(now)

    # ------------------------------------------------------------------ handshake

    def _count_sent(self, size: int) -> None:
        """A plaintext handshake datagram of `size` bytes went out (0: none)."""
        if size:
            self.stats.packets_sent += 1
            self.stats.bytes_sent += size

    def _set_keys(self, keys: SessionKeys | None) -> None:
        if keys is not None:
            self._seal, self._open = keys.send, keys.recv

    def _receive_handshake_packet(self, data: bytes, version: int, flags: int, addr: Address,
                                  now: float) -> None:
        """A plaintext handshake packet: the client's opening is the only taker."""
        opening = self._opening
        if opening is None or addr != self.peer_addr:
            self._drop("unexpected_handshake")
            return
        if version != wire.VERSION:  # unauthenticated: not an answer to our SYN (2.3, 10.2)
            self._drop("wrong_version")
            return
        try:
            packet = wire.decode_packet(data)
        except PacketError:
            self._drop("malformed")
            return
        self._last_received = now
        try:
            if flags & RST and self.state is _SYN_SENT:
                reject = opening.on_reject(packet.payload)
                if reject is None:  # unauthenticated, and SYNs are left to send
                    self._drop("unauthenticated_reject")
                else:
                    self._push_event(HandshakeRejected(reject.code, reject.reason))
                    self._terminate(reject.code, reject.reason, by_peer=True)
            elif flags & SYN and flags & URG and self.state is _SYN_SENT:
                self._count_sent(opening.on_retry(packet.payload, now))
            elif flags & SYN and flags & ACK and self.state is _SYN_SENT:
                params, keys, rtt = opening.on_server_hello(packet.payload, now)
                self._count_sent(len(opening.last))
                self._set_keys(keys)
                if rtt is not None:
                    self._flight.rtt.update(rtt)
                    self._cc.on_handshake_rtt(rtt)
                self._apply_params(params)
                self.state = _AWAIT_ACCEPT
            else:
                self._drop("unexpected_handshake")
        except HandshakeError as exc:
            # unauthenticated, so it cannot end the handshake (10.2): a malformed reply is
            # dropped; a wrong key or a failed confirmation is remembered for the timeout
            if exc.code == CloseCode.BAD_SERVER_KEY:
                opening.bad_server_key = exc.message
                self._drop("bad_server_key")
            else:
                self._drop("malformed_handshake")
        except PacketError:
            self._drop("malformed")

    # ------------------------------------------------------------------ receiving

    def _process_frames(self, frames: Sequence[Frame], flags: int, now: float) -> None:
        for frame in frames:
            if isinstance(frame, MessageFrame):
                if self.state is _CLOSED:
                    return
                if self.state is _AUTHENTICATING:  # from a peer not accepted yet (10.1)
                    self._drop("before_accept")
                    continue
                receiver = self._inbox
                if receiver is None:
                    receiver = self._inbox = ChannelReceiver()
                for channel, mode, data in receiver.on_frame(frame):  # may raise ProtocolError
                    self.stats.messages_received += 1
                    self._push_event(MessageReceived(data, channel, mode))
            elif isinstance(frame, KeepaliveFrame):
                if self.state is _AUTHENTICATING:
                    self._drop("before_accept")
                    continue
                self._push_event(KeepaliveReceived(frame.keepalive_id))
            elif isinstance(frame, KeepaliveAckFrame):
                keepalives = self._keepalives
                sent_at = None if keepalives is None else keepalives.answered(frame.keepalive_id)
                remaining = remaining_seconds(frame.remaining_ms)
                rtt = None if sent_at is None else now - sent_at
                self._push_event(KeepaliveAcknowledged(frame.keepalive_id, remaining, rtt))
            elif isinstance(frame, AckFloorFrame):
                self._acks.on_floor(frame.floor)
            elif isinstance(frame, ParityFrame):
                self._on_parity(frame, now)
            elif isinstance(frame, PathChallengeFrame):
                self._queue_control(PathResponseFrame(frame.data))
            elif isinstance(frame, PathResponseFrame):
                migration = self._migration
                if migration is not None and migration.matches(frame.data):
                    # the peer receives at the new address: move there
                    old, self._peer = self._peer, migration.addr
                    self._migration = None
                    # a new path: its datagram size is found anew, from the base
                    self._pmtu = PathMtu(max_datagram_for_address(migration.addr), now)
                    self._resized()
                    # what went to the old path while we validated is likely lost and its
                    # timer backed off: retransmit on the new path without waiting for it
                    self._flight.rtt.reset_backoff()
                    self._push_event(PathMigrated(old, migration.addr))
            elif isinstance(frame, SessionFrame):
                if self.is_client and self.state is _AWAIT_ACCEPT:
                    self.session_id, self.session_token = frame.session_id, frame.token
                    self.state = _ESTABLISHED
                    self._forget_handshake()
                    if self.config.keepalive_interval:  # the interval runs from here
                        self._keepalives = KeepaliveClock(now)
                    # never NO_SESSION_MS: the frame decoder refuses it in a SESSION frame
                    self._push_event(HandshakeCompleted(frame.session_id, frame.token,
                                                        frame.remaining_ms / 1000,
                                                        frame.resumed, frame.carried))
                    if not self._on_session_carry(frame, now):
                        return
            elif isinstance(frame, DeliveredFrame):
                sender = self._outbox
                if sender is not None:
                    for stream_channel, stream_mode, mark in frame.marks:
                        sender.trim_delivered(stream_channel, stream_mode, mark)
            elif isinstance(frame, RejectFrame):
                if self.is_client and self.state is _AWAIT_ACCEPT:
                    self._push_event(HandshakeRejected(frame.code, frame.reason))
                    self._terminate(frame.code, frame.reason, by_peer=True)
                    return
            elif isinstance(frame, CloseFrame):
                # FIN: graceful close by the peer; RST: abortive. Either way we are done, but a
                # FIN is acknowledged first so that the peer stops retransmitting it.
                if flags & FIN:
                    self._send_ack_only(now)
                self._terminate(frame.code, frame.reason, by_peer=True)
                return

    def _on_session_carry(self, frame: SessionFrame, now: float) -> bool:
        """Client, at SESSION: continue the lost connection's streams if the server carried
        them, else report what was lost. False if the connection ended (a bad carry-over)."""
        carryover, self._carry = self._carry, None
        if frame.carried:
            if carryover is None:
                self._protocol_violation("SESSION says carried, but none was asked for", now)
                return False
            try:
                self._restore_carryover(carryover, ())
            except CarryoverError as exc:
                self._protocol_violation(str(exc), now)
                return False
        elif carryover is not None and (carryover.owed or carryover.inbound):
            reason = ("the server kept nothing of the lost connection" if frame.resumed
                      else "the session could not be resumed: a new one began")
            self._push_event(CarryoverLost(carryover.unacknowledged_messages, reason))
        return True

    def _on_recovered(self, pn: int, payload: bytes, now: float) -> None:
        if self._acks.check(pn):
            return
        try:
            frames = decode_frames(payload)
        except PacketError:
            self._drop("malformed")
            return
        self._acks.on_received(pn, True, now)
        self.stats.fec_recovered += 1
        self._process_frames(frames, 0, now)

    def _on_parity(self, frame: ParityFrame, now: float) -> None:
        fec = self._fec
        if fec is None:
            return
        seqs = tuple(self._acks.expand(s) for s in frame.data_seqs)
        shard = ParityShard(frame.group_id, frame.index, frame.m, seqs, frame.shard)
        for rpn, rpayload in fec.on_parity(shard):  # may raise FecError, a ProtocolError
            self._on_recovered(rpn, rpayload, now)

    def _on_ack(self, ack: int, sack: tuple[tuple[int, int], ...], now: float) -> None:
        sent = self._flight
        result = sent.on_ack(ack, sack, now)
        if result.acked:
            # progress: the stall clock restarts if more is owed, and stops if nothing is
            self._stall_since = now if sent.bytes_in_flight else _NOT_STALLED
            if self._unacked_data:
                for p in result.acked:
                    for f in p.frames:
                        if type(f) is MessageFrame:
                            self._unacked_data -= len(f.data)
            if self._send_blocked:
                self._check_drained()
            pmtu = self._pmtu
            if pmtu.probe_pn >= 0 or pmtu.large_losses:
                self._pmtu_acked(result.acked)
            acked = [(p.size, p.sent_time, p.rate) for p in result.acked if p.in_flight]
            self._cc.on_ack(now, acked, sent.bytes_in_flight, result.rtt_sample)  # type: ignore[arg-type]
            fec = self._fec
            if fec is not None:
                fec.on_fates(result.acked, False, sent.floor)
            if self._session_unconfirmed:
                self._session_acked(result.acked)
            fin_pn = self._fin_pn
            if fin_pn is not None and any(p.pn == fin_pn for p in result.acked):
                self._terminate(self.close_code, self.close_reason, by_peer=False)
                return
        if result.lost:
            self.stats.fast_retransmits += self._requeue_lost(result.lost, now)
        if sack and sent.peer_needs_floor(ack):
            self._queue_control(AckFloorFrame(sent.floor & 0xFFFFFFFF))

    def _session_acked(self, acked: list[SentPacket]) -> None:
        """Server: once the packet with the SESSION frame is acknowledged the client holds
        its token (the one a resume replaced may go) and knows whether its streams continue
        (held messages may go)."""
        for p in acked:
            for f in p.frames:
                if type(f) is SessionFrame:
                    self._session_unconfirmed = False
                    self._hold_messages = False
                    self._push_event(SessionConfirmed())
                    return

    def _pmtu_acked(self, acked: list[SentPacket]) -> None:
        """What path MTU discovery learns from acknowledged packets: a probe arrived (the
        path carries its size), or a large packet did (no black hole)."""
        pmtu = self._pmtu
        probe = pmtu.probe_pn
        largest = 0
        for p in acked:
            if p.pn == probe:
                pmtu.on_probe_acked()
                self._resized()
            if p.size > largest:
                largest = p.size
        pmtu.on_acked(largest)

    def _check_drained(self) -> None:
        """After a refused send: tell the owner once the buffer is down to half and the
        refused message fits."""
        if self._drained_enough():
            self._send_blocked = False
            self._refused_size = 0
            self._push_event(SendBufferDrained(self.config.max_send_buffer
                                               - self.send_buffered))

    def _requeue_lost(self, lost: list[SentPacket], now: float) -> int:
        """Lost packets (at least one): give reliable frames a new packet; returns how many
        packets that took."""
        pmtu = self._pmtu
        lost_bytes = 0
        count = 0
        black_hole = False
        for p in lost:
            frames = p.frames
            if frames and type(frames[0]) is PingFrame:
                # a path MTU probe: its loss says the size is too large, not that the path
                # is congested, and nothing in it is sent again
                if p.pn == pmtu.probe_pn:
                    pmtu.on_probe_timeout(now)
                continue
            count += 1
            if p.in_flight:
                lost_bytes += p.size
            if pmtu.on_lost(p.size, now):
                black_hole = True
        if black_hole:
            self._resized()  # back to 1200 bytes: what is retransmitted is cut again to fit
        self.stats.packets_lost += count
        fec = self._fec
        if fec is not None and count:
            # what FEC's parity policy measures (9): every loss but a probe's
            fec.on_fates([p for p in lost if not p.frames or type(p.frames[0]) is not PingFrame],
                         True, self._flight.floor)
        self._cc.on_loss(now, lost_bytes, self._flight.bytes_in_flight)
        retransmitted = 0
        for p in lost:
            frames = p.frames
            if not frames or type(frames[0]) is PingFrame:
                continue
            retransmitted += 1
            for frame in frames:
                if isinstance(frame, MessageFrame):
                    self._unacked_data -= len(frame.data)  # back in the sender's queue
                    if self._outbox is not None:
                        self._outbox.requeue(frame)
                elif isinstance(frame, CloseFrame):
                    self._fin_pn = None  # a new FIN goes out with the close frame
                else:
                    self._queue_control(cast(Frame, frame))
        return retransmitted

    def _on_other_path(self, addr: Address, pn: int, size: int, now: float) -> None:
        """An authenticated packet from an address that is not the validated path's.

        Its frames count as usual (they are the peer's), but where our packets go does not
        change until the address answers a challenge: it may be a NAT rebinding, or a copy of
        the peer's packet replayed from a spoofed source to make us flood that source."""
        migration = self._migration
        if migration is not None and migration.addr == addr:
            migration.received += size
            return
        if pn < self._largest_pn:
            return  # a reordered packet from a path the peer has left, not a migration
        # the newest packet comes from here: probe it (a probe of another address is dropped)
        self._migration = PathValidation(addr, os.urandom(PATH_DATA_SIZE), size)
        self._send_challenge(now)

    def _send_challenge(self, now: float) -> None:
        """One PATH_CHALLENGE to the candidate address, if its budget allows; either way the
        probe's clock starts, so a timer never names a deadline nothing will act on."""
        migration = self._migration
        assert migration is not None
        interval = self._flight.rtt.base_rto
        frames: list[Frame] = [PathChallengeFrame(migration.challenge)]
        payload = encode_frames(frames)
        size = wire.HEADER_SIZE + len(payload) + AEAD_TAG
        if (migration.allows(size) and self._seal is not None and self._flight.can_send()
                and self._can_seal()):
            # not tracked, not congestion controlled and without SACK blocks: the probe
            # belongs to another path, and its loss is the validation timer's business
            pn = self._flight.allocate_pn()
            seal = self._seal if pn < self._update_at_pn else self._update_send_keys(pn)
            ack32 = self._acks.cumulative & 0xFFFFFFFF
            header = build_header(ACK | seal.phase_flag, self.connection_id, pn & 0xFFFFFFFF,
                                  ack32, len(payload))
            datagram = header + seal.seal(pn, header, payload)
            self.stats.packets_sent += 1
            self.stats.bytes_sent += len(datagram)
            migration.queue(datagram)
        migration.on_probe(now, interval)

    def _on_migration_timer(self, now: float) -> None:
        migration = self._migration
        assert migration is not None
        if migration.exhausted:
            self._migration = None  # never validated: we stayed on the old path all along
            self._drop("path_validation_failed")
        else:
            self._send_challenge(now)

    # ------------------------------------------------------------------ sending

    def _sendable_outbox(self) -> ChannelSender | None:
        """The queued messages, unless the handshake is still waiting for acceptance: nothing
        but handshake packets goes out before the SESSION frame (10.1), so `send` in
        AWAIT_ACCEPT (or AUTHENTICATING) only queues, and the message leaves once
        established. Nor after our FIN: what a server shutting down queues then is carried
        over to the resume (`_closing_into_carryover`)."""
        state = self.state
        if (state is _AWAIT_ACCEPT or state is _AUTHENTICATING or self._hold_messages
                or self._fin_pn is not None):
            return None
        return self._outbox

    def _closing_into_carryover(self) -> bool:
        """Server: closing for a server shutdown, on a connection whose client asked for
        carry-over (12.4). Its session stays, and so do its streams: what the application
        sends meanwhile (answers to messages still arriving) is queued, goes out before the
        FIN if it can, and is otherwise carried over with the session to its resume, so a
        restart loses nothing. Any other closing connection refuses sends."""
        return (self.state is _CLOSING and not self.is_client and self._carry_wanted
                and self.close_code == CloseCode.SERVER_SHUTDOWN)

    def _has_data(self) -> bool:
        sender, fec = self._sendable_outbox(), self._fec
        return bool(self._control or (fec is not None and fec.parity)
                    or (sender is not None and sender.has_pending()) or self._fin_due())

    def _fin_due(self) -> bool:
        """FIN goes out once every reliable byte is acknowledged, so nothing is cut off."""
        sender = self._outbox
        return (self.state is _CLOSING and self._fin_pn is None
                and (sender is None or not sender.has_pending())
                and self._flight.bytes_in_flight == 0 and not self._control
                and (self._fec is None or not self._fec.parity))

    def _fill(self, now: float) -> None:
        """Build as many packets as the window, congestion control and pacing allow."""
        sent, cc, fec = self._flight, self._cc, self._fec
        close_at = self._close_at_pn
        pmtu = self._pmtu
        if (pmtu.probe_pn < 0 and pmtu.timer() <= now and self._may_probe()
                and sent.next_pn < close_at and self._send_wait(now) == 0.0):
            size = pmtu.probe_due(now)  # 0: the search just ended
            if size:
                self._send_protected([PingFrame()], now, flags=ACK, pad_to=size)
        while True:
            if sent.next_pn >= close_at and self._keys_running_out():
                return  # the key's limit: not one more packet
            if not self._has_data():
                if fec is not None and fec.sender_idle():
                    continue  # the open FEC group closed: its parity goes next
                cc.on_app_limited(sent.bytes_in_flight)
                break
            if self._send_wait(now) != 0.0:
                break
            shard = None if fec is None else fec.take_parity()
            if shard is not None:
                seqs = tuple(s & 0xFFFFFFFF for s in shard.data_seqs)
                parity = ParityFrame(shard.group_id, shard.m, shard.index, seqs, shard.shard)
                if _PROTECTED_OVERHEAD + parity.size <= pmtu.size:
                    self._send_protected([parity], now, flags=ACK | FEC)
                    self.stats.fec_parity_sent += 1
                else:
                    # cut for a larger datagram than the path now carries (a black hole
                    # came in the middle of the group): FEC is best effort, the group's data
                    # packets are retransmitted as usual if lost
                    self._drop("parity_skipped")
                continue
            if not self._build_data_packet(now):
                break
        ack_at = self._acks.ack_deadline()
        if ack_at is not None and ack_at <= now:
            self._send_ack_only(now)

    def _may_probe(self) -> bool:
        """Path MTU probes go out only once established, on a validated path (not while a
        migration is checked: the path may be about to change)."""
        return self.state is _ESTABLISHED and self._migration is None

    def _send_wait(self, now: float) -> float:
        """The one gate on sending data, shared by `_fill` and `get_timer`, so the timer can
        never name a moment at which `_fill` would still refuse: 0.0 if a packet may leave
        now; the pacer's release time if only pacing holds it back; infinity if the send or
        congestion window is full (an acknowledgement, not a timer, opens those)."""
        sent, cc = self._flight, self._cc
        in_flight = sent.bytes_in_flight
        if not sent.can_send() or not cc.can_send(in_flight):
            return _INF
        if in_flight >= cc.cwnd >> 1:
            # Pacing spreads a flight that fills the pipe. Below half the window (in PROBE_BW,
            # one estimated BDP) the path cannot be congested by us, and pacing app-limited
            # real-time traffic at BBR's 0.75 gain would only queue it.
            at = cc.next_send_time(now)
            if at > now:
                return at
        return 0.0

    def _build_data_packet(self, now: float) -> bool:
        frames: list[Frame] = []
        room = self._data_room
        control = self._control
        if isinstance(control, list):
            taken = 0
            for frame in control:
                size = frame.size
                if size > room:
                    break
                frames.append(frame)
                taken += 1
                room -= size
                if type(frame) is KeepaliveFrame:  # its RTT runs from when it really leaves
                    keepalives = self._keepalives
                    if keepalives is not None:
                        keepalives.left(frame.keepalive_id, now)
            if taken == len(control):
                self._control = _NOTHING_QUEUED  # not emptied in place: see next_event
            elif taken:
                del control[:taken]
        sender = self._sendable_outbox()
        flags = ACK
        if sender is not None:
            data = False
            while room > MESSAGE_OVERHEAD and sender.has_pending():
                fragment = sender.pop_frame(room)
                if fragment is None:
                    break
                frames.append(fragment)
                room -= fragment.size
                data = True
            fec = self._fec
            if data and fec is not None and fec.grouping():
                flags = ACK | PSH  # this packet joins the open FEC group (9)
        if not frames and self._fin_due():
            frames.append(CloseFrame(self.close_code, self.close_reason))
            flags |= FIN
        if not frames:
            return False
        pn = self._send_protected(frames, now, flags=flags)
        if flags & FIN:
            self._fin_pn = pn
            if self._close_deadline is None:
                self._close_deadline = now + self.config.close_timeout
        return True

    def _send_protected(self, frames: list[Frame], now: float, flags: int,
                        pad_to: int = 0) -> int:
        """Seal and queue one packet of `frames`, with as many SACK blocks as fit the
        datagram size in use; `pad_to`: a path MTU probe, padded to exactly that size."""
        seal = self._seal
        assert seal is not None
        sent = self._flight
        pn = sent.allocate_pn()
        if pn >= self._update_at_pn:
            seal = self._update_send_keys(pn)
        received = self._acks
        ack32, sack = received.ack_fields()
        payload = encode_frames(frames) if frames else b""
        limit = pad_to or self._pmtu.size
        if sack:
            # the most recent blocks that fit: a parity packet (12 + 4k bytes of FEC framing
            # around a full-size payload) may have no room for all eight, and SACK information
            # is repeated by every later packet, so a shortened list loses nothing
            room = (limit - _PROTECTED_OVERHEAD - len(payload)) >> 3
            if len(sack) > room:
                sack = sack[:room] if room > 0 else []
        if pad_to:
            payload += bytes(pad_to - _PROTECTED_OVERHEAD - wire.SACK_BLOCK_SIZE * len(sack)
                             - len(payload))
        header = build_header(flags | seal.phase_flag, self.connection_id, pn & 0xFFFFFFFF, ack32,
                              len(payload))
        body = encode_sack(sack) + payload if sack else payload
        datagram = header + seal.seal(pn, header, body)
        if not pad_to:
            # (a probe carries the acknowledgement fields too, but may well be too large for
            # the path: the acknowledgement it owes is still owed)
            received.on_ack_sent()
        size = len(datagram)
        if elicits_ack(frames):  # a pure ACK is neither tracked nor congestion controlled
            received.on_eliciting_sent(now)  # what holding an owed ACK follows (6.6)
            if self._stall_since < 0.0:
                self._stall_since = now  # the peer owes us an acknowledgement from now on
            retransmittable: list[object] = []
            if pad_to:
                # a probe keeps its PING as the mark that tells its loss from a data packet's
                # (it is never retransmitted: see _requeue_lost)
                retransmittable.append(frames[0])
                self._pmtu.on_probe_sent(pn, now, sent.rtt.rto)
            else:
                for f in frames:
                    if is_retransmittable(f):
                        retransmittable.append(f)
                        if type(f) is MessageFrame:
                            self._unacked_data += len(f.data)
            rate = self._cc.on_packet_sent(now, size, sent.bytes_in_flight)
            sent.on_packet_sent(SentPacket(pn, now, size, True, True, retransmittable, rate))
        stats = self.stats
        stats.packets_sent += 1
        stats.bytes_sent += size
        pending_out = self._pending_out
        if pending_out is None:
            self._pending_out = [datagram]
        else:
            pending_out.append(datagram)
        if flags & PSH:
            fec = self._fec
            assert fec is not None  # PSH is set only with FEC on
            fec.on_sent(pn, payload)
        return pn

    def _keys_running_out(self) -> bool:
        """Near the key's packet limit: close gracefully (the headroom drains the queue and
        carries the FIN); at the limit itself: stop without sealing another packet, and
        return True."""
        if not self._can_seal():
            self._terminate(CloseCode.KEYS_EXHAUSTED, "packet protection limit reached",
                            by_peer=False)
            return True
        self.close("packet protection limit reached: reconnect", CloseCode.KEYS_EXHAUSTED)
        return False

    def _send_ack_only(self, now: float) -> None:
        # a pure ACK takes a packet number too: not beyond the send window (6.4), whose
        # owed acks then ride the next packet sent once the floor moves
        if self._seal is None or not self._can_seal() or not self._flight.can_send():
            return
        self._send_protected([], now, flags=ACK)

    def _can_seal(self) -> bool:
        """Whether the current key generation may seal another packet (its packet limit)."""
        return self._flight.next_pn < self._close_at_pn + KEY_LIMIT_HEADROOM

    def _queue_keepalive(self, now: float | None) -> int:
        keepalives = self._keepalives
        if keepalives is None:
            keepalives = self._keepalives = KeepaliveClock(self._now)
        kid = keepalives.new(now)
        self._queue_control(KeepaliveFrame(kid))
        return kid

    # ------------------------------------------------------------------ ending

    def _protocol_violation(self, reason: str, now: float) -> None:
        self._abort(CloseCode.PROTOCOL_VIOLATION, reason, now)

    def _abort(self, code: int, reason: str, now: float) -> None:
        """Abortive close: one RST carrying the reason, then closed (nothing waits for it)."""
        if self._seal is not None and self._can_seal():
            self._send_protected([CloseFrame(code, cut_reason(reason))], now, flags=ACK | RST)
        self._terminate(code, reason, by_peer=False)

    def _forget_handshake(self) -> None:
        """The handshake is over (established or closed): drop the client's opening, its
        secrets first (`ClientOpening.clear`)."""
        opening = self._opening
        if opening is not None:
            opening.clear()
            self._opening = None

    def _terminate(self, code: int, reason: str, by_peer: bool) -> None:
        if self.state is _CLOSED:
            return
        self.state = _CLOSED
        opening = self._opening
        if opening is not None:
            # its secrets go; what it learned stays for the owner to report (handshake_reject)
            opening.clear()
        self._migration = None
        self.close_code = int(code)
        self.close_reason = reason
        self._close_deadline = None
        self._push_event(ConnectionClosed(int(code), reason, by_peer))

    def _queue_control(self, frame: Frame) -> None:
        """Queue a control frame for the next packet. `_control` is a list only while it
        holds some."""
        control = self._control
        if isinstance(control, list):
            control.append(frame)
        else:
            self._control = [frame]

    def _drop(self, reason: str) -> None:
        self._count_drops(reason, self.stats.drops.get(reason, 0) + 1)

    def _count_drops(self, reason: str, count: int) -> None:
        """Set `stats.drops[reason]`; the connection's own dict is made at its first drop."""
        stats = self.stats
        drops = stats.drops
        if not isinstance(drops, dict):
            drops = stats.drops = {}
        drops[reason] = count

    def refresh_stats(self) -> ConnectionStats:
        """Copy the estimators' current values into `stats` and return it."""
        stats = self.stats
        rtt = self._flight.rtt
        stats.srtt, stats.min_rtt = rtt.srtt, rtt.min_rtt
        stats.cwnd, stats.pacing_rate, stats.bbr_state = (self._cc.cwnd, self._cc.pacing_rate,
                                                          self._cc.state)
        pmtu = self._pmtu
        stats.plpmtu = pmtu.size
        # the counters follow the path: a migration starts them again with its search
        stats.pmtu_probes_sent, stats.pmtu_probes_lost, stats.pmtu_black_holes = (
            pmtu.probes_sent, pmtu.probes_lost, pmtu.black_holes)
        if self._inbox is not None:
            self._count_drops("stale_sequenced", self._inbox.stale_dropped)
        return stats


_VERDICT_NAMES: Final[dict[int, str]] = {
    DUPLICATE: "duplicate", TOO_OLD: "too_old", BEYOND_WINDOW: "beyond_window"}

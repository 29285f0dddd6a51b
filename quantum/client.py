"""The asyncio Quantum client: a thin I/O shell around the sans-I/O `Connection`.

    async with await quantum.connect("127.0.0.1", 9090, user_id="alice", ticket=t) as conn:
        await conn.send(b"hello")
        reply = await conn.recv()
        remaining = await conn.heartbeat()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from quantum.config import QuantumConfiguration
from quantum.connection import Address, Connection, ConnectionState, ConnectionStats
from quantum.errors import CloseCode, ConnectionClosedError, SendBufferFull
from quantum.errors import ConnectError as ConnectError  # defined there, imported from here too
from quantum.events import (
    CarryoverLost,
    ConnectionClosed,
    Event,
    HandshakeCompleted,
    HandshakeRejected,
    KeepaliveAcknowledged,
    MessageReceived,
    SendBufferDrained,
)
from quantum.frames import Delivery
from quantum.handshake import Credentials
from quantum.link import Link, connected_socket, open_link
from quantum.link import server_addresses as server_addresses  # part of this module's API
from quantum.reconnect import (
    RESUMABLE,
    RETRYABLE,
    ConnectionEvent,
    DataLost,
    Disconnected,
    GaveUp,
    Reconnected,
    ReconnectPolicy,
)

log = logging.getLogger("quantum.client")


@dataclass(frozen=True, slots=True)
class Message:
    data: bytes
    channel: int
    mode: Delivery


@dataclass(slots=True)
class Reconnector:
    """How a client reconnects: where, as whom, on what schedule, and whom it tells."""

    policy: ReconnectPolicy
    credentials: Credentials
    config: QuantumConfiguration
    server_key: bytes | str | None
    family: int
    server_addr: Address
    on_event: Callable[[ConnectionEvent], None] | None = None
    #: an ICMP error counts as the loss once nothing came from the server for this long
    unreachable_after: float = 1.0

    def __repr__(self) -> str:  # the credentials' repr hides the ticket; keep it that way
        return f"Reconnector({self.policy!r}, server={self.server_addr!r})"


class QuantumClient:
    """One client session over one connection at a time. Create it with `quantum.connect()`.

    With `reconnect` (the default of `quantum.connect`), a lost connection (idle timeout,
    ICMP unreachable, keys exhausted, server shutdown: `quantum.reconnect.RESUMABLE`) is
    replaced by a new one that resumes the session, with the policy's backoff, and every
    reliable message in flight either way continues on it exactly once (PROTOCOL.md 12.4).
    Meanwhile `send` queues (bounded by `max_send_buffer`; unreliable messages are dropped,
    never replayed), `recv` waits, and `on_event` hears `Disconnected`, `Reconnected`,
    `DataLost` and `GaveUp` (quantum.reconnect)."""

    def __init__(self, connection: Connection, loop: asyncio.AbstractEventLoop,
                 fail_fast: bool = False, *, reconnect: Reconnector | None = None) -> None:
        self._loop = loop
        self._link = Link(self, connection, fail_fast)
        self._reconnector = reconnect
        #: the reconnect under way, while the session has no connection
        self._reconnecting: asyncio.Task[None] | None = None
        #: what the application sent during an outage, sent once reconnected
        self._outage: deque[tuple[bytes, int, Delivery]] = deque()
        self._outage_bytes = 0
        self._reconnected: asyncio.Future[None] | None = None
        #: when the connection the current outage replaces was lost
        self._lost_at = 0.0
        self._closed: asyncio.Future[None] = loop.create_future()
        self._closing = False
        self._messages: deque[Message] = deque()
        self._message_waiter: asyncio.Future[None] | None = None
        self._heartbeats: dict[int, asyncio.Future[float | None]] = {}
        self._drained: asyncio.Future[None] | None = None
        self.session_id: str | None = None
        self.session_token: str | None = None
        self.resumed = False
        self.remaining: float | None = None
        self.close_reason: str | None = None
        self.close_code: int | None = None

    # ------------------------------------------------------------------ public API

    @property
    def _conn(self) -> Connection:
        return self._link.conn

    @property
    def _transport(self) -> asyncio.DatagramTransport | None:
        return self._link.transport

    @property
    def _established(self) -> asyncio.Future[None]:
        return self._link.established

    @property
    def stats(self) -> ConnectionStats:
        return self._conn.refresh_stats()

    @property
    def connection_id(self) -> bytes:
        return self._conn.connection_id

    @property
    def cipher(self) -> str | None:
        """The AEAD cipher the handshake chose ("aes-256-gcm", "chacha20-poly1305")."""
        return self._conn.cipher

    @property
    def server_keepalive_interval(self) -> float:
        """The keepalive interval the server announced in its hello (seconds): keepalives at
        least this often keep the session ACTIVE (PROTOCOL.md 5.2.6). The connection's own
        keepalives already follow min(configured, this)."""
        params = self._conn.params
        assert params is not None  # set by the ServerHello, before `connect` returns
        return params.keepalive_interval

    @property
    def is_closed(self) -> bool:
        return self._closed.done()

    @property
    def reconnecting(self) -> bool:
        """Whether the session is between connections (sends queue, receives wait)."""
        return self._reconnecting is not None

    async def send(self, data: bytes, channel: int = 0,
                   mode: Delivery = Delivery.RELIABLE_ORDERED) -> None:
        """Queue a message and push it to the wire. Raises `MessageError` for a bad one.

        Backpressure: while the send buffer is full (`QuantumConfiguration.max_send_buffer`
        bytes queued or unacknowledged) a reliable message waits here until the server has
        acknowledged enough; an unreliable one is dropped, as that mode allows."""
        while True:
            try:
                self.send_nowait(data, channel, mode)
                return
            except SendBufferFull:
                await self.drain()

    def send_nowait(self, data: bytes, channel: int = 0,
                    mode: Delivery = Delivery.RELIABLE_ORDERED) -> None:
        """`send` without waiting: raises `SendBufferFull` (nothing queued) when full."""
        self._check_open()
        if self._reconnecting is not None or self._outage:
            # during an outage, and after it until what it queued has gone (in order)
            self._queue_during_outage(data, channel, mode)
            return
        try:
            self._conn.send(data, channel, mode)
        finally:
            self._link.flush()

    async def drain(self) -> None:
        """Wait until the send buffer is back under half its limit (at once if it is)."""
        self._check_open()
        if self._reconnecting is not None:
            await self._await_reconnected()
            self._check_open()
        if not self._conn.drain_wanted():
            return
        if self._drained is None or self._drained.done():
            self._drained = self._loop.create_future()
        await asyncio.wait([self._drained, self._closed], return_when=asyncio.FIRST_COMPLETED)
        self._check_open()

    async def recv(self) -> bytes:
        """The next application message's bytes (any channel)."""
        return (await self.recv_message()).data

    async def recv_message(self) -> Message:
        """The next application message with its channel and delivery mode."""
        while not self._messages:
            self._check_open()
            self._message_waiter = self._loop.create_future()
            await asyncio.wait([self._message_waiter, self._closed],
                               return_when=asyncio.FIRST_COMPLETED)
        return self._messages.popleft()

    async def heartbeat(self, timeout: float = 5.0) -> float | None:
        """Send a keepalive now; returns the session's remaining seconds from the server.

        Keepalives are not retransmitted (a late one is worthless), so while no answer comes a
        fresh one goes out every max(2 x SRTT, 0.25 s); the first answer to any of them counts.
        During an outage it waits for the reconnect first (within `timeout`).
        """
        self._check_open()
        deadline = self._loop.time() + timeout
        if self._reconnecting is not None:
            await asyncio.wait_for(self._await_reconnected(), timeout)
            self._check_open()
        waiter: asyncio.Future[float | None] = self._loop.create_future()
        ids: list[int] = []
        try:
            while True:
                kid = self._conn.send_keepalive()
                ids.append(kid)
                self._heartbeats[kid] = waiter
                self._link.flush()
                srtt = self._conn.refresh_stats().srtt or 0.1
                left = deadline - self._loop.time()
                if left <= 0:
                    raise TimeoutError(f"no keepalive answer within {timeout} s")
                pending: list[asyncio.Future[Any]] = [waiter, self._closed]
                await asyncio.wait(pending, timeout=min(left, max(2 * srtt, 0.25)),
                                   return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    return waiter.result()
                self._check_open()
        finally:
            for kid in ids:
                self._heartbeats.pop(kid, None)

    async def close(self, reason: str = "client closed", timeout: float = 5.0) -> None:
        """Graceful close: pending data goes first, then FIN; waits for the server's ack,
        `timeout` seconds at most in all. This is a logout: the server ends the session
        (PROTOCOL.md 12.2). During an outage the reconnect's backoff stops and one resume is
        tried at once, within the same `timeout`, so that what is owed either way and what
        was queued meanwhile are delivered and the server hears the logout; if the server
        cannot be reached in time nothing more is sent, and the session expires there."""
        self._closing = True
        deadline = self._loop.time() + timeout
        reconnecting = self._reconnecting
        if reconnecting is not None:
            reconnecting.cancel()
            await asyncio.wait([reconnecting])  # its attempt, if one was under way, torn down
            self._reconnecting = None
            if (self._conn.state is not ConnectionState.ESTABLISHED
                    and not await self._resume_to_close(timeout)):
                self._finish("client closed during reconnect", CloseCode.NORMAL)
        if not self._closed.done():
            self._conn.close(reason)
            self._link.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._closed),
                                       max(deadline - self._loop.time(), 0.0))
        self._teardown()

    async def _resume_to_close(self, timeout: float) -> bool:
        """`close` during an outage: one resume of the session, within `timeout`, carrying
        what the lost connection owed; True once it is the client's connection."""
        reconnector = self._reconnector
        if reconnector is None or self.session_id is None or self.session_token is None:
            return False
        lost = self._link
        credentials = self._resume_credentials(reconnector)
        try:
            link = await open_link(self, reconnector.family, reconnector.server_addr, credentials,
                                   reconnector.config, reconnector.server_key,
                                   carryover=lost.conn.carryover(), timeout=timeout)
        except (ConnectError, OSError) as exc:
            log.info("close during an outage: the server could not be reached to log out (%s)",
                     exc)
            return False
        self._resumed(link, 1, self._loop.time() - self._lost_at)
        return True

    def abort(self) -> None:
        """Drop the connection without telling the server (as a crashed client would)."""
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            self._reconnecting = None
        self._teardown()
        if not self._closed.done():
            self._closed.set_result(None)
        self._wake_all()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> QuantumClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed.done() or (self._reconnecting is None
                                   and self._conn.state is ConnectionState.CLOSED):
            raise ConnectionClosedError(f"connection closed: {self.close_reason or 'closed'}")

    def _process(self, link: Link) -> None:
        conn = link.conn
        while (event := conn.next_event()) is not None:
            # a reconnect attempt's events, until it is established, settle only the attempt
            if link is not self._link and not self._attempt_event(link, event):
                continue
            if isinstance(event, MessageReceived):
                self._messages.append(Message(event.data, event.channel, event.mode))
                waiter = self._message_waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif isinstance(event, KeepaliveAcknowledged):
                self.remaining = event.remaining
                hb = self._heartbeats.get(event.keepalive_id)
                if hb is not None and not hb.done():
                    hb.set_result(event.remaining)
            elif isinstance(event, SendBufferDrained):
                if self._outage and self._reconnecting is None:
                    self._send_outage(link)
                drained = self._drained
                if drained is not None and not drained.done():
                    drained.set_result(None)
            elif isinstance(event, HandshakeCompleted):
                self.session_id = str(uuid.UUID(bytes=event.session_id))
                self.session_token = event.session_token
                self.remaining = event.remaining
                self.resumed = event.resumed
                link.carried = event.carried
                if not link.established.done():
                    link.established.set_result(None)
            elif isinstance(event, CarryoverLost):
                self._report(DataLost(event.unacknowledged, event.reason))
            elif isinstance(event, HandshakeRejected):
                if not link.established.done():
                    link.established.set_exception(ConnectError(event.code, event.reason))
            elif isinstance(event, ConnectionClosed):
                self._on_closed(link, event)
        link.flush()
        if conn.state is ConnectionState.CLOSED and link is self._link and self._closed.done():
            link.teardown()

    def _attempt_event(self, link: Link, event: Event) -> bool:
        """A reconnect attempt's event: its handshake's outcome settles the attempt, and from
        its SESSION on it is the client's connection (True: handle the event as such)."""
        if isinstance(event, HandshakeCompleted):
            self._link = link
            return True
        if not link.established.done():
            if isinstance(event, HandshakeRejected):
                link.established.set_exception(ConnectError(event.code, event.reason))
            elif isinstance(event, ConnectionClosed):
                link.established.set_exception(_connect_error(link.conn, event))
        return False

    def _on_closed(self, link: Link, event: ConnectionClosed) -> None:
        if not link.established.done():
            link.established.set_exception(_connect_error(link.conn, event))
            return
        reconnector = self._reconnector
        if (reconnector is not None and not self._closing and self._reconnecting is None
                and event.code in RESUMABLE and self.session_id is not None):
            self._reconnecting = self._loop.create_task(
                self._reconnect(link, event.code, event.reason))
            return
        self._finish(event.reason, event.code)

    def _finish(self, reason: str, code: int) -> None:
        """The session is over for this client: everything waiting wakes up."""
        self.close_code, self.close_reason = code, reason
        if not self._closed.done():
            self._closed.set_result(None)
        self._wake_all()

    def _on_unreachable(self, link: Link, exc: Exception) -> None:
        """An ICMP error on the established connection: nothing listens there now. Taken as
        the loss (no wait for the idle timeout) when nothing came from the server for a
        while, since anyone could forge an ICMP error."""
        if link is not self._link or self._reconnector is None or self._closing:
            return
        quiet_for = time.monotonic() - link.conn.last_received_at
        if quiet_for >= self._reconnector.unreachable_after:
            link.conn.close(f"server unreachable: {exc}", CloseCode.IDLE_TIMEOUT)
            link.conn.handle_timer(float("inf"))  # given up now, not at the close timeout
            self._process(link)

    def _link_lost(self, link: Link) -> None:
        if link is self._link and self._reconnecting is None and not self._closed.done() \
                and (self._reconnector is None or self._closing):
            self._finish(self.close_reason or "closed", self.close_code or CloseCode.NORMAL)

    # -- reconnecting

    def _report(self, event: ConnectionEvent) -> None:
        reconnector = self._reconnector
        if reconnector is None or reconnector.on_event is None:
            return
        try:
            reconnector.on_event(event)
        except Exception:  # the application's callback must not break the client
            log.exception("connection event callback failed (%s)", type(event).__name__)

    def _queue_during_outage(self, data: bytes, channel: int, mode: Delivery) -> None:
        if mode >= Delivery.UNRELIABLE:
            return  # unreliable: dropped, as on a lost path (never replayed later)
        size = len(data)
        limit = self._conn.config.max_send_buffer
        if self._outage_bytes + size > limit:
            raise SendBufferFull(size, self._outage_bytes, limit)
        self._outage.append((bytes(data), channel, mode))
        self._outage_bytes += size

    async def _await_reconnected(self) -> None:
        if self._reconnecting is None:
            return
        if self._reconnected is None or self._reconnected.done():
            self._reconnected = self._loop.create_future()
        await asyncio.wait([self._reconnected, self._closed],
                           return_when=asyncio.FIRST_COMPLETED)

    async def _reconnect(self, lost: Link, code: int, reason: str) -> None:
        reconnector = self._reconnector
        assert reconnector is not None and self.session_id is not None
        started = self._lost_at = self._loop.time()
        self._report(Disconnected(code, reason))
        lost.teardown()
        carryover = lost.conn.carryover()
        policy = reconnector.policy
        deadline = started + policy.give_up_after
        attempts = 0
        last = f"{CloseCode(code).name.lower() if code in CloseCode._value2member_map_ else code}"
        last_code = code
        try:
            for delay in policy.delays():
                if self._loop.time() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
                attempts += 1
                credentials = self._resume_credentials(reconnector)
                try:
                    link = await open_link(self, reconnector.family, reconnector.server_addr,
                                            credentials, reconnector.config,
                                            reconnector.server_key, carryover=carryover,
                                            timeout=deadline - self._loop.time())
                except ConnectError as exc:
                    last, last_code = exc.reason, exc.code
                    if exc.code not in RETRYABLE:
                        break
                    continue
                except OSError as exc:
                    last, last_code = f"unreachable: {exc}", CloseCode.HANDSHAKE_TIMEOUT
                    continue
                self._resumed(link, attempts, self._loop.time() - started)
                return
            self._reconnecting = None
            self._report(GaveUp(last_code, f"gave up reconnecting after {attempts} attempts "
                                           f"in {self._loop.time() - started:.1f} s: {last}"))
            self._finish(f"gave up reconnecting: {last}", last_code)
        except asyncio.CancelledError:
            self._reconnecting = None
            raise

    def _resume_credentials(self, reconnector: Reconnector) -> Credentials:
        """The reconnect's credentials, resuming this session with its current token."""
        assert self.session_id is not None and self.session_token is not None
        return dataclasses.replace(
            reconnector.credentials,
            resume=(uuid.UUID(self.session_id).bytes, self.session_token))

    def _resumed(self, link: Link, attempts: int, outage: float) -> None:
        """The session continues on `link`: what the application queued meanwhile goes out."""
        self._reconnecting = None
        self._send_outage(link)
        link.flush()
        self._report(Reconnected(attempts, outage, link.carried))
        for waiter in (self._reconnected, self._drained):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _send_outage(self, link: Link) -> None:
        """What the application queued during the outage, in order, as far as the send buffer
        takes it (carried data shares it); the rest goes at the next `SendBufferDrained`."""
        while self._outage:
            data, channel, mode = self._outage[0]
            try:
                link.conn.send(data, channel, mode)
            except SendBufferFull:
                return  # the connection owes us a SendBufferDrained
            self._outage.popleft()
            self._outage_bytes -= len(data)

    def _wake_all(self) -> None:
        for waiter in (self._message_waiter, self._drained, self._reconnected):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        for hb in self._heartbeats.values():
            if not hb.done():
                hb.set_exception(ConnectionClosedError(
                    f"connection closed: {self.close_reason or 'closed'}"))

    def _teardown(self) -> None:
        self._link.teardown()


def _connect_error(conn: Connection, closed: ConnectionClosed) -> ConnectError:
    """Why the handshake failed: a handshake that timed out after a plaintext REJECT
    (which the connection only remembers, as anyone could have sent it) reports that."""
    rejected = conn.handshake_reject
    if closed.code == CloseCode.HANDSHAKE_TIMEOUT and rejected is not None:
        code, reason = rejected
        return ConnectError(code, f"{reason} (unauthenticated answer; then the handshake "
                                  "timed out)")
    return ConnectError(closed.code, closed.reason)


async def connect(
    host: str,
    port: int,
    *,
    user_id: str,
    ticket: str | None = None,
    server_key: bytes | str | None = None,
    metadata: dict[str, str] | None = None,
    resume: tuple[str, str] | None = None,
    resume_fallback: bool = False,
    fec: bool = True,
    configuration: QuantumConfiguration | None = None,
    local_addr: tuple[str, int] | None = None,
    reconnect: bool = True,
    reconnect_policy: ReconnectPolicy | None = None,
    on_event: Callable[[ConnectionEvent], None] | None = None,
) -> QuantumClient:
    """Connect, authenticate and return an established client connection.

    `reconnect=True` (the default): a lost connection is replaced by one that resumes the
    session on `reconnect_policy`'s schedule, nothing in flight lost (`QuantumClient`);
    `on_event` hears `quantum.reconnect`'s Disconnected, Reconnected, DataLost and GaveUp.
    The first connection is not retried: its failure raises here.

    `resume=(session_id, token)` continues an earlier session on this new connection; with
    `resume_fallback=True` a refused resume gets a new session instead of `ConnectError`.
    `fec=False` asks for no forward error correction, whatever the configuration says (with
    `fec=True` the configuration's FEC is asked for; the server may still say no).
    `host` is a name or an IPv4 or IPv6 literal (`"::1"`, no brackets). Every address
    getaddrinfo gives for it is tried in its order (IPv6 first where the system prefers it)
    until one answers; the next is tried when one gives no answer within the handshake timeout,
    or at once when it reports nothing listening (ICMP) or cannot be reached from here.
    Raises `ConnectError` when the server refuses (reason code) or no address answers in time
    (`OSError` when the last address could not even be tried).
    """
    config = configuration or QuantumConfiguration()
    resume_bytes: tuple[bytes, str] | None = None
    if resume is not None:
        try:
            resume_bytes = (uuid.UUID(resume[0]).bytes, resume[1])
        except (ValueError, AttributeError, TypeError) as exc:
            raise ValueError(f"resume session id is not a UUID: {resume[0]!r}") from exc
    credentials = Credentials(
        user_id=user_id,
        ticket=ticket,
        resume=resume_bytes,
        resume_fallback=resume_fallback,
        metadata=dict(metadata or {}),
        fec=config.fec if fec else None,
    )
    policy = reconnect_policy or ReconnectPolicy()
    *others, (family, server_addr) = await server_addresses(host, port)
    for other_family, other_addr in others:
        try:
            return await _attempt(other_family, other_addr, credentials, config, server_key,
                                  local_addr, fail_fast=True, reconnect=reconnect,
                                  policy=policy, on_event=on_event)
        except ConnectError as exc:
            if exc.code != CloseCode.HANDSHAKE_TIMEOUT:
                raise  # the server answered: its answer stands, whatever other addresses
        except OSError:
            pass  # nothing listening there (ICMP), no route to this family...: the next one
    return await _attempt(family, server_addr, credentials, config, server_key, local_addr,
                          fail_fast=False, reconnect=reconnect, policy=policy,
                          on_event=on_event)


async def _attempt(family: int, server_addr: Address, credentials: Credentials,
                   config: QuantumConfiguration, server_key: bytes | str | None,
                   local_addr: tuple[str, int] | None, *, fail_fast: bool, reconnect: bool,
                   policy: ReconnectPolicy,
                   on_event: Callable[[ConnectionEvent], None] | None) -> QuantumClient:
    """One handshake with the server at one of its addresses; the established client."""
    loop = asyncio.get_running_loop()
    sock = connected_socket(family, server_addr, local_addr)
    # the server's address as this socket names it (asyncio's own `remote_addr` takes only
    # (host, port), which would lose an IPv6 scope id)
    conn = Connection.client(sock.getpeername(), credentials, time.monotonic(),
                             configuration=config, server_key=server_key,
                             connection_id=os.urandom(16), carry=reconnect)
    reconnector = None if not reconnect else Reconnector(
        policy, dataclasses.replace(credentials, resume_fallback=False), config, server_key,
        family, server_addr, on_event)
    client = QuantumClient(conn, loop, fail_fast=fail_fast, reconnect=reconnector)
    link = client._link
    try:
        await loop.create_datagram_endpoint(lambda: link, sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        await link.established
    except BaseException:
        link.teardown()
        raise
    return client

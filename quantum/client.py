"""The asyncio Quantum client: a thin I/O shell around the sans-I/O `Connection`.

    async with await quantum.connect("127.0.0.1", 9090, user_id="alice", ticket=t) as conn:
        await conn.send(b"hello")
        reply = await conn.recv()
        remaining = await conn.heartbeat()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from quantum.config import QuantumConfiguration
from quantum.connection import Address, Connection, ConnectionState, ConnectionStats
from quantum.errors import CloseCode, ConnectionClosedError, QuantumError, SendBufferFull
from quantum.events import (
    ConnectionClosed,
    HandshakeCompleted,
    HandshakeRejected,
    KeepaliveAcknowledged,
    MessageReceived,
    SendBufferDrained,
)
from quantum.frames import Delivery
from quantum.handshake import Credentials
from quantum.timers import arm_at


class ConnectError(QuantumError):
    """The server refused us (with its reason code) or never answered."""

    def __init__(self, code: int, reason: str) -> None:
        name = CloseCode(code).name if code in CloseCode._value2member_map_ else str(code)
        super().__init__(f"connection refused ({name}): {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    data: bytes
    channel: int
    mode: Delivery


class QuantumClient(asyncio.DatagramProtocol):
    """One client connection. Create it with `quantum.connect()`."""

    def __init__(self, connection: Connection, loop: asyncio.AbstractEventLoop,
                 fail_fast: bool = False) -> None:
        self._conn = connection
        self._loop = loop
        #: an ICMP error while connecting fails the connect (another address remains to try)
        self._fail_fast = fail_fast
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._established: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
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
        try:
            self._conn.send(data, channel, mode)
        finally:
            self._flush()

    async def drain(self) -> None:
        """Wait until the send buffer is back under half its limit (at once if it is)."""
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
        """
        self._check_open()
        waiter: asyncio.Future[float | None] = self._loop.create_future()
        ids: list[int] = []
        deadline = self._loop.time() + timeout
        try:
            while True:
                kid = self._conn.send_keepalive()
                ids.append(kid)
                self._heartbeats[kid] = waiter
                self._flush()
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
        """Graceful close: pending data goes first, then FIN; waits for the server's ack."""
        if not self._closed.done():
            self._conn.close(reason)
            self._flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        self._teardown()

    def abort(self) -> None:
        """Drop the connection without telling the server (as a crashed client would)."""
        self._teardown()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> QuantumClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ DatagramProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._flush()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        # the socket is connected: whatever arrives comes from the server's address, which the
        # socket may spell differently from getaddrinfo (a link-local zone: `%eth0` in the
        # host, or only in the scope id), so the connection is told the address it knows
        self._conn.receive_datagram(data, self._conn.peer_addr, time.monotonic())
        self._process()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) are not fatal for UDP: timers decide. While
        # `connect` has another of the server's addresses to try, nothing listening here
        # ends this attempt at once instead of at the handshake timeout.
        if self._fail_fast and not self._established.done():
            self._established.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        self._wake_all()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed.done() or self._conn.state is ConnectionState.CLOSED:
            raise ConnectionClosedError(f"connection closed: {self.close_reason or 'closed'}")

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._conn.handle_timer(time.monotonic())
        self._process()

    def _process(self) -> None:
        conn = self._conn
        while (event := conn.next_event()) is not None:
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
                drained = self._drained
                if drained is not None and not drained.done():
                    drained.set_result(None)
            elif isinstance(event, HandshakeCompleted):
                self.session_id = str(uuid.UUID(bytes=event.session_id))
                self.session_token = event.session_token
                self.remaining = event.remaining
                self.resumed = event.resumed
                if not self._established.done():
                    self._established.set_result(None)
            elif isinstance(event, HandshakeRejected):
                if not self._established.done():
                    self._established.set_exception(ConnectError(event.code, event.reason))
            elif isinstance(event, ConnectionClosed):
                self.close_code, self.close_reason = event.code, event.reason
                if not self._established.done():
                    self._established.set_exception(self._connect_error(event))
                if not self._closed.done():
                    self._closed.set_result(None)
                self._wake_all()
        self._flush()

    def _connect_error(self, closed: ConnectionClosed) -> ConnectError:
        """Why the handshake failed: a handshake that timed out after a plaintext REJECT
        (which the connection only remembers, as anyone could have sent it) reports that."""
        rejected = self._conn.handshake_reject
        if closed.code == CloseCode.HANDSHAKE_TIMEOUT and rejected is not None:
            code, reason = rejected
            return ConnectError(code, f"{reason} (unauthenticated answer; then the handshake "
                                      "timed out)")
        return ConnectError(closed.code, closed.reason)

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for data, _ in self._conn.datagrams_to_send(time.monotonic()):
            transport.sendto(data)  # connected to the server: no address (asyncio insists)
        self._arm_timer()
        if self._conn.state is ConnectionState.CLOSED and self._closed.done():
            self._teardown()

    def _arm_timer(self) -> None:
        at = self._conn.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = arm_at(self._loop, at, self._on_timer)

    def _wake_all(self) -> None:
        for waiter in (self._message_waiter, self._drained):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        for hb in self._heartbeats.values():
            if not hb.done():
                hb.set_exception(ConnectionClosedError(
                    f"connection closed: {self.close_reason or 'closed'}"))

    def _teardown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None


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
) -> QuantumClient:
    """Connect, authenticate and return an established client connection.

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
    *others, (family, server_addr) = await server_addresses(host, port)
    for other_family, other_addr in others:
        try:
            return await _attempt(other_family, other_addr, credentials, config, server_key,
                                  local_addr, fail_fast=True)
        except ConnectError as exc:
            if exc.code != CloseCode.HANDSHAKE_TIMEOUT:
                raise  # the server answered: its answer stands, whatever other addresses
        except OSError:
            pass  # nothing listening there (ICMP), no route to this family...: the next one
    return await _attempt(family, server_addr, credentials, config, server_key, local_addr,
                          fail_fast=False)


async def _attempt(family: int, server_addr: Address, credentials: Credentials,
                   config: QuantumConfiguration, server_key: bytes | str | None,
                   local_addr: tuple[str, int] | None, *, fail_fast: bool) -> QuantumClient:
    """One handshake with the server at one of its addresses; the established client."""
    loop = asyncio.get_running_loop()
    sock = _connected_socket(family, server_addr, local_addr)
    # the server's address as this socket names it (asyncio's own `remote_addr` takes only
    # (host, port), which would lose an IPv6 scope id)
    conn = Connection.client(sock.getpeername(), credentials, time.monotonic(),
                             configuration=config, server_key=server_key,
                             connection_id=os.urandom(16))
    client = QuantumClient(conn, loop, fail_fast=fail_fast)
    try:
        await loop.create_datagram_endpoint(lambda: client, sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        await client._established
    except BaseException:
        client._teardown()
        raise
    return client


def _connected_socket(family: int, server_addr: Address,
                      local_addr: tuple[str, int] | None) -> socket.socket:
    """A non-blocking UDP socket of `family` connected to `server_addr` (bound to
    `local_addr` first if given); `OSError` when it cannot be (no route, a local address of
    the other family)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if local_addr is not None:
            sock.bind(local_addr)
        sock.connect(server_addr)  # UDP: sets the peer, sends nothing, never blocks
    except BaseException:
        sock.close()
        raise
    return sock


async def server_addresses(host: str, port: int) -> list[tuple[int, Address]]:
    """Where `connect` tries the server, in order: every (family, socket address) that
    getaddrinfo gives for `host` (a name, or an IPv4 or IPv6 literal), once each. A name that
    does not resolve raises `ConnectError`."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConnectError(CloseCode.INTERNAL_ERROR, f"cannot resolve {host}: {exc}") from None
    seen: list[tuple[int, Address]] = []
    for family, _, _, _, sockaddr in infos:
        if (family, sockaddr) not in seen:
            seen.append((family, sockaddr))
    if not seen:
        raise ConnectError(CloseCode.INTERNAL_ERROR, f"cannot resolve {host}")
    return seen

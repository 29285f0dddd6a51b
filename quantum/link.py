"""The client's UDP link: one connection and its connected socket (`Link`), a reconnect
attempt that opens a new one (`open_link`), and where a server's name points
(`server_addresses`).

The asyncio glue between a sans-I/O `Connection` and a socket: datagrams in, datagrams out, the
connection's one timer, ICMP errors. What the connection's events mean is its owner's business
(`quantum.client.QuantumClient`, which keeps one link at a time and opens another to
reconnect).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING

from quantum.carryover import Carryover
from quantum.config import QuantumConfiguration
from quantum.connection import Address, Connection
from quantum.errors import CloseCode, ConnectError
from quantum.handshake import Credentials
from quantum.timers import arm_at

if TYPE_CHECKING:
    from quantum.client import QuantumClient


class Link(asyncio.DatagramProtocol):
    """One connection and its socket: the client's current one, or a reconnect attempt."""

    def __init__(self, client: QuantumClient, conn: Connection, fail_fast: bool) -> None:
        self.client = client
        self.conn = conn
        #: an ICMP error while connecting fails the attempt (another address remains to try)
        self.fail_fast = fail_fast
        self.transport: asyncio.DatagramTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        #: the handshake's outcome: done once established (or refused, or timed out)
        self.established: asyncio.Future[None] = client._loop.create_future()
        #: the server continued the lost connection's streams here (SESSION resumed=2)
        self.carried = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flush()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        # the socket is connected: whatever arrives comes from the server's address, which the
        # socket may spell differently from getaddrinfo (a link-local zone: `%eth0` in the
        # host, or only in the scope id), so the connection is told the address it knows
        self.conn.receive_datagram(data, self.conn.peer_addr, time.monotonic())
        self.client._process(self)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) are not fatal for UDP: timers decide. While
        # `connect` has another of the server's addresses to try, nothing listening here
        # ends this attempt at once instead of at the handshake timeout; an established
        # connection that reconnects takes it as the loss it says (if nothing came since)
        if not self.established.done():
            if self.fail_fast:
                self.established.set_exception(exc)
        else:
            self.client._on_unreachable(self, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._link_lost(self)

    def on_timer(self) -> None:
        self.timer = None
        self.timer_at = None
        self.conn.handle_timer(time.monotonic())
        self.client._process(self)

    def flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data, _ in self.conn.datagrams_to_send(time.monotonic()):
            transport.sendto(data)  # connected to the server: no address (asyncio insists)
        self.arm_timer()

    def arm_timer(self) -> None:
        at = self.conn.get_timer()
        if at == self.timer_at:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_at = at
        if at is not None:
            self.timer = arm_at(self.client._loop, at, self.on_timer)

    def teardown(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()


async def open_link(client: QuantumClient, family: int, server_addr: Address,
                     credentials: Credentials, config: QuantumConfiguration,
                     server_key: bytes | str | None, *, carryover: Carryover | None,
                     timeout: float) -> Link:
    """A reconnect attempt: a new socket and connection that resumes the session (with the
    lost connection's carry-over); established, or `ConnectError` / `OSError`."""
    sock = connected_socket(family, server_addr, None)
    conn = Connection.client(sock.getpeername(), credentials, time.monotonic(),
                             configuration=config, server_key=server_key, carry=True,
                             carryover=carryover)
    link = Link(client, conn, fail_fast=True)
    try:
        await client._loop.create_datagram_endpoint(lambda: link, sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        await asyncio.wait_for(asyncio.shield(link.established), max(timeout, 0.0))
    except TimeoutError:
        if link.established.done() and link.established.exception() is None:
            return link  # established just as the bound ran out: it is the client's now
        link.teardown()
        raise ConnectError(CloseCode.HANDSHAKE_TIMEOUT, "no answer within the outage's "
                                                        "bound") from None
    except BaseException:
        link.teardown()
        raise
    return link


def connected_socket(family: int, server_addr: Address,
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

"""NAT rebinding against the real server: an established connection whose client suddenly sends
from a new address keeps working, the new path is validated, and the session's client address
follows (PathMigrated -> SessionManager.update_client_address). tests/test_ipv6.py moves a
client from IPv4 to IPv6 with the same helpers."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

from quantum.config import QuantumConfiguration
from quantum.connection import Address, Connection, ConnectionState
from quantum.events import HandshakeCompleted, MessageReceived
from quantum.handshake import Credentials
from tests.test_server import HOST, Echo, eventually, running_server


class Endpoint(asyncio.DatagramProtocol):
    """One UDP socket feeding a shared sans-I/O connection. With `server`, the socket is the
    client's way to that one address (as a connected socket is): everything goes there, and
    what arrives is from the connection's peer."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop,
                 server: Address | None = None) -> None:
        self.conn, self.loop, self.server = conn, loop, server
        self.transport: asyncio.DatagramTransport | None = None
        self.events: list[object] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        source = addr if self.server is None else self.conn.peer_addr
        self.conn.receive_datagram(data, source, self.loop.time())
        while (event := self.conn.next_event()) is not None:
            self.events.append(event)
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
        for data, addr in self.conn.datagrams_to_send(self.loop.time()):
            self.transport.sendto(data, addr if self.server is None else self.server)


async def open_path(conn: Connection, local_addr: tuple[str, int], family: int,
                    server: Address | None = None) -> tuple[asyncio.DatagramTransport, Endpoint]:
    """A new socket at `local_addr` for `conn`, which sends what it has queued from there."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: Endpoint(conn, loop, server), local_addr=local_addr, family=family)
    endpoint: Any = protocol
    endpoint.flush()
    return transport, endpoint


async def established(conn: Connection, endpoint: Endpoint) -> bytes:
    """Wait for the handshake; the session id the server gave."""
    async def done() -> bool:
        return conn.state is ConnectionState.ESTABLISHED

    await eventually(done, 5.0, "the handshake")
    return next(e for e in endpoint.events if isinstance(e, HandshakeCompleted)).session_id


async def echoed(conn: Connection, endpoint: Endpoint, text: bytes) -> None:
    """Send `text` from `endpoint`'s socket and wait for the server's echo to arrive there."""
    conn.send(text)
    endpoint.flush()

    async def arrived() -> bool:
        return any(isinstance(e, MessageReceived) and e.data == text for e in endpoint.events)

    await eventually(arrived, 5.0, f"the echo of {text!r} on the new path")


async def test_rebinding_keeps_the_connection_and_the_session_follows() -> None:
    async with running_server(app=Echo()) as h:
        loop = asyncio.get_running_loop()
        conn = Connection.client((HOST, h.port), Credentials(user_id="mover"), loop.time(),
                                 configuration=QuantumConfiguration(keepalive_interval=None))
        first, old = await open_path(conn, (HOST, 0), socket.AF_INET)
        session_id = await established(conn, old)
        sessions, _ = await h.manager.list_sessions()
        assert sessions[0].client_port == first.get_extra_info("sockname")[1]

        # the NAT rebinds: from now on the client's packets leave from another port
        second, new = await open_path(conn, (HOST, 0), socket.AF_INET)
        first.close()
        new_port = second.get_extra_info("sockname")[1]
        await echoed(conn, new, b"after rebinding")

        async def address_followed() -> bool:
            s, _ = await h.manager.list_sessions()
            return bool(s) and s[0].client_port == new_port

        await eventually(address_followed, 5.0, "the session's client address to follow")
        (s,), _ = await h.manager.list_sessions()  # the same, single session throughout
        assert s.session_id == str(uuid.UUID(bytes=session_id))
        assert s.state.name == "ACTIVE"
        second.close()

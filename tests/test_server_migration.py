"""NAT rebinding against the real server: an established connection whose client suddenly sends
from a new address keeps working, the new path is validated, and the session's client address
follows (PathMigrated -> SessionManager.update_client_address)."""

from __future__ import annotations

import asyncio
import socket
import uuid

from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.events import HandshakeCompleted, MessageReceived
from quantum.handshake import Credentials
from tests.test_server import HOST, Echo, eventually, running_server


class Endpoint(asyncio.DatagramProtocol):
    """One UDP socket feeding a shared sans-I/O connection."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn, self.loop = conn, loop
        self.transport: asyncio.DatagramTransport | None = None
        self.events: list[object] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.conn.receive_datagram(data, addr, self.loop.time())
        while (event := self.conn.next_event()) is not None:
            self.events.append(event)
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
        for data, addr in self.conn.datagrams_to_send(self.loop.time()):
            self.transport.sendto(data, addr)


async def test_rebinding_keeps_the_connection_and_the_session_follows() -> None:
    async with running_server(app=Echo()) as h:
        loop = asyncio.get_running_loop()
        server_addr = (HOST, h.port)
        conn = Connection.client(server_addr, Credentials(user_id="mover"), loop.time(),
                                 configuration=QuantumConfiguration(keepalive_interval=None))
        first, _ = await loop.create_datagram_endpoint(lambda: Endpoint(conn, loop),
                                                       local_addr=(HOST, 0), family=socket.AF_INET)
        old: Endpoint = first.get_protocol()  # type: ignore[assignment]
        old.flush()

        async def established() -> bool:
            return conn.state is ConnectionState.ESTABLISHED

        await eventually(established, 5.0, "the handshake")
        session_id = next(e for e in old.events if isinstance(e, HandshakeCompleted)).session_id
        sessions, _ = await h.manager.list_sessions()
        assert sessions[0].client_port == first.get_extra_info("sockname")[1]

        # the NAT rebinds: from now on the client's packets leave from another port
        second, _ = await loop.create_datagram_endpoint(lambda: Endpoint(conn, loop),
                                                        local_addr=(HOST, 0),
                                                        family=socket.AF_INET)
        new: Endpoint = second.get_protocol()  # type: ignore[assignment]
        first.close()
        new_port = second.get_extra_info("sockname")[1]
        conn.send(b"after rebinding")
        new.flush()

        async def echoed() -> bool:
            return any(isinstance(e, MessageReceived) and e.data == b"after rebinding"
                       for e in new.events)

        await eventually(echoed, 5.0, "the echo on the new path")

        async def address_followed() -> bool:
            s, _ = await h.manager.list_sessions()
            return bool(s) and s[0].client_port == new_port

        await eventually(address_followed, 5.0, "the session's client address to follow")
        (s,), _ = await h.manager.list_sessions()  # the same, single session throughout
        assert s.session_id == str(uuid.UUID(bytes=session_id))
        assert s.state.name == "ACTIVE"
        second.close()

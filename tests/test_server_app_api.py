"""The application API the README documents, on the real server: `QuantumServer.send(session_id,
...)` finds the connection that holds the session now (after a resume too), and refuses one it
does not know; `snapshot()` counts what happened, each counter exactly where it can be exact.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from quantum.auth import TicketAuthenticator, issue_ticket
from quantum.client import ConnectError
from quantum.errors import CloseCode
from quantum.frames import Delivery
from quantum.keys import ServerKeyFile
from quantum.packet import Flags, build_header
from session.errors import SessionNotFound
from tests.test_server import HOST, client_config, dial, eventually, running_server


async def test_send_by_session_id_reaches_the_holder_and_follows_a_resume() -> None:
    async with running_server() as h:
        alice, bob = await dial(h.port, "alice"), await dial(h.port, "bob")
        sid, token = alice.session_id or "", alice.session_token or ""
        h.server.send(sid, b"for alice", channel=3, mode=Delivery.RELIABLE_UNORDERED)
        h.server.send(bob.session_id or "", b"for bob")
        got = await asyncio.wait_for(alice.recv_message(), 5)
        assert (got.data, got.channel, got.mode) == (b"for alice", 3,
                                                     Delivery.RELIABLE_UNORDERED)
        assert await asyncio.wait_for(bob.recv(), 5) == b"for bob"

        # alice's process dies; she comes back on a new connection into the same session
        alice.abort()
        again = await dial(h.port, "alice", resume=(sid, token))
        assert again.resumed and again.session_id == sid
        h.server.send(sid, b"after the resume")
        assert await asyncio.wait_for(again.recv(), 5) == b"after the resume"

        with pytest.raises(SessionNotFound):
            h.server.send("00000000-0000-0000-0000-000000000000", b"nobody")
        await again.close()

        def gone() -> bool:
            try:
                h.server.send(sid, b"late")
            except SessionNotFound:
                return True
            return False

        async def closed() -> bool:
            return gone()

        await eventually(closed, what="the closed session to be forgotten by send()")
        await bob.close()


async def test_snapshot_counts_connections_messages_heartbeats_refusals_and_drops() -> None:
    key = ServerKeyFile.new()
    now = time.time()
    async with running_server(key=key, authenticator=TicketAuthenticator(key.ticket_secret),
                              max_connections=2) as h:
        quiet = client_config(keepalive=None)  # every heartbeat below is one we asked for
        alice = await dial(h.port, "alice", configuration=quiet,
                           ticket=issue_ticket(key.ticket_secret, "alice", 60, now))
        bob = await dial(h.port, "bob", configuration=quiet,
                         ticket=issue_ticket(key.ticket_secret, "bob", 60, now))
        for n in range(5):
            await alice.send(b"m%d" % n)
        for _ in range(3):
            assert await bob.heartbeat() is not None
        assert await alice.heartbeat() is not None

        await bob.close()

        async def bob_gone() -> bool:
            return bool(h.server.snapshot()["connections_closed"] == 1)

        await eventually(bob_gone, what="bob's connection to be counted closed")
        # a forged ticket: one authentication failure
        with pytest.raises(ConnectError) as refused:
            await dial(h.port, "mallory", configuration=quiet,
                       ticket=issue_ticket(bytes(32), "mallory", 60, now))
        assert refused.value.code == CloseCode.BAD_TICKET
        carol = await dial(h.port, "carol", configuration=quiet,
                           ticket=issue_ticket(key.ticket_secret, "carol", 60, now))
        # the cap of 2 reached: a plaintext SERVER_FULL (heard at once: one SYN), by reason
        with pytest.raises(ConnectError) as full:
            await dial(h.port, "dave", configuration=replace(quiet, handshake_tries=1),
                       ticket=issue_ticket(key.ticket_secret, "dave", 60, now))
        assert full.value.code == CloseCode.SERVER_FULL

        # a SYN whose hello is garbage: dropped by the listener, counted with its prefix
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                           remote_addr=(HOST, h.port))
        garbage = b"\x01" * 1200  # the retry cookie length byte says 1: no such hello
        transport.sendto(build_header(Flags.SYN, bytes(16), 0, 0, len(garbage)) + garbage)

        async def counted() -> bool:
            return bool(h.server.snapshot()["drops"].get("handshake_bad_hello", 0) == 1)

        await eventually(counted, what="the garbage hello to be counted")
        transport.close()
        snap = h.server.snapshot()
        # every connection a completed handshake created (mallory's, refused after it, too)
        # is opened, and closed when it ends: opened - closed is what is live
        assert snap["connections"] == 2
        assert (snap["connections_opened"], snap["connections_closed"]) == (4, 2)
        assert snap["messages_received"] == 5
        assert snap["heartbeats"] == 4
        assert snap["auth_failures"] == 1
        assert snap["handshakes_rejected"] == {"server_full": 1}
        await alice.close()
        await carol.close()

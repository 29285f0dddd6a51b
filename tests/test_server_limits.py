"""Resource limits and the front door on the real server (UDP on 127.0.0.1), attacked as in
issue 11: garbage and spoofed SYN floods against a victim's address, a NAT's handshakes in
retry mode, one user or one address filling every slot, a refused resume, replayed finishes.

Loopback has one source address, so "spoofing the victim" is sending from another port of
127.0.0.1: to the server's per-source limits that is the same source.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from quantum.client import ConnectError, QuantumClient
from quantum.connection import Connection
from quantum.errors import CloseCode
from quantum.handshake import Credentials
from quantum.packet import Flags, Packet, encode_packet
from session.model import State
from tests.test_server import HOST, Echo, Harness, dial, eventually, running_server

EVICTED = "evicted: session limit per user"


def limited_server(*, manager_limits: dict[str, Any] | None = None,
                   front_door: dict[str, float] | None = None, idle_timeout: float = 5.0,
                   max_connections: int = 10_000) -> AbstractAsyncContextManager[Harness]:
    """`running_server` with an Echo app and limits: `manager_limits` go to ManagerConfig,
    `front_door` to ServerConfig (handshake_rate, handshake_burst, retry_above_rate...)."""
    return running_server(app=Echo(), idle_timeout=idle_timeout, max_connections=max_connections,
                          manager_limits=manager_limits, **(front_door or {}))


class Flood:
    """Sends datagrams from 127.0.0.1 (another port than any client's) at a steady rate."""

    def __init__(self, port: int, make: Any, per_second: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port, self.make, self.per_tick = port, make, max(1, per_second // 100)
        self.sent = 0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:  # a batch every 10 ms: sleeps are too coarse for one datagram each
            for _ in range(self.per_tick):
                self.sock.sendto(self.make(), (HOST, self.port))
            self.sent += self.per_tick
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> Flood:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.sleep(0.5)  # enough to empty any bucket it can reach
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        self.sock.close()


def tiny_syn() -> bytes:
    return encode_packet(Packet(Flags.SYN, os.urandom(16), 0, 0, (), bytes(8)))


def hello_syn() -> bytes:
    """A well-formed 1,200-byte SYN from a client that will never answer."""
    return Connection.client((HOST, 1), Credentials("spoofer"), 0.0).datagrams_to_send(0.0)[0][0]


# ------------------------------------------------------------------ the front door


async def test_tiny_garbage_syns_from_the_victims_address_do_not_lock_it_out() -> None:
    async with limited_server() as h:
        async with Flood(h.port, tiny_syn, per_second=200) as flood:
            for i in range(8):
                client = await dial(h.port, f"victim-{i}")
                await client.close()
        stats = h.server.listener.stats

        async def all_read() -> bool:
            return stats.drops.get("bad_hello", 0) == flood.sent

        await eventually(all_read, what="every garbage SYN to be read and dropped")
        # more than the burst of 40: charged, they would have emptied the victim's bucket
        assert flood.sent > 40
        assert stats.rejected == {} and stats.retries_sent == 0


async def test_a_flood_of_well_formed_hellos_from_the_victims_address_costs_it_a_retry() -> None:
    async with limited_server() as h, Flood(h.port, hello_syn, per_second=200):
        for i in range(5):
            client = await dial(h.port, f"victim-{i}")
            await client.close()
        stats = h.server.listener.stats
        assert stats.retries_rate_limited >= 5
        assert "rate_limited" not in stats.rejected


async def test_handshakes_through_one_nat_in_retry_mode_are_charged_once() -> None:
    # every handshake is asked for a retry cookie (the total rate is 1/s), at 30 a second
    # against a per-source rate of 40: charged once each, all of them complete
    limits = {"handshake_rate": 40.0, "handshake_burst": 10.0, "retry_above_rate": 1.0}
    async with limited_server(front_door=limits) as h:
        clients: list[QuantumClient] = []
        started = time.monotonic()
        for i in range(30):
            clients.append(await dial(h.port, f"behind-nat-{i}"))
            await asyncio.sleep(1 / 30)
        elapsed = time.monotonic() - started
        stats = h.server.listener.stats
        # all but the few that found a token of the total rate (one a second) had to retry
        assert stats.retries_sent >= 30 - math.ceil(elapsed) - 1
        assert stats.rejected == {}
        for client in clients:
            client.abort()


# ------------------------------------------------------------------ connections per address / user


async def test_one_address_holds_at_most_64_connections() -> None:
    generous = {"handshake_rate": 1e6, "handshake_burst": 1e6}
    async with limited_server(front_door=generous) as h:
        clients = await asyncio.gather(*(dial(h.port, f"user-{i}") for i in range(64)))
        with pytest.raises(ConnectError) as refused:
            await dial(h.port, "user-64")
        assert refused.value.code == CloseCode.ADDRESS_FULL
        assert "at most 64" in refused.value.reason
        assert h.server.snapshot()["handshakes_rejected"] == {"address_full": 1}
        assert len(h.server.peers) == 64
        await clients[0].close()

        async def freed() -> bool:
            return len(h.server.peers) == 63

        await eventually(freed, what="the closed connection's slot to be freed")
        last = await dial(h.port, "user-64")
        assert last.session_id is not None
        for client in [*clients[1:], last]:
            client.abort()


async def test_one_user_holds_at_most_8_connections_and_a_resume_replaces_its_own() -> None:
    async with limited_server() as h:
        clients = [await dial(h.port, "alice") for _ in range(8)]
        with pytest.raises(ConnectError) as refused:
            await dial(h.port, "alice")
        assert refused.value.code == CloseCode.TOO_MANY_CONNECTIONS
        assert "at most 8" in refused.value.reason
        assert (await h.manager.get_stats())["total"] == 8  # no session was made for it
        snapshot = h.server.snapshot()
        assert snapshot["handshakes_rejected"] == {"too_many_connections": 1}
        assert snapshot["auth_failures"] == 0
        other = await dial(h.port, "bob")  # other users are not affected
        # resuming one of alice's sessions on a new connection replaces that connection
        first = clients[0]
        resumed = await dial(h.port, "alice", resume=(first.session_id, first.session_token))
        assert resumed.resumed
        await asyncio.wait_for(first.wait_closed(), 3)
        await clients[1].close()

        async def freed() -> bool:
            return h.server.user_connections.count("alice") == 7

        await eventually(freed, what="alice's closed connection to stop counting")
        await (await dial(h.port, "alice")).close()
        for client in [*clients[2:], resumed, other]:
            client.abort()


# ------------------------------------------------------------------ sessions per user


async def disconnected(h: Harness, user: str, count: int) -> None:
    async def check() -> bool:
        sessions, _ = await h.manager.list_sessions()
        mine = [s for s in sessions if s.user_id == user]
        return len(mine) == count and all(s.state is State.DISCONNECTING for s in mine)

    await eventually(check, what=f"{count} DISCONNECTING sessions of {user}")


async def test_a_ninth_session_evicts_the_users_least_recently_active_disconnected_one() -> None:
    async with limited_server(idle_timeout=0.5) as h:
        sids = []
        for _ in range(8):  # eight connections that end without FIN
            client = await dial(h.port, "alice")
            sids.append(client.session_id)
            client.abort()
            await asyncio.sleep(0.01)
        await disconnected(h, "alice", 8)
        ninth = await dial(h.port, "alice")
        assert h.ended == [(sids[0], EVICTED)]
        sessions, total = await h.manager.list_sessions()
        assert total == 8 and ninth.session_id in {s.session_id for s in sessions}
        await ninth.close()


async def test_when_every_session_is_live_the_next_is_refused_too_many_sessions() -> None:
    async with limited_server(manager_limits={"max_sessions_per_user": 2}) as h:
        clients = [await dial(h.port, "alice") for _ in range(2)]
        with pytest.raises(ConnectError) as refused:
            await dial(h.port, "alice")
        assert refused.value.code == CloseCode.TOO_MANY_SESSIONS
        assert (await h.manager.get_stats())["total"] == 2 and h.ended == []
        assert h.server.snapshot()["handshakes_rejected"] == {"too_many_sessions": 1}
        assert len(h.server.peers) == 2  # the refused connection is gone
        for client in clients:
            await client.close()


async def test_the_session_service_full_is_refused_sessions_full() -> None:
    async with limited_server(manager_limits={"max_sessions": 3}) as h:
        clients = [await dial(h.port, f"user-{i}") for i in range(3)]
        with pytest.raises(ConnectError) as refused:
            await dial(h.port, "user-3")
        assert refused.value.code == CloseCode.SESSIONS_FULL
        assert h.server.snapshot()["handshakes_rejected"] == {"sessions_full": 1}
        for client in clients:
            await client.close()


# ------------------------------------------------------------------ refused resume, replays


async def test_a_refused_resume_leaves_the_stored_session_byte_identical() -> None:
    async with limited_server(idle_timeout=0.5) as h:
        alice = await dial(h.port, "alice")
        sid, token = alice.session_id or "", alice.session_token or ""
        alice.abort()
        await disconnected(h, "alice", 1)
        stored = await h.session(sid)
        assert stored is not None
        before = json.dumps(stored.to_dict(), sort_keys=True).encode()
        time.sleep(0.01)  # a write now would show in the timestamps
        with pytest.raises(ConnectError) as refused:
            await dial(h.port, "mallory", resume=(sid, token))  # the token, not the user
        assert refused.value.code == CloseCode.BAD_RESUME
        after = await h.session(sid)
        assert after is not None
        assert json.dumps(after.to_dict(), sort_keys=True).encode() == before
        resumed = await dial(h.port, "alice", resume=(sid, token))
        assert resumed.resumed
        await resumed.close()


async def test_a_replayed_finish_costs_one_diffie_hellman_while_the_server_is_full() -> None:
    async with limited_server(max_connections=1) as h:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        server_addr = (HOST, h.port)
        attacker = Connection.client(server_addr, Credentials("replayer"), loop.time())
        await loop.sock_sendto(sock, attacker.datagrams_to_send(loop.time())[0][0], server_addr)
        hello, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 2)
        attacker.receive_datagram(hello, server_addr, loop.time())
        (finish, _), = attacker.datagrams_to_send(loop.time())
        occupant = await dial(h.port, "occupant")  # now the server is full

        calls = [0]
        real = h.server.listener.handshake.on_client_finish

        def counting(*args: Any) -> Any:
            calls[0] += 1
            return real(*args)

        h.server.listener.handshake.on_client_finish = counting  # type: ignore[method-assign]
        for _ in range(300):
            sock.sendto(finish, server_addr)

        async def all_read() -> bool:
            drops = h.server.listener.stats.drops
            return drops.get("replayed_handshake", 0) == 299

        await eventually(all_read, what="the replays to be dropped")
        assert calls == [1]
        assert h.server.listener.stats.rejected == {"server_full": 1}
        sock.close()
        await occupant.close()

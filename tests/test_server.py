"""The server end to end over real UDP on 127.0.0.1: clients, sessions, tickets, loss, garbage.

Each test runs its own in-process `QuantumServer` on an ephemeral port with a MemoryStore-backed
SessionManager and short keepalive, idle and session timeouts, so life-cycle transitions that
take minutes in production happen within a second or two. What the server did is read back from
the session manager (`get_stats`, `list_sessions`, listeners), never from log output.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from quantum.auth import AnonymousAuthenticator, Authenticator, TicketAuthenticator, issue_ticket
from quantum.client import ConnectError, QuantumClient, connect
from quantum.config import QuantumConfiguration
from quantum.errors import CloseCode, ConnectionClosedError, SendBufferFull
from quantum.frames import Delivery
from quantum.keys import ServerKeyFile
from quantum.packet import HEADER_SIZE, MAGIC, VERSION, Flags
from server import Application, Peer, QuantumServer, ServerConfig
from session.errors import SessionNotFound
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.model import Session, SessionFilter, State
from session.watch import EventKind, SessionEvent
from tests.relay import LossyRelay, RelayProfile

HOST = "127.0.0.1"
KEEPALIVE = 0.2  # the server's keepalive interval: IDLE after 3 of them without a keepalive


# ------------------------------------------------------------------------------- harness


@dataclass
class Harness:
    """A running server and what its session manager reported."""

    server: QuantumServer
    manager: SessionManager
    key: ServerKeyFile
    ended: list[tuple[str, str]] = field(default_factory=list)  # (session id, reason)

    @property
    def port(self) -> int:
        return self.server.port

    def ended_reason(self, session_id: str) -> str | None:
        return next((reason for sid, reason in self.ended if sid == session_id), None)

    async def session(self, session_id: str) -> Session | None:
        """The stored session, expired or not; None once it was removed."""
        sessions, _ = await self.manager.list_sessions()
        return next((s for s in sessions if s.session_id == session_id), None)


@asynccontextmanager
async def running_server(
    *,
    app: Application | None = None,
    authenticator: Authenticator | None = None,
    key: ServerKeyFile | None = None,
    session_timeout: float = 30.0,
    idle_timeout: float = 5.0,
    cleanup_interval: float = 0.2,
    hibernate_after: float = 5.0,
    max_connections: int = 10_000,
    manager_limits: dict[str, Any] | None = None,
    setup: Callable[[QuantumServer], None] | None = None,
    host: str = HOST,
    **config: object,
) -> AsyncIterator[Harness]:
    """`manager_limits`: more ManagerConfig fields; `setup(server)` runs before it starts;
    `host`: where it listens; `config`: more ServerConfig fields."""
    key = key or ServerKeyFile.new()
    manager = SessionManager(ManagerConfig(store=MemoryStore(), default_timeout=session_timeout,
                                           cleanup_interval=cleanup_interval,
                                           **(manager_limits or {})))
    config = ServerConfig(host=host, port=0, keepalive_interval=KEEPALIVE,
                          idle_timeout=idle_timeout, stats_interval=0.1,
                          hibernate_after=hibernate_after, max_connections=max_connections,
                          **config)  # type: ignore[arg-type]
    server = QuantumServer(manager, key, authenticator or AnonymousAuthenticator(), config, app)
    if setup is not None:
        setup(server)
    harness = Harness(server, manager, key)
    manager.add_listener(lambda s, reason: harness.ended.append((s.session_id, reason)))
    await server.start()
    try:
        yield harness
    finally:
        await server.stop()


def client_config(keepalive: float | None = KEEPALIVE, idle_timeout: float = 5.0) -> (
        QuantumConfiguration):
    # handshake packets lost by the relay are resent every 0.25 s instead of every second
    return QuantumConfiguration(keepalive_interval=keepalive, idle_timeout=idle_timeout,
                                handshake_timeout=4.0, handshake_tries=16)


async def dial(port: int, user_id: str = "alice", **kwargs: object) -> QuantumClient:
    kwargs.setdefault("configuration", client_config())
    return await asyncio.wait_for(connect(HOST, port, user_id=user_id, **kwargs),  # type: ignore[arg-type]
                                  timeout=10)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0,
                     what: str = "condition") -> None:
    """Poll `check` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def cid_text(client: QuantumClient) -> str:
    return str(uuid.UUID(bytes=client.connection_id))


class Echo(Application):
    """Answers every message with itself, on the same channel and mode."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def on_message(self, peer: Peer, message: bytes, channel: int, mode: Delivery) -> None:
        self.received.append(message)
        peer.send(message, channel, mode)


# ------------------------------------------------------------------- many clients, life cycle


async def test_many_clients_connect_heartbeat_exchange_and_close() -> None:
    echo = Echo()
    async with running_server(app=echo) as h:
        clients = await asyncio.gather(
            *(dial(h.port, f"user-{i}", metadata={"room": str(i % 3)}) for i in range(30)))
        assert len({c.session_id for c in clients}) == 30
        for i, client in enumerate(clients):
            for n in range(3):
                await client.send(f"{i}:{n}".encode())
        # heartbeats go out while the server still works through the burst of 270 datagrams
        # (which overflowed a default-sized socket buffer before the server asked for 4 MiB)
        remaining = await asyncio.gather(*(c.heartbeat() for c in clients))
        assert remaining == [pytest.approx(30.0)] * 30
        for i, client in enumerate(clients):
            assert [await client.recv() for _ in range(3)] == [f"{i}:{n}".encode()
                                                              for n in range(3)]

        assert await h.manager.get_stats() == {"total": 30, "connecting": 0, "active": 30,
                                               "idle": 0, "disconnecting": 0, "closed": 0}
        sessions, total = await h.manager.list_sessions()
        assert total == 30
        by_id = {s.session_id: s for s in sessions}
        for i, client in enumerate(clients):
            assert client.session_id is not None
            s = by_id[client.session_id]
            peer = h.server.peers[client.connection_id]
            assert (s.user_id, s.state, s.connection_id) == (f"user-{i}", State.ACTIVE,
                                                             cid_text(client))
            assert (s.client_ip, s.client_port) == peer.address
            assert s.server_addr == h.server.address_text
            assert s.metadata == {"room": str(i % 3)}
        room0, n_room0 = await h.manager.list_sessions(SessionFilter(user_id="user-3"))
        assert n_room0 == 1 and room0[0].session_id == clients[3].session_id

        async def stats_swept() -> bool:
            found, _ = await h.manager.list_sessions()
            return all(s.stats.packets_received > 0 and s.stats.bytes_received > 0
                       and s.stats.packets_sent > 0 for s in found)

        await eventually(stats_swept, what="the stats sweep to record every session")
        for client in clients:
            s = by_id[client.session_id or ""]
            fresh = await h.manager.get_session(s.session_id)
            # the server cannot have received more than the client sent
            assert fresh.stats.packets_received <= client.stats.packets_sent
            assert fresh.stats.bytes_received <= client.stats.bytes_sent
        snap = h.server.snapshot()
        assert snap["connections"] == 30 and snap["connections_opened"] == 30
        assert snap["messages_received"] == 90 and snap["heartbeats"] >= 30
        assert sorted(echo.received) == sorted(f"{i}:{n}".encode() for i in range(30)
                                               for n in range(3))

        await asyncio.gather(*(c.close() for c in clients))

        async def all_deleted() -> bool:
            return (await h.manager.get_stats())["total"] == 0

        await eventually(all_deleted, what="every session to be deleted")
        assert sorted(h.ended) == sorted((c.session_id or "", "client closed") for c in clients)
        assert h.server.snapshot()["connections"] == 0
        assert h.server.snapshot()["connections_closed"] == 30


async def test_aborted_client_goes_idle_then_disconnecting_then_expires() -> None:
    async with running_server(idle_timeout=1.2, session_timeout=2.0) as h:
        client = await dial(h.port)
        assert await client.heartbeat() == pytest.approx(2.0)
        sid = client.session_id
        assert sid is not None
        # every change as the manager publishes it (a poll can miss a short IDLE window on a
        # loaded machine; a watcher cannot)
        changes: list[SessionEvent] = []
        h.manager.add_watcher(lambda e: changes.append(e) if e.session.session_id == sid
                              else None)
        client.abort()  # no FIN: as if the process was killed

        async def gone() -> bool:
            return await h.session(sid) is None

        await eventually(gone, timeout=15.0, what="the session to expire and be removed")
        assert [(e.kind, e.previous_state, e.session.state) for e in changes] == [
            (EventKind.STATE_CHANGED, State.ACTIVE, State.IDLE),
            (EventKind.STATE_CHANGED, State.IDLE, State.DISCONNECTING),
            (EventKind.EXPIRED, None, State.DISCONNECTING)]
        assert h.ended == [(sid, "expired")]
        assert h.server.snapshot()["connections"] == 0
        with pytest.raises(SessionNotFound):
            await h.manager.get_session(sid)


async def test_idle_session_becomes_active_again_on_a_message() -> None:
    async with running_server(app=Echo()) as h:
        client = await dial(h.port, configuration=client_config(keepalive=None))
        sid = client.session_id or ""

        async def state_is(state: State) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                s = await h.session(sid)
                return s is not None and s.state is state
            return check

        await eventually(await state_is(State.IDLE), what="IDLE after 3 silent intervals")
        await client.send(b"back")
        assert await client.recv() == b"back"
        await eventually(await state_is(State.ACTIVE), what="ACTIVE after a message")
        await client.close()


async def test_quiet_connection_hibernates_and_wakes_on_the_next_packet() -> None:
    async with running_server(app=Echo(), hibernate_after=0.3) as h:
        client = await dial(h.port, configuration=client_config(keepalive=None))
        conn = next(iter(h.server.peers.values())).conn

        async def hibernated() -> bool:
            return conn.hibernating and h.server.snapshot()["connections_hibernating"] == 1

        await eventually(hibernated, what="cipher objects released after 0.3 s of quiet")
        # the next packets in both directions rebuild the ciphers; nothing is lost
        remaining = await client.heartbeat()
        assert remaining is not None and remaining > 0
        await client.send(b"after hibernation")
        assert await client.recv() == b"after hibernation"
        assert not conn.hibernating
        assert h.server.counters.heartbeats >= 1
        await client.close()


async def test_heartbeat_survives_one_lost_keepalive() -> None:
    # keepalives are never retransmitted by the protocol; heartbeat() must ask again
    async with running_server() as h:
        relay = await LossyRelay.start((HOST, h.port), seed=1)
        try:
            client = await dial(relay.port)
            relay.drop_next_to_server(1)
            assert await client.heartbeat(timeout=2.0) == pytest.approx(30.0)
            await client.close()
        finally:
            relay.close()


# -------------------------------------------------------------------------------- resume


async def test_resume_on_a_new_connection_keeps_the_session() -> None:
    async with running_server(app=Echo()) as h:
        first = await dial(h.port, metadata={"level": "3"})
        sid, token = first.session_id or "", first.session_token or ""
        first.abort()

        second = await dial(h.port, resume=(sid, token))
        assert (second.session_id, second.resumed) == (sid, True)
        assert second.connection_id != first.connection_id
        s = await h.manager.get_session(sid)
        peer = h.server.peers[second.connection_id]
        assert s.state is State.ACTIVE
        assert s.connection_id == cid_text(second)
        assert (s.client_ip, s.client_port) == peer.address
        assert s.metadata == {"level": "3"}
        assert h.server.by_session[sid] is peer
        await second.send(b"still here")
        assert await second.recv() == b"still here"

        # the abandoned first connection is being closed (its FIN is never acknowledged, so
        # it lingers for the close timeout); when it goes it must not touch the session
        old_peer = h.server.peers.get(first.connection_id)
        assert old_peer is None or old_peer.superseded

        async def old_gone() -> bool:
            return first.connection_id not in h.server.peers

        await eventually(old_gone, timeout=6.0, what="the superseded connection to close")
        assert (await h.manager.get_session(sid)).state is State.ACTIVE
        assert h.ended == []
        await second.close()
        async def deleted() -> bool:
            return await h.session(sid) is None

        await eventually(deleted, what="the session to be deleted")
        assert h.ended == [(sid, "client closed")]


async def test_resume_while_the_old_connection_is_alive_closes_it() -> None:
    async with running_server() as h:
        first = await dial(h.port)
        sid, token = first.session_id or "", first.session_token or ""
        second = await dial(h.port, resume=(sid, token))
        assert second.session_id == sid
        await asyncio.wait_for(first.wait_closed(), 3)
        assert first.close_reason == "session resumed on another connection"
        assert first.close_code == CloseCode.SESSION_ENDED
        assert (await h.manager.get_session(sid)).connection_id == cid_text(second)
        await second.close()


async def test_resume_with_a_wrong_token_is_refused_or_falls_back() -> None:
    async with running_server() as h:
        first = await dial(h.port)
        sid = first.session_id or ""
        with pytest.raises(ConnectError) as refused:
            await dial(h.port, resume=(sid, "not-the-token"))
        assert refused.value.code == CloseCode.BAD_RESUME

        other = await dial(h.port, resume=(sid, "not-the-token"), resume_fallback=True)
        assert other.session_id != sid and other.resumed is False
        # the original session is untouched and still on its own connection
        s = await h.manager.get_session(sid)
        assert s.connection_id == cid_text(first) and s.state is State.ACTIVE
        assert (await h.manager.get_stats())["total"] == 2
        with pytest.raises(ConnectError) as wrong_user:
            await dial(h.port, "mallory", resume=(sid, first.session_token or ""))
        assert wrong_user.value.code == CloseCode.BAD_RESUME
        await first.close()
        await other.close()


async def test_deleting_a_session_in_the_manager_closes_its_connection() -> None:
    async with running_server() as h:
        client = await dial(h.port)
        sid = client.session_id or ""
        await h.manager.delete_session(sid, "kicked by moderator")
        await asyncio.wait_for(client.wait_closed(), 3)
        assert client.close_code == CloseCode.SESSION_ENDED
        assert client.close_reason == "session kicked by moderator"
        with pytest.raises(ConnectionClosedError):
            await client.send(b"too late")
        async def no_peers() -> bool:
            return not h.server.peers

        await eventually(no_peers, what="the connection to go")
        assert h.ended == [(sid, "kicked by moderator")]


# -------------------------------------------------------------------------------- tickets


async def test_tickets_and_server_key_pinning() -> None:
    key = ServerKeyFile.new()
    now = time.time()
    async with running_server(key=key, authenticator=TicketAuthenticator(key.ticket_secret)) as h:
        good = await dial(h.port, ticket=issue_ticket(key.ticket_secret, "alice", 60, now),
                          server_key=key.public_key_text)
        assert good.session_id is not None
        assert (await h.manager.get_session(good.session_id)).user_id == "alice"

        cases = {
            "forged": ("alice", issue_ticket(os.urandom(32), "alice", 60, now),
                       CloseCode.BAD_TICKET),
            "expired": ("alice", issue_ticket(key.ticket_secret, "alice", 60, now - 3600),
                        CloseCode.EXPIRED_TICKET),
            "wrong user": ("alice", issue_ticket(key.ticket_secret, "bob", 60, now),
                           CloseCode.BAD_TICKET),
            "missing": ("alice", None, CloseCode.BAD_TICKET),
            "malformed": ("alice", "v1.garbage", CloseCode.BAD_TICKET),
        }
        for name, (user, ticket, code) in cases.items():
            with pytest.raises(ConnectError) as refused:
                await dial(h.port, user, ticket=ticket)
            assert refused.value.code == code, name
        with pytest.raises(ConnectError) as pinned:
            await dial(h.port, ticket=issue_ticket(key.ticket_secret, "alice", 60, now),
                       server_key=ServerKeyFile.new().public_key_text)
        assert pinned.value.code == CloseCode.BAD_SERVER_KEY

        assert h.server.counters.auth_failures == len(cases)
        assert await h.manager.get_stats() == {"total": 1, "connecting": 0, "active": 1,
                                               "idle": 0, "disconnecting": 0, "closed": 0}
        assert h.server.snapshot()["connections"] == 1
        await good.close()


# ----------------------------------------------------------------------------- lossy relay


async def test_lossy_relay_loses_no_reliable_message() -> None:
    echo = Echo()
    rng = random.Random(42)
    ordered = [rng.randbytes(rng.choice((1, 7, 100, 1300, 3000, 5000))) for _ in range(120)]
    unordered = [b"u%03d" % i + rng.randbytes(rng.randrange(0, 2000)) for i in range(60)]
    async with running_server(app=echo) as h:
        relay = await LossyRelay.start(
            (HOST, h.port), RelayProfile(loss=0.08, duplicate=0.05, reorder=0.1, max_delay=0.02),
            seed=5)
        try:
            client = await dial(relay.port, configuration=client_config(idle_timeout=10.0))
            for message in ordered:
                await client.send(message)
            for message in unordered:
                await client.send(message, 1, Delivery.RELIABLE_UNORDERED)
            got_ordered: list[bytes] = []
            got_unordered: list[bytes] = []
            while len(got_ordered) + len(got_unordered) < len(ordered) + len(unordered):
                m = await asyncio.wait_for(client.recv_message(), 15)
                (got_ordered if m.channel == 0 else got_unordered).append(m.data)
                assert m.mode is (Delivery.RELIABLE_ORDERED if m.channel == 0
                                  else Delivery.RELIABLE_UNORDERED)
            assert got_ordered == ordered
            assert sorted(got_unordered) == sorted(unordered)
            # what the server's application saw: each message once, channel 0 in order
            assert [m for m in echo.received if m in set(ordered)] == ordered
            assert len(echo.received) == len(ordered) + len(unordered)
            with pytest.raises(TimeoutError):  # and nothing arrives twice, however late
                await asyncio.wait_for(client.recv(), 0.3)
            assert relay.stats.dropped > 0 and relay.stats.duplicated > 0
            assert relay.stats.delayed > 0
            assert h.server.snapshot()["retransmissions"] + client.stats.retransmissions > 0
            await client.close()
        finally:
            relay.close()


# --------------------------------------------------------------------------------- garbage


def _forged(cid: bytes, flags: int, seq: int, body: bytes) -> bytes:
    header = struct.pack("!4sBB16sIIH", MAGIC, VERSION, flags, cid, seq, 0, len(body))
    assert len(header) == HEADER_SIZE
    return header + body


async def test_garbage_truncated_and_forged_datagrams_change_nothing() -> None:
    # a live connection's drops reach the snapshot at its next upkeep look (every
    # stats_interval, 0.1 s here, while it is busy, on 0.25 s slots): a wait of a few below
    async with running_server(app=Echo()) as h:
        clients = [await dial(h.port, f"user-{i}") for i in range(3)]
        before = {c.session_id: await h.manager.get_session(c.session_id or "") for c in clients}
        addresses = {c.connection_id: h.server.peers[c.connection_id].address for c in clients}
        rng = random.Random(9)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        target = (HOST, h.port)
        counts = {"random": 0, "truncated": 0, "forged_live": 0, "unknown": 0}
        try:
            for round_ in range(20):
                for _ in range(5):
                    sock.sendto(rng.randbytes(rng.randrange(1, 1500)).replace(b"QUNT", b"XXXX"),
                                target)
                    counts["random"] += 1
                for _ in range(5):
                    sock.sendto(MAGIC + rng.randbytes(rng.randrange(0, HEADER_SIZE - 4)), target)
                    counts["truncated"] += 1
                for c in clients:
                    # a live connection id with a body that cannot authenticate
                    sock.sendto(_forged(c.connection_id, Flags.ACK, rng.randrange(1, 50),
                                        rng.randbytes(60)), target)
                    counts["forged_live"] += 1
                sock.sendto(_forged(os.urandom(16), Flags.ACK | Flags.FIN, 7, rng.randbytes(40)),
                            target)
                counts["unknown"] += 1
                # meanwhile the real clients carry on
                for i, c in enumerate(clients):
                    payload = f"{round_}-{i}".encode()
                    await c.send(payload)
                    assert await asyncio.wait_for(c.recv(), 3) == payload
                if round_ % 5 == 0:
                    assert await asyncio.gather(*(c.heartbeat() for c in clients)) == [
                        pytest.approx(30.0)] * 3
            # a few forged SYNs: a handful only, each costs a rate-limit token of 127.0.0.1
            for _ in range(3):
                sock.sendto(_forged(os.urandom(16), Flags.SYN, 0, rng.randbytes(200)), target)
            await asyncio.sleep(1.0)
        finally:
            sock.close()

        drops = h.server.snapshot()["drops"]
        assert drops.get("handshake_not_quantum") == counts["random"] + counts["truncated"]
        rejected_by_conn = sum(drops.get(r, 0) for r in
                               ("auth_failed", "too_old", "beyond_window", "duplicate"))
        assert rejected_by_conn >= counts["forged_live"]
        assert drops.get("auth_failed", 0) > 0
        assert drops.get("handshake_unknown_connection") == counts["unknown"]
        assert drops.get("handshake_bad_hello", 0) + drops.get("handshake_malformed", 0) == 3
        # nothing moved: same sessions, same states, same addresses, still serving
        assert all(not c.is_closed for c in clients)
        assert (await h.manager.get_stats())["active"] == 3
        for c in clients:
            s = await h.manager.get_session(c.session_id or "")
            old = before[c.session_id]
            assert (s.connection_id, s.client_ip, s.client_port, s.state) == (
                old.connection_id, old.client_ip, old.client_port, State.ACTIVE)
            assert h.server.peers[c.connection_id].address == addresses[c.connection_id]
        late = await dial(h.port, "late-comer")
        await late.send(b"hello")
        assert await late.recv() == b"hello"
        for c in [*clients, late]:
            await c.close()


# ------------------------------------------------------------------------ the application API


class ChatRoom(Application):
    """Broadcasts every message to everyone else; announces arrivals and departures."""

    def __init__(self) -> None:
        self.members: dict[str, Peer] = {}
        self.departures: list[tuple[str, str]] = []

    def broadcast(self, text: bytes, sender: Peer | None) -> None:
        for peer in self.members.values():
            if peer is not sender:
                peer.send(text)

    def on_connect(self, peer: Peer) -> None:
        self.broadcast(f"* {peer.user_id} joined".encode(), peer)
        self.members[peer.connection_id] = peer

    async def on_message(self, peer: Peer, message: bytes, channel: int,
                         mode: Delivery) -> None:
        await asyncio.sleep(0)  # a coroutine callback is run as a task
        self.broadcast(peer.user_id.encode() + b": " + message, peer)

    def on_disconnect(self, peer: Peer, reason: str) -> None:
        self.members.pop(peer.connection_id, None)
        self.departures.append((peer.user_id, reason))
        self.broadcast(f"* {peer.user_id} left".encode(), None)


async def test_chat_room_broadcasts_to_everyone_else() -> None:
    room = ChatRoom()
    async with running_server(app=room) as h:
        alice = await dial(h.port, "alice")
        bob = await dial(h.port, "bob")
        assert await asyncio.wait_for(alice.recv(), 3) == b"* bob joined"
        carol = await dial(h.port, "carol")
        for c in (alice, bob):
            assert await asyncio.wait_for(c.recv(), 3) == b"* carol joined"
        await alice.send(b"hi all")
        for c in (bob, carol):
            assert await asyncio.wait_for(c.recv(), 3) == b"alice: hi all"
        await bob.close()
        for c in (alice, carol):
            assert await asyncio.wait_for(c.recv(), 3) == b"* bob left"
        assert room.departures == [("bob", "client closed")]
        assert sorted(p.user_id for p in room.members.values()) == ["alice", "carol"]
        await alice.send(b"bye")
        assert await asyncio.wait_for(carol.recv(), 3) == b"alice: bye"
        with pytest.raises(TimeoutError):  # the sender never hears itself
            await asyncio.wait_for(alice.recv(), 0.2)
        await alice.close()
        await carol.close()


# ------------------------------------------------------------------------------ backpressure


class Bulk(Application):
    """On any message: send 3 x 600 kB through a 1 MiB send buffer, waiting when it is full."""

    def __init__(self) -> None:
        self.refusals = 0

    def on_message(self, peer: Peer, message: bytes, channel: int,
                   mode: Delivery) -> Awaitable[None]:
        return self._send_all(peer)

    async def _send_all(self, peer: Peer) -> None:
        for i in range(3):
            blob = bytes([i]) * 600_000
            while True:
                try:
                    peer.send(blob)
                    break
                except SendBufferFull:
                    self.refusals += 1
                    await peer.drain()


async def test_peer_send_refuses_past_the_send_buffer_and_drain_waits_for_room() -> None:
    app = Bulk()
    async with running_server(app=app, max_send_buffer=1 << 20) as h:
        client = await dial(h.port)
        await client.send(b"go")
        got = [await asyncio.wait_for(client.recv(), 10) for _ in range(3)]
        assert got == [bytes([i]) * 600_000 for i in range(3)]
        assert app.refusals >= 1  # the second 600 kB did not fit at first
        peer = next(iter(h.server.peers.values()))
        assert peer.conn.send_buffered <= 1 << 20
        await client.close()

"""The event -> session table (`server.SessionBridge`), row by row, without a socket.

Real connections over the simulated network produce the events; the bridge acts on a fake
session manager that records every call (and can fail on demand) and on a fake port (its
server's three verbs). What each row promises is read back from the manager's calls and from
what the client side of the connection saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from quantum.auth import AnonymousAuthenticator, TicketAuthenticator
from quantum.carryover import Carryover
from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.errors import CloseCode
from quantum.events import (
    AuthenticationRequested,
    ConnectionClosed,
    HandshakeCompleted,
    HandshakeRejected,
    KeepaliveAcknowledged,
    PathMigrated,
)
from quantum.handshake import Credentials
from quantum.keys import ServerKeyFile
from quantum.simulation import (
    CLIENT_ADDR,
    SERVER_ADDR,
    LinkProfile,
    SimulatedNetwork,
    SimulatedServer,
    Simulation,
)
from server import UPDATE_BATCH, Peer, QuantumServer, ServerCounters, SessionBridge
from session.errors import (
    InvalidToken,
    SessionCapacityExceeded,
    SessionError,
    SessionExpired,
    SessionNotFound,
    StoreUnavailable,
    TooManyUserSessions,
)
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.model import Session, State, Stats

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEEPALIVE = 10.0


def _session(user_id: str, connection_id: str, ip: str = "10.0.0.2", port: int = 40000,
             sid: str | None = None) -> Session:
    return Session(session_id=sid or str(uuid.uuid4()), user_id=user_id,
                   connection_id=connection_id, client_ip=ip, client_port=port,
                   state=State.CONNECTING, created_at=NOW, last_active_at=NOW,
                   expires_at=NOW + timedelta(seconds=1800), server_addr="10.0.0.1:9090",
                   metadata={}, stats=Stats(), token_hash="")


class FakeManager(SessionManager):
    """Records every call the bridge makes; `fail[name]` makes that call raise."""

    def __init__(self) -> None:
        super().__init__(ManagerConfig(store=MemoryStore()))
        self.calls: list[tuple[Any, ...]] = []
        self.fail: dict[str, SessionError] = {}
        self.remaining: float | None = 1234.0  # heartbeat_nowait's answer (None: must await)
        self.sessions: dict[str, Session] = {}
        #: each resume_session's client address and server address
        self.resumed_from: list[tuple[str, int, str | None]] = []
        self.heartbeat_nowait = self._nowait  # type: ignore[assignment]

    def _check(self, name: str) -> None:
        if name in self.fail:
            raise self.fail[name]

    def _nowait(self, session_id: str) -> float | None:
        self.calls.append(("heartbeat_nowait", session_id))
        self._check("heartbeat_nowait")
        return self.remaining

    async def create_session(self, user_id: str, client_ip: str, client_port: int,  # type: ignore[override]
                             connection_id: str, metadata: Any = None,
                             server_addr: str | None = None, **kwargs: Any) -> tuple[Session, str]:
        self.calls.append(("create_session", user_id, client_ip, client_port, connection_id,
                           dict(metadata or {}), server_addr))
        self._check("create_session")
        session = _session(user_id, connection_id, client_ip, client_port)
        session.metadata = dict(metadata or {})
        self.sessions[session.session_id] = session
        return session, "token-" + session.session_id[:8]

    async def heartbeat(self, session_id: str) -> float:
        self.calls.append(("heartbeat", session_id))
        self._check("heartbeat")
        return 1800.0

    async def heartbeat_with_io(self, session_id: str) -> float:
        self.calls.append(("heartbeat_with_io", session_id))
        self._check("heartbeat_with_io")
        return 1800.0

    async def check_resume(self, session_id: str, token: str, user_id: str | None = None) -> Any:
        self.calls.append(("check_resume", session_id, token, user_id))
        self._check("check_resume")
        return self.sessions[session_id]

    async def resume_session(self, session_id: str, token: str, connection_id: str,  # type: ignore[override]
                             client_ip: str, client_port: int, server_addr: str | None = None,
                             user_id: str | None = None, **kwargs: Any) -> Session:
        self.calls.append(("resume_session", session_id, connection_id, user_id))
        self.resumed_from.append((client_ip, client_port, server_addr))
        self._check("resume_session")
        session = replace(self.sessions[session_id], connection_id=connection_id,
                          state=State.ACTIVE)
        self.sessions[session_id] = session
        return session

    async def resume_session_rotating(self, session_id: str, token: str,  # type: ignore[override]
                                      connection_id: str, client_ip: str, client_port: int,
                                      server_addr: str | None = None,
                                      user_id: str | None = None) -> tuple[Session, str]:
        session = await self.resume_session(session_id, token, connection_id, client_ip,
                                            client_port, server_addr, user_id=user_id)
        return session, "rotated-" + session_id[:8]

    async def confirm_token(self, session_id: str, token_hash: bytes) -> bool:
        self.calls.append(("confirm_token", session_id, token_hash))
        return True

    async def update_session(self, session_id: str, state: State | None = None,  # type: ignore[override]
                             metadata: Any = None, stats: Stats | None = None) -> Session:
        self.calls.append(("update_session", session_id, state))
        self._check("update_session")
        return self.sessions[session_id]

    async def record_stats(self, session_id: str, stats: Stats) -> None:
        self.calls.append(("record_stats", session_id, stats.packets_received))
        self._check("record_stats")

    async def update_client_address(self, session_id: str, client_ip: str,  # type: ignore[override]
                                    client_port: int) -> Session:
        self.calls.append(("update_client_address", session_id, client_ip, client_port))
        self._check("update_client_address")
        return self.sessions[session_id]

    async def delete_session(self, session_id: str, reason: str) -> Session:
        self.calls.append(("delete_session", session_id, reason))
        self._check("delete_session")
        return self.sessions.pop(session_id)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]


class FakePort:
    """The bridge's server: runs spawned coroutines as tasks, counts flushes and binds."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.flushed: list[Peer] = []
        self.bound: list[Peer] = []
        #: called with ("flush" or "bind", peer) as the bridge calls: a look at the bridge's
        #: state at that instant (before the connection's next events are handled)
        self.watch: Callable[[str, Peer], None] | None = None

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    def flush(self, peer: Peer) -> None:
        self.flushed.append(peer)
        if self.watch is not None:
            self.watch("flush", peer)

    def bind(self, peer: Peer) -> None:
        self.bound.append(peer)
        if self.watch is not None:
            self.watch("bind", peer)


class Rig(Simulation):
    """A simulation whose server connections' events go through a real SessionBridge."""

    def __init__(self, authenticator: Any = None) -> None:
        config = QuantumConfiguration(keepalive_interval=None, idle_timeout=600.0)
        server = SimulatedServer.create(config)
        super().__init__(SimulatedNetwork(LinkProfile(delay=0.01), 1), server)
        self.manager = FakeManager()
        self.port = FakePort()
        self.counters = ServerCounters()
        self.bridge = SessionBridge(self.manager, authenticator or AnonymousAuthenticator(),
                                    self.port, self.counters, keepalive_interval=KEEPALIVE,
                                    max_connections_per_user=2, clock=lambda: self.now)
        self.bridge.server_addr = "10.0.0.1:9090"
        # Peer's own server is only for Peer.send, which these tests do not use
        self.host = QuantumServer(self.manager, ServerKeyFile.new(), AnonymousAuthenticator())
        self.peers: dict[bytes, Peer] = {}

    def peer(self, conn: Connection) -> Peer:
        if conn.connection_id not in self.peers:
            self.peers[conn.connection_id] = Peer(self.host, conn)
        return self.peers[conn.connection_id]

    def _drain_server(self, conn: Connection) -> None:
        while (event := conn.next_event()) is not None:
            self.server.events.append((conn, event))
            self.bridge.handle(self.peer(conn), event)
        for data, dst in conn.datagrams_to_send(self.now):
            self.network.send(data, ("10.0.0.1", 9090), dst, self.now)
        if conn.state is ConnectionState.CLOSED:
            self.server.endpoint.remove(conn.connection_id, self.now)

    async def settle(self, seconds: float = 1.0) -> None:
        """Run the network and the bridge's tasks until both are quiet."""
        for _ in range(20):
            await asyncio.gather(*self.port.tasks)
            self.flush()  # what the bridge's tasks queued (the port only records flushes)
            self.run(until=self.now + seconds / 20)
        await asyncio.gather(*self.port.tasks)
        self.flush()

    def client_events(self, addr: tuple[str, int] = CLIENT_ADDR) -> list[object]:
        return self.client_events_of(addr)

    def client_events_of(self, addr: tuple[str, int]) -> list[object]:
        return list(super().__getattribute__("client_events")[addr])


async def connect(rig: Rig, credentials: Credentials,
                  addr: tuple[str, int] = CLIENT_ADDR) -> tuple[Connection, Peer]:
    client = rig.add_client(credentials, addr=addr)
    await rig.settle()
    return client, rig.peers[client.connection_id]  # (a refused one is reaped already)


def hold_heartbeats(rig: Rig) -> asyncio.Event:
    """Make the manager's heartbeat (the last step of an authentication) wait until the
    returned event is set: the connection can be made to give up meanwhile."""
    gate = asyncio.Event()
    original = rig.manager.heartbeat

    async def slow_heartbeat(session_id: str) -> float:
        await gate.wait()
        return await original(session_id)

    rig.manager.heartbeat = slow_heartbeat  # type: ignore[method-assign]
    return gate


def events_of(rig: Rig, addr: tuple[str, int], kind: type) -> list[Any]:
    return [e for e in rig.client_events_of(addr) if isinstance(e, kind)]


# ----------------------------------------------------------------- AuthenticationRequested


async def test_a_new_client_gets_a_session_then_is_bound_and_accepted() -> None:
    rig = Rig()
    with capture_logs() as logs:
        client, peer = await connect(rig, Credentials(user_id="alice", metadata={"room": "blue"}))
    cid = str(uuid.UUID(bytes=client.connection_id))
    (established,) = [e for e in logs if e["event"] == "connection established"]
    assert {k: v for k, v in established.items() if k not in ("event", "log_level", "logger")} == {
        "connection_id": cid, "session_id": peer.session_id, "user_id": "alice",
        "resumed": False, "carried": False, "client": f"{CLIENT_ADDR[0]}:{CLIENT_ADDR[1]}"}
    assert peer.metadata == {"room": "blue"}  # what the application reads of its client
    # the SESSION frame leaves at once, not at the next upkeep
    assert peer in rig.port.flushed and None not in rig.port.flushed
    assert rig.manager.named("create_session") == [
        ("create_session", "alice", CLIENT_ADDR[0], CLIENT_ADDR[1], cid, {"room": "blue"},
         "10.0.0.1:9090")]
    session_id = rig.manager.named("create_session") and peer.session_id
    assert rig.manager.named("heartbeat") == [("heartbeat", session_id)]  # CONNECTING -> ACTIVE
    assert rig.port.bound == [peer] and peer.user_id == "alice"
    assert rig.bridge.peer_for(str(session_id)) is peer
    assert client.state is ConnectionState.ESTABLISHED
    done = events_of(rig, CLIENT_ADDR, HandshakeCompleted)
    assert uuid.UUID(bytes=done[0].session_id) == uuid.UUID(str(session_id))
    assert done[0].remaining == pytest.approx(1800.0)


async def test_a_bad_ticket_is_refused_and_nothing_is_created() -> None:
    rig = Rig(TicketAuthenticator(bytes(32)))
    with capture_logs() as logs:
        client, peer = await connect(rig, Credentials(user_id="mallory", ticket="forged"))
    assert client.state is ConnectionState.CLOSED
    assert peer in rig.port.flushed  # the REJECT leaves at once, not at the next upkeep
    rejected = events_of(rig, CLIENT_ADDR, HandshakeRejected)
    assert [e.code for e in rejected] == [CloseCode.BAD_TICKET]
    assert rig.manager.named("create_session") == [] and rig.port.bound == []
    assert rig.counters.auth_failures == 1
    (entry,) = [e for e in logs if e["event"] == "handshake rejected"]
    assert (entry["connection_id"], entry["user_id"], entry["reason"], entry["detail"]) == (
        str(uuid.UUID(bytes=client.connection_id)), "mallory", "bad_ticket", rejected[0].reason)
    await connect(rig, Credentials(user_id="mallory", ticket="forged"), addr=("10.0.0.7", 1))
    assert rig.counters.auth_failures == 2  # counted, not just flagged


@pytest.mark.parametrize(("failure", "code", "counted"), [
    (StoreUnavailable("etcd is down"), CloseCode.STORE_UNAVAILABLE, None),
    (TooManyUserSessions("8 sessions already"), CloseCode.TOO_MANY_SESSIONS,
     "too_many_sessions"),
    (TooManyUserSessions("x" * 300), CloseCode.TOO_MANY_SESSIONS, "too_many_sessions"),
    (SessionCapacityExceeded("100000 sessions"), CloseCode.SESSIONS_FULL, "sessions_full"),
    (SessionError("something else"), CloseCode.BAD_REQUEST, None),
    (SessionError("y" * 300), CloseCode.BAD_REQUEST, None),
])
async def test_a_session_service_failure_refuses_the_handshake_with_its_code(
        failure: SessionError, code: CloseCode, counted: str | None) -> None:
    rig = Rig()
    rig.manager.fail["create_session"] = failure
    with capture_logs() as logs:
        client, _ = await connect(rig, Credentials(user_id="alice"))
    rejected = events_of(rig, CLIENT_ADDR, HandshakeRejected)
    assert [e.code for e in rejected] == [code]
    assert rig.port.bound == []
    # what the client is told: the store's trouble in fixed words (its error may name
    # internals), a request the service refused in the service's own, at most 200 characters
    if code is CloseCode.STORE_UNAVAILABLE:
        assert rejected[0].reason == "session store unavailable"
    elif code is CloseCode.BAD_REQUEST:
        assert rejected[0].reason == str(failure)[:200]
    cid = str(uuid.UUID(bytes=client.connection_id))
    if counted is not None:  # a limit: counted, logged, and the refusal says which
        assert rig.counters.rejected == {counted: 1}
        assert rejected[0].reason == str(failure)[:200]
        (entry,) = [e for e in logs if e["event"] == "handshake rejected"]
        assert (entry["connection_id"], entry["user_id"], entry["reason"], entry["detail"]) == (
            cid, "alice", counted, str(failure))
    if isinstance(failure, StoreUnavailable):
        (entry,) = [e for e in logs if e["event"] == "session store unavailable"]
        assert (entry["log_level"], entry["connection_id"], entry["error"]) == (
            "error", cid, "etcd is down")
    # only a refused request counts as a failed authentication (each one: counted, not
    # flagged); a limit or an outage does not
    await connect(rig, Credentials(user_id="alice"), addr=("10.0.0.9", 1))
    assert rig.counters.auth_failures == (2 if code is CloseCode.BAD_REQUEST else 0)


async def test_the_users_connection_quota_refuses_the_third_connection() -> None:
    rig = Rig()  # max_connections_per_user=2
    for i in range(2):
        await connect(rig, Credentials(user_id="alice"), addr=("10.0.0.2", 40000 + i))
    _client, _ = await connect(rig, Credentials(user_id="alice"), addr=("10.0.0.2", 40009))
    assert [e.code for e in events_of(rig, ("10.0.0.2", 40009), HandshakeRejected)] == [
        CloseCode.TOO_MANY_CONNECTIONS]
    assert rig.counters.rejected == {"too_many_connections": 1}
    assert len(rig.manager.named("create_session")) == 2
    await connect(rig, Credentials(user_id="alice"), addr=("10.0.0.2", 40010))
    assert rig.counters.rejected == {"too_many_connections": 2}  # counted, not just flagged


async def test_a_resume_moves_the_session_and_supersedes_its_old_connection() -> None:
    rig = Rig()
    old_client, old_peer = await connect(rig, Credentials(user_id="alice"))
    sid = str(old_peer.session_id)
    new_addr = ("10.0.0.3", 41000)
    resume = (uuid.UUID(sid).bytes, "the-token")
    # a state change the applier has not reached yet (a batch in progress): the resume
    # supersedes it, or the resumed session would be put to sleep after the fact
    rig.bridge._states[sid] = State.DISCONNECTING
    new_client, new_peer = await connect(rig, Credentials(user_id="alice", resume=resume),
                                         addr=new_addr)
    assert rig.manager.named("check_resume") == [("check_resume", sid, "the-token", "alice")]
    assert rig.manager.named("resume_session") == [
        ("resume_session", sid, str(uuid.UUID(bytes=new_client.connection_id)), "alice")]
    assert rig.manager.resumed_from == [("10.0.0.3", 41000, "10.0.0.1:9090")]
    assert sid not in rig.bridge._states
    assert len(rig.manager.named("create_session")) == 1  # only the first
    completed = events_of(rig, new_addr, HandshakeCompleted)[0]
    assert completed.resumed and completed.session_token == "rotated-" + sid[:8]
    # once the client acknowledged its SESSION frame, the replaced token is retired
    await rig.settle()
    assert rig.manager.named("confirm_token") == [
        ("confirm_token", sid, hashlib.sha256(b"rotated-" + sid[:8].encode()).digest())]
    assert rig.bridge.peer_for(sid) is new_peer
    assert old_peer.superseded and old_client.state is ConnectionState.CLOSED
    assert old_client.close_code == CloseCode.SESSION_ENDED
    assert old_client.close_reason == "session resumed on another connection"
    # the superseded connection's close touches nothing: the session lives on elsewhere
    assert rig.manager.named("delete_session") == []
    assert [c for c in rig.manager.named("update_session") if c[2] is State.DISCONNECTING] == []


async def test_a_resume_from_a_users_last_free_slot_replaces_the_connection_it_supersedes(
        ) -> None:
    rig = Rig()  # max_connections_per_user=2
    _first, held = await connect(rig, Credentials(user_id="alice"), addr=("10.0.0.2", 40001))
    await connect(rig, Credentials(user_id="alice"), addr=("10.0.0.2", 40002))
    # alice is at her quota; resuming the first connection's session takes that one's place
    resume = (uuid.UUID(str(held.session_id)).bytes, "the-token")
    client, peer = await connect(rig, Credentials(user_id="alice", resume=resume),
                                 addr=("10.0.0.3", 41000))
    assert client.state is ConnectionState.ESTABLISHED
    assert rig.bridge.peer_for(str(held.session_id)) is peer and held.superseded
    assert rig.counters.rejected == {}


async def test_a_resume_gives_back_the_superseded_connections_slot_at_once() -> None:
    """When the resumed connection is bound, the one it superseded (still closing) no longer
    counts: alice holds one slot, not two, so her next connection is not refused while the
    old one's close completes."""
    rig = Rig()  # max_connections_per_user=2
    _old, old_peer = await connect(rig, Credentials(user_id="alice"))
    resume = (uuid.UUID(str(old_peer.session_id)).bytes, "the-token")
    held: dict[str, int] = {}

    def at_bind(verb: str, peer: Peer) -> None:
        if verb == "bind":
            held["slots"] = rig.bridge.user_connections.count("alice")
            held["old closed"] = old_peer.conn.state is ConnectionState.CLOSED

    rig.port.watch = at_bind
    await connect(rig, Credentials(user_id="alice", resume=resume), addr=("10.0.0.3", 41000))
    assert held == {"slots": 1, "old closed": False}


async def test_a_resume_of_a_session_no_connection_holds_is_accepted() -> None:
    rig = Rig()
    orphan = _session("alice", str(uuid.uuid4()))  # its connection is gone
    rig.manager.sessions[orphan.session_id] = orphan
    resume = (uuid.UUID(orphan.session_id).bytes, "the-token")
    client, peer = await connect(rig, Credentials(user_id="alice", resume=resume))
    assert client.state is ConnectionState.ESTABLISHED
    assert events_of(rig, CLIENT_ADDR, HandshakeCompleted)[0].resumed
    assert rig.bridge.peer_for(orphan.session_id) is peer


async def test_a_resume_counts_against_the_users_connection_quota() -> None:
    rig = Rig()  # max_connections_per_user=2
    for port in (40001, 40002):
        await connect(rig, Credentials(user_id="alice"), addr=("10.0.0.2", port))
    # a session no live connection holds (its connection is gone): nothing to replace
    orphan = _session("alice", str(uuid.uuid4()))
    rig.manager.sessions[orphan.session_id] = orphan
    resume = (uuid.UUID(orphan.session_id).bytes, "the-token")
    await connect(rig, Credentials(user_id="alice", resume=resume), addr=("10.0.0.3", 41000))
    assert [e.code for e in events_of(rig, ("10.0.0.3", 41000), HandshakeRejected)] == [
        CloseCode.TOO_MANY_CONNECTIONS]
    assert rig.manager.named("resume_session") == []


async def test_a_resume_the_store_refuses_after_the_check_is_refused_and_frees_its_slot() -> None:
    rig = Rig()  # max_connections_per_user=2
    _first, held = await connect(rig, Credentials(user_id="alice"))
    sid = str(held.session_id)
    rig.manager.fail["resume_session"] = SessionExpired(f"session expired: {sid}")
    resume = (uuid.UUID(sid).bytes, "the-token")
    with capture_logs() as logs:
        await connect(rig, Credentials(user_id="alice", resume=resume), addr=("10.0.0.3", 41000))
    assert [e.code for e in events_of(rig, ("10.0.0.3", 41000), HandshakeRejected)] == [
        CloseCode.BAD_RESUME]
    assert [(e["session_id"], e["reason"]) for e in logs if e["event"] == "resume refused"] == [
        (sid, f"session expired: {sid}")]
    # the refused connection's quota slot is free again: alice's second connection fits
    second, _ = await connect(rig, Credentials(user_id="alice"), addr=("10.0.0.4", 42000))
    assert second.state is ConnectionState.ESTABLISHED


async def test_a_resume_the_store_refuses_frees_its_slot_before_its_close() -> None:
    """The slot the refused resume took is given back by the refusal itself, not later by
    the connection's close: while its REJECT leaves, alice holds one slot, her first."""
    rig = Rig()
    await connect(rig, Credentials(user_id="alice"))
    sid = next(iter(rig.manager.sessions))
    rig.manager.fail["resume_session"] = SessionExpired(f"session expired: {sid}")
    held: list[int] = []
    rig.port.watch = lambda verb, _peer: held.append(rig.bridge.user_connections.count("alice"))
    await connect(rig, Credentials(user_id="alice", resume=(uuid.UUID(sid).bytes, "t")),
                  addr=("10.0.0.3", 41000))
    assert held[0] == 1  # at the REJECT's flush


async def test_a_refused_resume_fails_or_falls_back_to_a_new_session() -> None:
    rig = Rig()
    rig.manager.fail["check_resume"] = InvalidToken("bad token")
    resume = (uuid.uuid4().bytes, "wrong")
    with capture_logs() as logs:
        client, _ = await connect(rig, Credentials(user_id="alice", resume=resume))
    assert [(e.code, e.reason) for e in events_of(rig, CLIENT_ADDR, HandshakeRejected)] == [
        (CloseCode.BAD_RESUME, "session cannot be resumed")]
    assert [(e["session_id"], e["reason"]) for e in logs if e["event"] == "resume refused"] == [
        (str(uuid.UUID(bytes=resume[0])), "bad token")]
    assert rig.manager.named("resume_session") == []  # refused before anything is written
    other = ("10.0.0.5", 40500)
    client, _peer = await connect(
        rig, Credentials(user_id="alice", resume=resume, resume_fallback=True), addr=other)
    assert client.state is ConnectionState.ESTABLISHED
    assert not events_of(rig, other, HandshakeCompleted)[0].resumed
    assert len(rig.manager.named("create_session")) == 1


async def test_a_client_that_gave_up_during_authentication_leaves_no_session() -> None:
    rig = Rig()
    gate = hold_heartbeats(rig)
    client = rig.add_client(Credentials(user_id="alice"))
    rig.run(until=rig.now + 0.2)
    server_conn = next(iter(rig.server.connections.values()))
    server_conn._terminate(CloseCode.HANDSHAKE_TIMEOUT, "gave up", by_peer=False)
    rig._drain_server(server_conn)
    gate.set()
    await rig.settle()
    created = rig.manager.named("create_session")
    assert len(created) == 1
    assert rig.manager.named("delete_session")[0][2] == "handshake abandoned"
    assert rig.port.bound == [] and client.state is not ConnectionState.ESTABLISHED


async def test_a_client_closing_during_authentication_gives_its_slot_back_at_once() -> None:
    """A connection that closed while its session was being made frees its user's slot as
    soon as the authentication finds it gone, not later, when the bridge handles its close
    event (here not even handled yet)."""
    rig = Rig()
    gate = hold_heartbeats(rig)
    rig.add_client(Credentials(user_id="alice"))
    rig.run(until=rig.now + 0.2)
    server_conn = next(iter(rig.server.connections.values()))
    for _ in range(10):  # the bridge's task runs up to the heartbeat it waits on
        await asyncio.sleep(0)
    assert rig.bridge.user_connections.count("alice") == 1
    server_conn.close("going away")  # not accepted yet: it ends at once
    gate.set()
    await asyncio.gather(*rig.port.tasks)  # the bridge's task ends; its events wait undrained
    assert server_conn.state is ConnectionState.CLOSED
    assert rig.bridge.user_connections.count("alice") == 0


# ----------------------------------------------------------------- carry-over across a resume


def _add_client(rig: Rig, credentials: Credentials, addr: tuple[str, int], *,
                carryover: Carryover | None = None) -> Connection:
    """A client asking for carry-over (and continuing `carryover`'s streams, on a resume),
    added as `Simulation.add_client` adds one."""
    conn = Connection.client(SERVER_ADDR, credentials, rig.now, carry=True, carryover=carryover)
    rig.clients[addr] = conn
    rig.client_events[addr] = []
    rig.flush()
    return conn


async def _carrying(rig: Rig) -> tuple[Connection, Peer, Credentials]:
    """alice's first connection, asking for carry-over (the keep flag), with a message of
    the server's still on its way; and the credentials that resume her session."""
    client = _add_client(rig, Credentials(user_id="alice"), CLIENT_ADDR)
    await rig.settle()
    peer = rig.peers[client.connection_id]
    assert peer.conn.carries
    peer.conn.send(b"owed to alice", 0)
    sid = str(peer.session_id)
    return client, peer, Credentials(user_id="alice", resume=(uuid.UUID(sid).bytes, "the-token"))


async def test_a_continuing_resume_takes_the_live_connections_carry_over() -> None:
    """A resume that asks to continue (delivery marks) supersedes the live connection and
    takes its carry-over at once: SESSION says so (resumed = 2), nothing is kept behind."""
    rig = Rig()
    old, old_peer, resume = await _carrying(rig)
    sid = str(old_peer.session_id)
    _add_client(rig, resume, ("10.0.0.3", 41000), carryover=old.carryover())
    await rig.settle()
    (completed,) = events_of(rig, ("10.0.0.3", 41000), HandshakeCompleted)
    assert completed.resumed and completed.carried
    assert rig.bridge.carryovers.take(sid) is None  # handed over, not kept


async def test_a_continuing_resume_after_the_loss_takes_the_kept_carry_over() -> None:
    """The old connection was lost first: its carry-over was kept with the session, and the
    resume takes it back."""
    rig = Rig()
    old, old_peer, resume = await _carrying(rig)
    sid = str(old_peer.session_id)
    old_peer.conn._terminate(CloseCode.IDLE_TIMEOUT, "idle timeout", by_peer=False)
    rig._drain_server(old_peer.conn)
    assert sid in rig.bridge.carryovers.retained
    _add_client(rig, resume, ("10.0.0.3", 41000), carryover=old.carryover())
    await rig.settle()
    (completed,) = events_of(rig, ("10.0.0.3", 41000), HandshakeCompleted)
    assert completed.resumed and completed.carried
    assert sid not in rig.bridge.carryovers.retained


async def test_a_resume_abandoned_during_authentication_keeps_what_it_took() -> None:
    """The resuming client gives up while the session is being made: the carry-over it took
    from the live connection is kept with the session for the next resume, not lost."""
    rig = Rig()
    old, old_peer, resume = await _carrying(rig)
    sid = str(old_peer.session_id)
    gate = hold_heartbeats(rig)
    _add_client(rig, resume, ("10.0.0.3", 41000), carryover=old.carryover())
    rig.run(until=rig.now + 0.2)
    for _ in range(10):  # the bridge's task runs up to the heartbeat it waits on
        await asyncio.sleep(0)
    (resuming,) = [c for c in rig.server.connections.values() if c is not old_peer.conn
                   and c.state is not ConnectionState.CLOSED]
    resuming._terminate(CloseCode.HANDSHAKE_TIMEOUT, "gave up", by_peer=False)
    rig._drain_server(resuming)
    gate.set()
    await rig.settle()
    assert sid in rig.bridge.carryovers.retained
    assert rig.bridge.carryovers.take(sid) is not None


# ----------------------------------------------------------------- keepalives


async def test_a_keepalive_is_answered_with_the_sessions_remaining_time() -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    client.send_keepalive()
    await rig.settle()
    answered = events_of(rig, CLIENT_ADDR, KeepaliveAcknowledged)
    assert [e.remaining for e in answered] == [pytest.approx(1234.0)]
    assert rig.manager.named("heartbeat_nowait") == [("heartbeat_nowait", peer.session_id)]
    assert rig.counters.heartbeats == 1 and peer.last_keepalive == pytest.approx(
        peer.conn.last_received_at)


async def test_a_keepalive_wakes_an_idle_connection_and_its_upkeep_resumes() -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    assert rig.bridge.check(peer, peer.last_keepalive + 3 * KEEPALIVE + 1) is None
    assert peer.idle
    client.send_keepalive()
    await rig.settle()
    assert peer.idle is False  # the heartbeat woke the session: looks are due again
    assert rig.bridge.check(peer, peer.last_keepalive) == peer.last_keepalive + 3 * KEEPALIVE


async def test_a_keepalive_of_a_connection_without_a_session_is_answered_without_a_time() -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    peer.session_id = None  # a connection the bridge holds no session for
    sent = client.send_keepalive()
    await rig.settle()
    answered = events_of(rig, CLIENT_ADDR, KeepaliveAcknowledged)
    assert [(e.keepalive_id, e.remaining) for e in answered] == [(sent, None)]
    assert rig.manager.named("heartbeat_nowait") == []  # no session to ask about


async def test_a_keepalive_the_store_cannot_answer_at_once_is_answered_after_awaiting() -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    rig.manager.remaining = None  # e.g. an etcd lease refresh is due
    client.send_keepalive()
    await rig.settle()
    assert [e.remaining for e in events_of(rig, CLIENT_ADDR, KeepaliveAcknowledged)] == [
        pytest.approx(1800.0)]
    # awaited without trying the path without I/O a second time
    assert rig.manager.named("heartbeat_with_io") == [("heartbeat_with_io", peer.session_id)]
    assert rig.manager.named("heartbeat_nowait")[-1] == ("heartbeat_nowait", peer.session_id)
    assert peer in rig.port.flushed  # the late answer is flushed by the task


@pytest.mark.parametrize("path", ["heartbeat_nowait", "heartbeat_with_io"])
@pytest.mark.parametrize("gone", [SessionNotFound("deleted elsewhere"),
                                  SessionExpired("session expired: elsewhere")])
async def test_a_keepalive_for_a_session_that_is_gone_ends_the_connection(
        path: str, gone: SessionError) -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    if path == "heartbeat_with_io":
        rig.manager.remaining = None  # the store must be awaited: the session is gone there
    rig.manager.fail[path] = gone
    rig.port.flushed.clear()
    client.send_keepalive()
    await rig.settle()
    assert client.state is ConnectionState.CLOSED
    assert client.close_code == CloseCode.SESSION_ENDED
    assert client.close_reason == f"session ended: {gone}"
    assert peer.session_id is None
    assert peer in rig.port.flushed  # the CLOSE leaves at once, not at the next upkeep


@pytest.mark.parametrize("path", ["heartbeat_nowait", "heartbeat_with_io"])
async def test_a_keepalive_the_store_fails_is_logged_and_the_connection_kept(path: str) -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    sid = peer.session_id
    if path == "heartbeat_with_io":
        rig.manager.remaining = None
    rig.manager.fail[path] = StoreUnavailable("etcd unreachable")
    with capture_logs() as logs:
        client.send_keepalive()
        await rig.settle()
    assert client.state is ConnectionState.ESTABLISHED and peer.session_id == sid
    assert [(e["event"], e["log_level"], e["connection_id"], e["error"]) for e in logs
            if e["event"] == "heartbeat failed"] == [
        ("heartbeat failed", "warning", peer.connection_id, "etcd unreachable")]


# ----------------------------------------------------------------- messages, migration, sweep


async def test_a_message_wakes_an_idle_session_and_the_upkeep_puts_it_to_sleep() -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    sid = peer.session_id
    idle_at = peer.last_keepalive + 3 * KEEPALIVE
    # not yet idle: the next look is due when it would be
    assert rig.bridge.check(peer, rig.now + 3 * KEEPALIVE - 1) == idle_at
    await rig.settle(0.1)
    assert not peer.idle
    assert rig.bridge.check(peer, idle_at) == idle_at  # three intervals exactly: not yet
    assert not peer.idle
    assert rig.bridge.check(peer, idle_at + 1) is None  # idle: nothing left to wait for
    await rig.settle(0.1)
    assert peer.idle
    assert ("update_session", sid, State.IDLE) in rig.manager.calls
    # the looks also recorded the connection's statistics, once
    assert [c[1] for c in rig.manager.named("record_stats")] == [sid]
    client.send(b"back")
    await rig.settle()
    assert not peer.idle and ("update_session", sid, State.ACTIVE) in rig.manager.calls
    assert rig.counters.messages_received == 1


async def test_the_upkeep_records_statistics_only_when_something_arrived() -> None:
    rig = Rig()
    _client, peer = await connect(rig, Credentials(user_id="alice"))
    rig.bridge.check(peer, rig.now)
    rig.bridge.check(peer, rig.now)
    await rig.settle(0.1)
    assert len(rig.manager.named("record_stats")) == 1
    _client.send(b"news")  # something arrived: the next look records again
    await rig.settle(0.1)
    rig.bridge.check(peer, rig.now)
    await rig.settle(0.1)
    assert len(rig.manager.named("record_stats")) == 2


async def test_many_sessions_turning_idle_share_one_task_that_yields_between_batches() -> None:
    rig = Rig()
    peers = []
    for i in range(3):
        _client, peer = await connect(rig, Credentials(user_id=f"user{i}"),
                                      addr=("10.0.0.2", 40000 + i))
        peers.append(peer)
    tasks_before = len(rig.port.tasks)
    # stand-ins for many: the same three sessions, looked at as if thousands were due
    late = max(p.last_keepalive for p in peers) + 3 * KEEPALIVE + 1
    for peer in peers:
        rig.bridge.check(peer, late)
    assert len(rig.port.tasks) == tasks_before + 1  # one task for all of them
    await rig.settle(0.1)
    idle = {c[1] for c in rig.manager.named("update_session") if c[2] is State.IDLE}
    assert idle == {p.session_id for p in peers}


@pytest.mark.parametrize(("queued", "yields"), [(UPDATE_BATCH - 1, 0), (UPDATE_BATCH, 1)])
async def test_the_update_task_yields_once_per_full_batch(
        monkeypatch: pytest.MonkeyPatch, queued: int, yields: int) -> None:
    rig = Rig()
    for _ in range(queued):
        session = _session("alice", str(uuid.uuid4()))
        rig.manager.sessions[session.session_id] = session
        rig.bridge._set_state(session.session_id, State.IDLE)
    slept: list[float] = []
    sleep = asyncio.sleep

    async def counting_sleep(delay: float) -> None:
        slept.append(delay)
        await sleep(delay)

    monkeypatch.setattr(asyncio, "sleep", counting_sleep)
    await asyncio.gather(*rig.port.tasks)
    assert len(rig.manager.named("update_session")) == queued
    assert slept == [0] * yields


async def test_updates_the_store_refuses_are_skipped_and_the_rest_applied() -> None:
    rig = Rig()
    _client, peer = await connect(rig, Credentials(user_id="alice"))
    sid = str(peer.session_id)
    rig.manager.fail["update_session"] = SessionNotFound(f"session not found: {sid}")
    rig.manager.fail["record_stats"] = StoreUnavailable("etcd unreachable")
    with capture_logs() as logs:
        rig.bridge.check(peer, peer.last_keepalive + 3 * KEEPALIVE + 1)  # IDLE, and stats
        await rig.settle(0.1)
    assert [c[0] for c in rig.manager.calls[-2:]] == ["update_session", "record_stats"]
    assert [(e["session_id"], e["error"]) for e in logs
            if e["event"] == "session update skipped"] == [(sid, f"session not found: {sid}")]
    assert not rig.bridge._applying  # the task ended cleanly: the next change starts another


async def test_a_state_change_queued_for_a_session_is_dropped_when_the_session_ends() -> None:
    rig = Rig()
    _client, peer = await connect(rig, Credentials(user_id="alice"))
    sid = peer.session_id
    assert sid is not None
    rig.bridge._set_state(sid, State.DISCONNECTING)
    rig.bridge._set_state(sid, State.IDLE)  # the latest one per session wins
    assert rig.bridge._states == {sid: State.IDLE}
    rig.bridge.on_session_ended(rig.manager.sessions[sid], "deleted")
    assert rig.bridge._states == {}


async def test_a_state_change_queued_for_a_session_is_dropped_when_its_client_logs_out() -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    sid = str(peer.session_id)
    rig.bridge._states[sid] = State.IDLE  # queued, the applier not there yet
    client.close("bye")
    rig.flush()
    await rig.settle()
    assert rig.manager.named("delete_session") == [("delete_session", sid, "client closed")]
    assert [c for c in rig.manager.named("update_session") if c[1] == sid] == []


async def test_a_validated_migration_moves_the_sessions_client_address() -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    new_addr = ("10.0.0.9", 45000)
    rig.clients[new_addr] = rig.clients.pop(CLIENT_ADDR)
    rig.client_events[new_addr] = rig.client_events.pop(CLIENT_ADDR)
    client.send(b"from the new address")
    rig.flush()
    await rig.settle()
    assert any(isinstance(e, PathMigrated) for _, e in rig.server.events)
    assert rig.manager.named("update_client_address") == [
        ("update_client_address", peer.session_id, "10.0.0.9", 45000)]


async def test_a_migration_the_store_cannot_record_is_logged_and_the_connection_kept() -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    rig.manager.fail["update_client_address"] = StoreUnavailable("etcd unreachable")
    new_addr = ("10.0.0.9", 45000)
    rig.clients[new_addr] = rig.clients.pop(CLIENT_ADDR)
    rig.client_events[new_addr] = rig.client_events.pop(CLIENT_ADDR)
    with capture_logs() as logs:
        client.send(b"from the new address")
        rig.flush()
        await rig.settle()
    assert client.state is ConnectionState.ESTABLISHED
    assert [(e["log_level"], e["session_id"], e["error"]) for e in logs
            if e["event"] == "address update failed"] == [
        ("warning", peer.session_id, "etcd unreachable")]


# ----------------------------------------------------------------- the end of a connection


async def test_a_client_logout_deletes_its_session() -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    sid = peer.session_id
    with capture_logs() as logs:
        client.close("bye")
        rig.flush()
        await rig.settle()
    assert rig.manager.named("delete_session") == [("delete_session", sid, "client closed")]
    assert rig.bridge.peer_for(str(sid)) is None
    assert len(rig.manager.named("record_stats")) == 1  # the final statistics, once
    (closed,) = [e for e in logs if e["event"] == "connection closed"]
    assert (closed["connection_id"], closed["session_id"], closed["reason"],
            closed["by_peer"]) == (peer.connection_id, sid, "bye", True)


async def test_a_logout_whose_session_is_already_gone_is_quietly_done() -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    sid = peer.session_id
    rig.manager.fail["delete_session"] = SessionNotFound("expired meanwhile")
    client.close("bye")
    rig.flush()
    await rig.settle()  # gathers the bridge's tasks: the delete's task raised nothing
    assert rig.manager.named("delete_session") == [("delete_session", sid, "client closed")]
    assert rig.bridge.peer_for(str(sid)) is None


@pytest.mark.parametrize(("code", "kept"), [
    (CloseCode.IDLE_TIMEOUT, True), (CloseCode.SERVER_SHUTDOWN, True),
    (CloseCode.STALLED, True), (CloseCode.SESSION_ENDED, False)])
async def test_any_other_close_keeps_the_session_resumable(code: CloseCode, kept: bool) -> None:
    rig = Rig()
    _client, peer = await connect(rig, Credentials(user_id="alice"))
    sid = peer.session_id
    rig.bridge.handle(peer, ConnectionClosed(code, "whatever", by_peer=False))
    await rig.settle(0.1)
    assert rig.manager.named("delete_session") == []
    assert (("update_session", sid, State.DISCONNECTING) in rig.manager.calls) is kept
    assert rig.bridge.peer_for(str(sid)) is None


@pytest.mark.parametrize(("code", "by_peer"), [
    (CloseCode.NORMAL, False),  # our own normal close (the application's): not a logout
    (CloseCode.PROTOCOL_VIOLATION, True),  # the client closing with an error: not a logout
])
async def test_only_the_clients_normal_close_is_a_logout(code: CloseCode, by_peer: bool) -> None:
    rig = Rig()
    _client, peer = await connect(rig, Credentials(user_id="alice"))
    sid = peer.session_id
    rig.bridge.handle(peer, ConnectionClosed(code, "whatever", by_peer=by_peer))
    await rig.settle(0.1)
    assert rig.manager.named("delete_session") == []
    assert ("update_session", sid, State.DISCONNECTING) in rig.manager.calls


async def test_a_closed_connection_frees_its_users_quota_slot() -> None:
    rig = Rig()  # max_connections_per_user=2
    first, _ = await connect(rig, Credentials(user_id="alice"), addr=("10.0.0.2", 40001))
    await connect(rig, Credentials(user_id="alice"), addr=("10.0.0.2", 40002))
    first.close("bye")
    rig.flush()
    await rig.settle()
    third, _ = await connect(rig, Credentials(user_id="alice"), addr=("10.0.0.2", 40003))
    assert third.state is ConnectionState.ESTABLISHED
    assert rig.counters.rejected == {}


async def test_a_session_ended_in_the_manager_closes_its_connection_with_the_reason() -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    session = rig.manager.sessions[str(peer.session_id)]
    rig.port.flushed.clear()
    rig.bridge.on_session_ended(session, "expired")
    assert rig.port.flushed == [peer]  # the CLOSE leaves at once
    rig.flush()
    await rig.settle()
    assert client.state is ConnectionState.CLOSED
    assert client.close_code == CloseCode.SESSION_ENDED and client.close_reason == "session expired"
    assert peer.session_id is None


async def test_a_peer_still_authenticating_gets_no_session_calls_when_it_closes() -> None:
    rig = Rig()
    rig.manager.heartbeat = _never  # type: ignore[method-assign]  # authentication hangs
    rig.add_client(Credentials(user_id="alice"))
    rig.run(until=rig.now + 0.2)
    await asyncio.sleep(0)
    conn = next(iter(rig.server.connections.values()))
    peer = rig.peer(conn)
    assert peer.session_id is None
    rig.bridge.handle(peer, ConnectionClosed(CloseCode.IDLE_TIMEOUT, "idle", False))
    assert [c[0] for c in rig.manager.calls] == ["create_session"]
    for task in rig.port.tasks:
        task.cancel()


async def _never(session_id: str) -> float:
    await asyncio.Event().wait()
    return 0.0


def test_the_table_covers_every_event_type() -> None:
    """Every event a server connection can raise has a row (or is the application's)."""
    import quantum.events as events

    server_side = {events.AuthenticationRequested, events.KeepaliveReceived,
                   events.MessageReceived, events.PathMigrated, events.ConnectionClosed,
                   events.SessionConfirmed}
    app_side = {events.SendBufferDrained}
    client_side = {events.HandshakeCompleted, events.HandshakeRejected,
                   events.KeepaliveAcknowledged, events.CarryoverLost}
    declared = {obj for obj in vars(events).values()
                if isinstance(obj, type) and issubclass(obj, events.Event)
                and obj is not events.Event}
    assert declared == server_side | app_side | client_side
    assert AuthenticationRequested in server_side

"""`server.SessionBridge` at the edges tests/test_bridge.py leaves open (its mutation survivors).

Driven the same way (a real connection over the simulated network, the fake manager and the
fake port of tests/test_bridge.py), this file proves:

* the bridge's own carry-over store (no `carryovers` given) holds at most 1 MiB per session
  and 256 MiB in all;
* a kept carry-over the resuming connection cannot restore (over its receive budget) is
  dropped with a warning naming the session and the error, and the resume is still accepted:
  same session, the rotated token, the session's remaining time, resumed, not carried;
* a continuing resume that falls back to a new session carries nothing;
* a lost connection's carry-over is kept until its session would expire: the last
  keepalive's wall-clock time plus the session's own timeout (or the manager's default);
* the SESSION acknowledgement confirms the rotated token once, and only a resume's;
  a confirmation the store refuses is dropped quietly;
* a keepalive answered after awaiting the store flushes its own connection;
* a session ended in the manager drops its kept carry-over.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import pytest
from structlog.testing import capture_logs

from quantum.carryover import Carryover, InboundStream
from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.errors import CloseCode
from quantum.events import (
    CarryoverLost,
    ConnectionClosed,
    HandshakeCompleted,
    KeepaliveAcknowledged,
    SessionConfirmed,
)
from quantum.handshake import Credentials
from quantum.limits import MAX_MESSAGE_SIZE
from quantum.simulation import CLIENT_ADDR, SERVER_ADDR
from server import Peer
from session.errors import SessionNotFound
from session.model import Session
from tests.test_bridge import Rig, connect, events_of

MIB = 1 << 20
RESUMED_AT = ("10.0.0.3", 41000)
#: no automatic keepalives, and no idle close within the times these tests let pass
QUIET = QuantumConfiguration(keepalive_interval=None, idle_timeout=600.0)


def _carrying_client(rig: Rig, credentials: Credentials, addr: tuple[str, int], *,
                     carryover: Carryover | None = None) -> Connection:
    """A client asking for carry-over, sending keepalives only when told, added as
    `Simulation.add_client` adds one."""
    conn = Connection.client(SERVER_ADDR, credentials, rig.now, configuration=QUIET,
                             carry=True, carryover=carryover)
    rig.clients[addr] = conn
    vars(rig)["client_events"][addr] = []  # the Simulation's list (Rig's method shadows it)
    rig.flush()
    return conn


#: what a client's lost connection left: one receiving stream, so that losing it is news
LEFT = Carryover((), (), (InboundStream(0, 0, 5),))


def _unrestorable() -> Carryover:
    """A carry-over that decodes (its state is one a receiver can be in) but is over the
    receive budget of a connection (4 MiB of waiting messages, counted with their cost),
    while its blob stays well under the per-session cap: 43,691 empty waiting messages."""
    count = 4 * MAX_MESSAGE_SIZE // 96 + 1  # each held at 96 bytes (channels._READY_COST)
    ready = tuple((message_id, b"") for message_id in range(1, count + 1))
    return Carryover((), (), (InboundStream(0, 0, 0, (), ready, ()),))


# ------------------------------------------------------------ the bridge's own carry-over store


async def test_the_default_carry_over_store_holds_one_mib_per_session_and_256_mib_in_all(
        ) -> None:
    rig = Rig()  # its bridge is made without `carryovers`: the bridge's own store
    retained = rig.bridge.carryovers.retained
    expires_at = time.time() + 60
    assert not retained.put("over", bytes(MIB + 1), expires_at)  # one byte over the cap
    assert "over" not in retained
    blob = bytes(MIB)  # one object: the store holds it without copying (bytes(bytes) is it)
    for n in range(256):
        assert retained.put(f"s{n}", blob, expires_at)
    assert retained.total_bytes == 256 * MIB
    assert not retained.put("one-more", b"x", expires_at)  # the total is full
    assert len(retained) == 256


async def _lost_carrying_connection(rig: Rig) -> str:
    """alice's connection, asking for carry-over, lost (idle timeout): its session's id."""
    client = _carrying_client(rig, Credentials(user_id="alice"), CLIENT_ADDR)
    await rig.settle()
    peer = rig.peers[client.connection_id]
    rig.bridge.handle(peer, ConnectionClosed(CloseCode.IDLE_TIMEOUT, "idle timeout", False))
    return str(peer.session_id)


# ------------------------------------------------------------ carry-over at the resume


async def test_a_carry_over_the_resume_cannot_restore_is_dropped_and_the_resume_accepted(
        ) -> None:
    rig = Rig()
    sid = await _lost_carrying_connection(rig)
    # what the lost connection left, as a restarted server could have read it back
    assert rig.bridge.carryovers.keep_carryover(sid, _unrestorable(), time.time() + 600)
    resume = Credentials(user_id="alice", resume=(uuid.UUID(sid).bytes, "the-token"))
    with capture_logs() as logs:
        new = _carrying_client(rig, resume, RESUMED_AT, carryover=LEFT)
        await rig.settle()
    dropped = [e for e in logs if e.get("session_id") == sid and e["log_level"] == "warning"]
    assert dropped == [{
        "event": "carry-over dropped: it cannot be restored", "log_level": "warning",
        "logger": "quantum.server", "session_id": sid,
        "error": "carry-over cannot be restored: peer exceeded the receive buffer bound of "
                 f"{4 * MAX_MESSAGE_SIZE} bytes (channel 0, message 0)"}]
    (established,) = [e for e in logs if e["event"] == "connection established"]
    assert (established["resumed"], established["carried"]) == (True, False)
    # accepted all the same: the same session, the rotated token, its time; streams restart
    assert new.state is ConnectionState.ESTABLISHED
    (completed,) = events_of(rig, RESUMED_AT, HandshakeCompleted)
    assert uuid.UUID(bytes=completed.session_id) == uuid.UUID(sid)
    assert completed.session_token == "rotated-" + sid[:8]
    assert completed.remaining == pytest.approx(1800.0)
    assert (completed.resumed, completed.carried) == (True, False)
    assert [e.reason for e in events_of(rig, RESUMED_AT, CarryoverLost)] == [
        "the server kept nothing of the lost connection"]
    assert sid not in rig.bridge.carryovers.retained  # taken, not kept for another try


async def test_a_continuing_resume_that_falls_back_to_a_new_session_carries_nothing() -> None:
    rig = Rig()
    rig.manager.fail["check_resume"] = SessionNotFound("no such session")
    resume = Credentials(user_id="alice", resume=(uuid.uuid4().bytes, "stale"),
                         resume_fallback=True)
    with capture_logs() as logs:
        client = _carrying_client(rig, resume, CLIENT_ADDR, carryover=LEFT)
        await rig.settle()
    assert client.state is ConnectionState.ESTABLISHED
    (established,) = [e for e in logs if e["event"] == "connection established"]
    assert (established["resumed"], established["carried"]) == (False, False)
    (completed,) = events_of(rig, CLIENT_ADDR, HandshakeCompleted)
    assert (completed.resumed, completed.carried) == (False, False)
    assert [e.reason for e in events_of(rig, CLIENT_ADDR, CarryoverLost)] == [
        "the session could not be resumed: a new one began"]


# ------------------------------------------------------------ a lost connection's carry-over


@pytest.mark.parametrize(("own_timeout", "kept_for"), [(None, 1800.0), (900.0, 900.0)])
async def test_a_lost_connections_carry_over_is_kept_until_its_session_would_expire(
        own_timeout: float | None, kept_for: float) -> None:
    rig = Rig()
    create = rig.manager.create_session

    async def with_timeout(*args: Any, **kwargs: Any) -> tuple[Session, str]:
        session, token = await create(*args, **kwargs)
        session.timeout = own_timeout  # the session's own timeout (None: the default's)
        return session, token

    rig.manager.create_session = with_timeout  # type: ignore[method-assign]
    client = _carrying_client(rig, Credentials(user_id="alice"), CLIENT_ADDR)
    await rig.settle()
    peer: Peer = rig.peers[client.connection_id]
    assert peer.session_timeout == kept_for
    rig.run(until=rig.now + 100)
    client.send_keepalive()
    await rig.settle()
    assert len(events_of(rig, CLIENT_ADDR, KeepaliveAcknowledged)) == 1
    last = peer.last_keepalive
    assert last > 100
    rig.run(until=rig.now + 250)  # lost 250 s after its last keepalive
    since = rig.now - last
    assert since > 249
    before = time.time()
    rig.bridge.handle(peer, ConnectionClosed(CloseCode.IDLE_TIMEOUT, "idle timeout", False))
    after = time.time()
    ((sid, _blob, expires_at),) = rig.bridge.carryovers.retained.items()
    assert sid == peer.session_id
    # the wall-clock time of the last keepalive, plus the session's timeout
    assert before - since + kept_for - 1e-3 <= expires_at <= after - since + kept_for + 1e-3


async def test_a_session_ended_in_the_manager_drops_its_kept_carry_over() -> None:
    rig = Rig()
    sid = await _lost_carrying_connection(rig)
    assert sid in rig.bridge.carryovers.retained
    rig.bridge.on_session_ended(rig.manager.sessions[sid], "expired")
    assert sid not in rig.bridge.carryovers.retained
    assert rig.bridge.carryovers.take(sid) is None


# ------------------------------------------------------------ the rotated token's confirmation


async def test_the_session_acknowledgement_confirms_the_rotated_token_once() -> None:
    rig = Rig()
    _old, old_peer = await connect(rig, Credentials(user_id="alice"))
    sid = str(old_peer.session_id)
    # a connection that resumed nothing: its acknowledgement has no token to confirm
    rig.bridge.handle(old_peer, SessionConfirmed())
    await rig.settle(0.1)
    assert rig.manager.named("confirm_token") == []
    resume = Credentials(user_id="alice", resume=(uuid.UUID(sid).bytes, "the-token"))
    _new, peer = await connect(rig, resume, addr=RESUMED_AT)
    rotated = hashlib.sha256(b"rotated-" + sid[:8].encode()).digest()
    assert rig.manager.named("confirm_token") == [("confirm_token", sid, rotated)]
    assert peer.pending_token_hash == b""  # confirmed: nothing is pending any more
    rig.bridge.handle(peer, SessionConfirmed())  # a second acknowledgement: nothing to do
    await rig.settle(0.1)
    assert rig.manager.named("confirm_token") == [("confirm_token", sid, rotated)]


async def test_a_token_confirmation_the_store_refuses_is_dropped_quietly() -> None:
    rig = Rig()
    _old, old_peer = await connect(rig, Credentials(user_id="alice"))
    sid = str(old_peer.session_id)
    refused: list[str] = []

    async def confirm_token(session_id: str, token_hash: bytes) -> bool:
        refused.append(session_id)
        raise SessionNotFound(f"session {session_id} not found")

    rig.manager.confirm_token = confirm_token  # type: ignore[method-assign]
    resume = Credentials(user_id="alice", resume=(uuid.UUID(sid).bytes, "the-token"))
    new, _peer = await connect(rig, resume, addr=RESUMED_AT)  # awaits every bridge task
    assert refused == [sid]  # asked, refused, and the refusal went no further
    assert all(task.exception() is None for task in rig.port.tasks)
    assert new.state is ConnectionState.ESTABLISHED


# ------------------------------------------------------------ keepalives


async def test_a_keepalive_answered_after_awaiting_flushes_its_own_connection() -> None:
    rig = Rig()
    client, peer = await connect(rig, Credentials(user_id="alice"))
    rig.manager.remaining = None  # the store must be awaited
    rig.port.flushed.clear()
    client.send_keepalive()
    await rig.settle()
    assert rig.port.flushed == [peer]  # the late answer leaves at once, on its connection
    assert [e.remaining for e in events_of(rig, CLIENT_ADDR, KeepaliveAcknowledged)] == [
        pytest.approx(1800.0)]

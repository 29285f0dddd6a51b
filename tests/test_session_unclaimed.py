"""What the network API needs of the session layer, on both stores and in the manager:
sessions no connection holds yet, a timeout per session, wake-ups reported by touches, ping.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from session.errors import InvalidSession, InvalidToken, SessionNotFound
from session.etcd import decode_session, encode_session
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.model import Session, SessionFilter, State, Stats, new_session_id
from session.store import Store
from tests.conftest import FakeClock

T0 = datetime(2025, 11, 7, 14, 30, tzinfo=UTC)


def unclaimed(user: str = "alice", **overrides: Any) -> Session:
    fields: dict[str, Any] = dict(
        session_id=new_session_id(), user_id=user, connection_id="", client_ip="0.0.0.0",
        client_port=0, state=State.CONNECTING, created_at=T0, last_active_at=T0,
        expires_at=T0 + timedelta(seconds=60), metadata={"room": "1"}, stats=Stats(),
        token_hash=b"\x01" * 32)
    fields.update(overrides)
    return Session(**fields)


# ------------------------------------------------------------------ the model


def test_timeout_is_encoded_only_when_set_and_round_trips() -> None:
    plain = unclaimed()
    assert "timeout" not in plain.to_dict()  # records of default sessions are as before
    assert Session.from_dict(plain.to_dict()) == plain
    own = unclaimed(timeout=7.5)
    assert own.to_dict()["timeout"] == 7.5
    again = decode_session(b"/q/s/x", encode_session(own))
    assert again == own and again.timeout == 7.5
    assert own.copy().timeout == 7.5


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "60", True])
def test_a_bad_timeout_is_refused(bad: Any) -> None:
    data = unclaimed().to_dict()
    data["timeout"] = bad
    with pytest.raises(InvalidSession, match="timeout"):
        Session.from_dict(data)


def test_the_empty_connection_id_is_valid_other_non_uuids_are_not() -> None:
    assert Session.from_dict(unclaimed().to_dict()).connection_id == ""
    with pytest.raises(InvalidSession, match="connection_id"):
        Session.from_dict(unclaimed(connection_id="not-a-uuid").to_dict())


# ------------------------------------------------------------------ both stores


async def test_unclaimed_sessions_coexist_and_are_not_indexed(store: Store) -> None:
    a, b = unclaimed(), unclaimed()
    await store.create(a)
    await store.create(b)
    assert [s.session_id for s in (await store.list(SessionFilter()))[0]] == sorted(
        [a.session_id, b.session_id])
    with pytest.raises(SessionNotFound):
        await store.get_by_connection_id("")

    # claimed: the connection index follows, the other stays unclaimed
    cid = str(uuid.uuid4())
    claimed = await store.get(a.session_id)
    claimed.connection_id, claimed.state = cid, State.ACTIVE
    await store.update(claimed)
    assert (await store.get_by_connection_id(cid)).session_id == a.session_id
    assert (await store.get(b.session_id)).connection_id == ""

    assert (await store.delete(b.session_id)).session_id == b.session_id
    assert (await store.delete(a.session_id)).connection_id == cid
    with pytest.raises(SessionNotFound):
        await store.get_by_connection_id(cid)
    assert await store.count() == 0


async def test_a_session_timeout_is_stored(store: Store) -> None:
    session = unclaimed(timeout=42.0, expires_at=T0 + timedelta(seconds=42))
    await store.create(session)
    assert (await store.get(session.session_id)).timeout == 42.0


async def test_touch_reports_a_wake_up_once(store: Store) -> None:
    session = unclaimed(connection_id=str(uuid.uuid4()))
    await store.create(session)
    later = T0 + timedelta(seconds=1)
    woke = await store.touch(session.session_id, later, later + timedelta(seconds=60))
    assert woke is not None
    previous, now = woke
    assert previous is State.CONNECTING
    assert now.state is State.ACTIVE and now.last_active_at == later
    assert await store.touch(session.session_id, later, later + timedelta(seconds=60)) is None
    idle = await store.get(session.session_id)
    idle.state = State.IDLE
    await store.update(idle)
    woke = await store.touch(session.session_id, later, later + timedelta(seconds=60))
    assert woke is not None and woke[0] is State.IDLE


async def test_ping_answers_while_the_store_is_up(store: Store) -> None:
    await store.ping()


# ------------------------------------------------------------------ the manager


@pytest.fixture
def manager(clock: FakeClock) -> SessionManager:
    return SessionManager(ManagerConfig(store=MemoryStore(), default_timeout=300.0,
                                        clock=clock))


async def test_create_without_a_connection_then_claim(manager: SessionManager,
                                                      clock: FakeClock) -> None:
    one, token = await manager.create_session("alice", "0.0.0.0", 0, "")
    two, _ = await manager.create_session("alice", "0.0.0.0", 0, "")  # no clash on ""
    assert one.connection_id == two.connection_id == ""
    assert one.state is State.CONNECTING
    cid = str(uuid.uuid4())
    clock.advance(5)
    claimed = await manager.resume_session(one.session_id, token, cid, "198.51.100.4", 5000,
                                           user_id="alice")
    assert (claimed.state, claimed.connection_id, claimed.client_ip) == (
        State.ACTIVE, cid, "198.51.100.4")
    assert (await manager.get_session_by_connection(cid)).session_id == one.session_id


async def test_resume_of_another_users_session_changes_nothing(manager: SessionManager) -> None:
    session, token = await manager.create_session("alice", "0.0.0.0", 0, "")
    with pytest.raises(InvalidToken):
        await manager.resume_session(session.session_id, token, str(uuid.uuid4()),
                                     "198.51.100.4", 5000, user_id="mallory")
    stored = await manager.get_session(session.session_id)
    assert (stored.state, stored.connection_id, stored.client_ip) == (
        State.CONNECTING, "", "0.0.0.0")


async def test_a_session_timeout_rules_its_heartbeats_and_resumes(
        manager: SessionManager, clock: FakeClock) -> None:
    own, token = await manager.create_session("alice", "0.0.0.0", 0, str(uuid.uuid4()),
                                              timeout=60.0)
    default, _ = await manager.create_session("bob", "0.0.0.0", 0, str(uuid.uuid4()))
    assert own.expires_at == clock.now + timedelta(seconds=60)
    assert own.timeout == 60.0 and default.timeout is None
    clock.advance(10)
    assert manager.heartbeat_nowait(own.session_id) == 60.0
    assert manager.heartbeat_nowait(default.session_id) == 300.0
    assert (await manager.get_session(own.session_id)).expires_at == (
        clock.now + timedelta(seconds=60))
    clock.advance(10)
    assert await manager.heartbeat(own.session_id) == 60.0
    clock.advance(10)
    resumed = await manager.resume_session(own.session_id, token, str(uuid.uuid4()),
                                           "198.51.100.4", 1)
    assert resumed.expires_at == clock.now + timedelta(seconds=60)
    await manager.delete_session(own.session_id, "done")
    assert manager.heartbeat_nowait.timeout_of(own.session_id) is None


async def test_a_timeout_set_elsewhere_is_learnt_before_heartbeats(clock: FakeClock) -> None:
    # two managers on one store stand for two nodes: one creates, the other keeps alive
    store = MemoryStore()
    first = SessionManager(ManagerConfig(store=store, default_timeout=300.0, clock=clock))
    second = SessionManager(ManagerConfig(store=store, default_timeout=300.0, clock=clock))
    session, _ = await first.create_session("alice", "0.0.0.0", 0, str(uuid.uuid4()),
                                            timeout=20.0)
    clock.advance(5)
    assert await second.keep_alive(session.session_id) == pytest.approx(20.0)
    assert second.heartbeat_nowait(session.session_id) == 20.0


async def test_keep_alive_extends_an_unclaimed_session_without_activating_it(
        manager: SessionManager, clock: FakeClock) -> None:
    session, _ = await manager.create_session("alice", "0.0.0.0", 0, "", timeout=30.0)
    clock.advance(20)
    assert await manager.keep_alive(session.session_id) == pytest.approx(30.0)
    stored = await manager.get_session(session.session_id)
    assert stored.state is State.CONNECTING
    assert stored.expires_at == clock.now + timedelta(seconds=30)

    held, _ = await manager.create_session("bob", "0.0.0.0", 0, str(uuid.uuid4()))
    await manager.update_session(held.session_id, state=State.IDLE)
    assert await manager.keep_alive(held.session_id) == 300.0
    assert (await manager.get_session(held.session_id)).state is State.ACTIVE


@pytest.mark.parametrize("bad", [0, -5, float("inf"), "60", True])
async def test_create_refuses_a_bad_timeout_and_stores_nothing(
        manager: SessionManager, bad: Any) -> None:
    with pytest.raises(InvalidSession, match="timeout"):
        await manager.create_session("alice", "0.0.0.0", 0, "", timeout=bad)
    assert (await manager.get_stats())["total"] == 0

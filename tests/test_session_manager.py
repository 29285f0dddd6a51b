"""SessionManager on MemoryStore: every method, every error, logs and listeners."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Coroutine, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture

from session.errors import (
    InvalidSession,
    InvalidToken,
    SessionCapacityExceeded,
    SessionConflict,
    SessionExists,
    SessionExpired,
    SessionLimitExceeded,
    SessionNotFound,
    StoreUnavailable,
    TooManyUserSessions,
)
from session.manager import EVICTED_REASON, ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.model import Session, SessionFilter, State, Stats, new_session_id
from session.store import Store, Wake
from tests.conftest import FakeClock

TIMEOUT = 300.0


def make_logger(capture: LogCapture, level: int = logging.DEBUG) -> Any:
    return structlog.wrap_logger(
        None, processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(level)
    )


@pytest.fixture
def logs() -> LogCapture:
    return LogCapture()


@pytest.fixture
def store() -> MemoryStore:  # overrides the parametrised contract fixture: manager tests use memory
    return MemoryStore()


@pytest.fixture
def manager(store: MemoryStore, clock: FakeClock, logs: LogCapture) -> SessionManager:
    return SessionManager(
        ManagerConfig(store=store, default_timeout=TIMEOUT, logger=make_logger(logs), clock=clock)
    )


def events(logs: LogCapture, name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs.entries if e["event"] == name]


def run_now(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that must finish without suspending, as the server does."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("coroutine suspended")


async def create(manager: SessionManager, user_id: str = "user1", **kw: Any) -> tuple[Session, str]:
    return await manager.create_session(
        user_id, kw.pop("client_ip", "192.168.1.100"), kw.pop("client_port", 50000),
        kw.pop("connection_id", str(uuid.uuid4())), **kw,
    )


# -- configuration

@pytest.mark.parametrize("field", ["default_timeout", "cleanup_interval"])
@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan"), "30"])
def test_config_rejects_bad_durations(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        ManagerConfig(store=MemoryStore(), **{field: value})


def test_manager_rejects_a_naive_clock() -> None:
    with pytest.raises(ValueError, match=r"^the clock must return aware UTC datetimes: "
                                         r"clock\(\) must be timezone-aware UTC, got "):
        SessionManager(ManagerConfig(store=MemoryStore(), clock=datetime.now))


# -- create

async def test_create_session(manager: SessionManager, clock: FakeClock, logs: LogCapture) -> None:
    cid = str(uuid.uuid4())
    session, token = await create(
        manager, connection_id=cid, metadata={"device": "desktop"}, server_addr="10.0.0.1:9000"
    )
    assert uuid.UUID(session.session_id).version == 7
    assert (session.user_id, session.connection_id, session.client_ip, session.client_port) == (
        "user1", cid, "192.168.1.100", 50000)
    assert session.state is State.CONNECTING
    assert session.created_at == session.last_active_at == clock.now
    assert session.expires_at == clock.now + timedelta(seconds=TIMEOUT)
    assert session.metadata == {"device": "desktop"}
    assert session.server_addr == "10.0.0.1:9000"
    assert session.stats == Stats()
    assert await manager.get_session(session.session_id) == session
    # the token is 32 random bytes in URL-safe base64; only its hash is kept
    assert len(token) == 43 and set(token) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert session.token_hash == hashlib.sha256(token.encode()).digest()
    assert token not in repr(session) and token not in str(session.to_dict())
    (created,) = events(logs, "session created")
    assert created["session_id"] == session.session_id and created["user_id"] == "user1"
    assert (created["connection_id"], created["client"]) == (
        session.connection_id, f"{session.client_ip}:{session.client_port}")
    assert created["log_level"] == "info"
    assert all(token not in repr(e) for e in logs.entries)


async def test_tokens_differ_per_session(manager: SessionManager) -> None:
    _, t1 = await create(manager)
    _, t2 = await create(manager)
    assert t1 != t2


async def test_create_normalises_connection_id_spellings(manager: SessionManager) -> None:
    cid = uuid.uuid4()
    s1, _ = await create(manager, connection_id=str(cid).upper())
    assert s1.connection_id == str(cid)
    cid2 = uuid.uuid4()
    s2, _ = await create(manager, connection_id=cid2)
    assert s2.connection_id == str(cid2)
    assert (await manager.get_session_by_connection(str(cid).upper())).session_id == s1.session_id


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user_id": ""}, "user_id must not be empty"),
        ({"user_id": "u" * 257}, "at most 256"),
        ({"client_port": 65536}, "client_port"),
        ({"client_port": -1}, "client_port"),
        ({"connection_id": "abc"}, "connection_id is not a UUID"),
        ({"client_ip": "host.example"}, "client_ip"),
        ({"metadata": {f"k{i}": "v" for i in range(65)}}, "at most 64"),
        ({"metadata": {"k" * 129: "v"}}, "metadata key"),
        ({"metadata": {"k": "v" * 1025}}, "metadata value"),
        ({"metadata": {"": "v"}}, "metadata key"),
        ({"metadata": {"k": 1}}, "metadata value"),
        ({"server_addr": "x" * 301}, "server_addr"),
    ],
)
async def test_create_rejects_bad_input_and_stores_nothing(
    manager: SessionManager, store: MemoryStore, kwargs: dict[str, Any], message: str
) -> None:
    user_id = kwargs.pop("user_id", "user1")
    with pytest.raises(InvalidSession, match=message):
        await create(manager, user_id, **kwargs)
    assert await store.count() == 0


async def test_create_accepts_the_limits(manager: SessionManager) -> None:
    metadata = {f"{i:0128d}": "v" * 1024 for i in range(64)}
    session, _ = await create(manager, "u" * 256, client_port=65535, metadata=metadata)
    assert len(session.metadata) == 64
    session, _ = await create(manager, client_port=0, client_ip="::1")
    assert session.client_port == 0


async def test_create_on_a_taken_connection_raises(manager: SessionManager) -> None:
    first, _ = await create(manager)
    with pytest.raises(SessionExists, match=first.connection_id):
        await create(manager, connection_id=first.connection_id)


async def test_returned_session_is_not_the_stored_one(manager: SessionManager) -> None:
    session, _ = await create(manager, metadata={"a": "1"})
    session.metadata["a"] = "2"
    session.state = State.CLOSED
    stored = await manager.get_session(session.session_id)
    assert stored.metadata == {"a": "1"} and stored.state is State.CONNECTING


# -- get

async def test_get_session_missing(manager: SessionManager) -> None:
    sid = new_session_id()
    with pytest.raises(SessionNotFound, match=f"^session not found: {sid}$"):
        await manager.get_session(sid)


async def test_get_session_expires_at_the_boundary(
    manager: SessionManager, clock: FakeClock
) -> None:
    session, _ = await create(manager)
    clock.advance(TIMEOUT - 0.001)
    assert (await manager.get_session(session.session_id)).session_id == session.session_id
    clock.advance(0.001)
    with pytest.raises(SessionExpired, match=f"session expired: {session.session_id}"):
        await manager.get_session(session.session_id)


async def test_get_session_by_connection(manager: SessionManager, clock: FakeClock) -> None:
    session, _ = await create(manager, "user2")
    got = await manager.get_session_by_connection(session.connection_id)
    assert got == session
    other = str(uuid.uuid4())
    with pytest.raises(SessionNotFound, match=f"session not found for connection: {other}"):
        await manager.get_session_by_connection(other)
    with pytest.raises(InvalidSession, match="connection_id"):
        await manager.get_session_by_connection("nope")
    clock.advance(TIMEOUT)
    with pytest.raises(SessionExpired, match=session.session_id):
        await manager.get_session_by_connection(session.connection_id)


# -- update

async def test_update_session(
    manager: SessionManager, clock: FakeClock, logs: LogCapture
) -> None:
    session, _ = await create(manager, metadata={"device": "desktop", "room": "a"})
    clock.advance(10)
    stats = Stats(packets_sent=3, bytes_sent=100, current_rtt_ms=20.0)
    updated = await manager.update_session(
        session.session_id, state=State.ACTIVE, metadata={"room": "b", "team": "red"}, stats=stats
    )
    assert updated.state is State.ACTIVE
    assert updated.metadata == {"device": "desktop", "room": "b", "team": "red"}
    assert updated.stats == stats
    assert updated.last_active_at == clock.now
    assert updated.expires_at == session.expires_at  # only heartbeats and resumes extend
    assert await manager.get_session(session.session_id) == updated
    stats.packets_sent = 1000
    assert (await manager.get_session(session.session_id)).stats.packets_sent == 3
    (changed,) = events(logs, "session state changed")
    assert (changed["old_state"], changed["new_state"]) == ("CONNECTING", "ACTIVE")
    assert (changed["session_id"], changed["user_id"]) == (session.session_id, "user1")


async def test_update_without_state_change_logs_no_state_change(
    manager: SessionManager, logs: LogCapture
) -> None:
    session, _ = await create(manager)
    await manager.update_session(session.session_id, metadata={"k": "v"})
    assert events(logs, "session state changed") == []


async def test_update_session_errors(manager: SessionManager, clock: FakeClock) -> None:
    session, _ = await create(manager, metadata={f"k{i}": "v" for i in range(63)})
    sid = session.session_id
    with pytest.raises(InvalidSession, match="at most 64"):
        await manager.update_session(sid, metadata={"new1": "v", "new2": "v"})
    assert len((await manager.get_session(sid)).metadata) == 63
    with pytest.raises(InvalidSession, match="state"):
        await manager.update_session(sid, state="ACTIVE")  # type: ignore[arg-type]
    with pytest.raises(InvalidSession, match="stats"):
        await manager.update_session(sid, stats=Stats(packets_sent=-1))
    missing = new_session_id()
    with pytest.raises(SessionNotFound, match=missing):
        await manager.update_session(missing, state=State.IDLE)
    clock.advance(TIMEOUT)
    with pytest.raises(SessionExpired, match=sid):
        await manager.update_session(sid, state=State.ACTIVE)


async def test_record_stats(manager: SessionManager, logs: LogCapture) -> None:
    session, _ = await create(manager)
    before = len(logs.entries)
    stats = Stats(1, 2, 3, 4, 5, 6.5)
    await manager.record_stats(session.session_id, stats)
    assert (await manager.get_session(session.session_id)).stats == stats
    assert len(logs.entries) == before
    with pytest.raises(SessionNotFound):
        await manager.record_stats(new_session_id(), stats)
    with pytest.raises(InvalidSession, match="stats"):
        await manager.record_stats(session.session_id, {"packets_sent": 1})  # type: ignore[arg-type]


async def test_update_client_address(
    manager: SessionManager, clock: FakeClock, logs: LogCapture
) -> None:
    session, _ = await create(manager)
    moved = await manager.update_client_address(session.session_id, "10.1.2.3", 40000)
    assert (moved.client_ip, moved.client_port) == ("10.1.2.3", 40000)
    assert (await manager.get_session(session.session_id)).client_port == 40000
    changed = events(logs, "session address changed")[0]
    assert (changed["session_id"], changed["user_id"], changed["client"]) == (
        session.session_id, "user1", "10.1.2.3:40000")
    with pytest.raises(InvalidSession):
        await manager.update_client_address(session.session_id, "10.1.2.3", 70000)
    with pytest.raises(SessionNotFound):
        await manager.update_client_address(new_session_id(), "10.1.2.3", 1)
    clock.advance(TIMEOUT)
    with pytest.raises(SessionExpired, match=f"^session expired: {session.session_id}$"):
        await manager.update_client_address(session.session_id, "10.1.2.3", 1)


# -- heartbeat

async def test_heartbeat_extends_and_wakes(
    manager: SessionManager, clock: FakeClock, logs: LogCapture
) -> None:
    session, _ = await create(manager)
    clock.advance(100)
    assert await manager.heartbeat(session.session_id) == TIMEOUT
    got = await manager.get_session(session.session_id)
    assert got.state is State.ACTIVE
    assert got.last_active_at == clock.now
    assert got.expires_at == clock.now + timedelta(seconds=TIMEOUT)
    await manager.update_session(session.session_id, state=State.IDLE)
    await manager.heartbeat(session.session_id)
    assert (await manager.get_session(session.session_id)).state is State.ACTIVE
    await manager.update_session(session.session_id, state=State.DISCONNECTING)
    await manager.heartbeat(session.session_id)
    assert (await manager.get_session(session.session_id)).state is State.DISCONNECTING
    beat = events(logs, "session heartbeat")[0]
    assert beat["log_level"] == "debug"
    assert beat["session_id"] == session.session_id and beat["remaining"] == TIMEOUT


async def test_heartbeat_keeps_a_session_alive_past_its_first_expiry(
    manager: SessionManager, clock: FakeClock
) -> None:
    session, _ = await create(manager)
    for _ in range(5):
        clock.advance(TIMEOUT * 0.9)
        await manager.heartbeat(session.session_id)
    assert await manager.cleanup_expired() == 0
    clock.advance(TIMEOUT)
    assert await manager.cleanup_expired() == 1


async def test_heartbeat_errors(manager: SessionManager, clock: FakeClock) -> None:
    session, _ = await create(manager)
    missing = new_session_id()
    with pytest.raises(SessionNotFound, match=f"session not found: {missing}"):
        await manager.heartbeat(missing)
    clock.advance(TIMEOUT)
    with pytest.raises(SessionExpired, match=session.session_id):
        await manager.heartbeat(session.session_id)
    # an expired session is not revived by the attempt
    clock.advance(-1)
    assert (await manager.get_session(session.session_id)).state is State.CONNECTING


async def test_heartbeat_never_suspends_on_memory_store(manager: SessionManager) -> None:
    session, _ = await create(manager)
    assert run_now(manager.heartbeat(session.session_id)) == TIMEOUT
    with pytest.raises(SessionNotFound):
        run_now(manager.heartbeat(new_session_id()))


async def test_heartbeat_logs_nothing_above_debug(
    store: MemoryStore, clock: FakeClock, logs: LogCapture
) -> None:
    quiet = SessionManager(ManagerConfig(
        store=store, logger=make_logger(logs, logging.INFO), clock=clock))
    session, _ = await create(quiet)
    for _ in range(3):
        await quiet.heartbeat(session.session_id)
    assert events(logs, "session heartbeat") == []


async def test_heartbeat_uses_the_generic_touch_on_other_stores(clock: FakeClock) -> None:
    class PlainStore(MemoryStore):
        """The Store defaults, like a networked store: no heartbeat without I/O
        (`touch_nowait` always False) and the read-modify-write `touch`."""

        touch_nowait = Store.touch_nowait
        touched = 0

        async def touch(self, session_id: str, now: datetime, expires_at: datetime) -> None:
            self.touched += 1
            await Store.touch(self, session_id, now, expires_at)

    store = PlainStore()
    logs = LogCapture()
    manager = SessionManager(ManagerConfig(store=store, clock=clock, logger=make_logger(logs)))
    session, _ = await create(manager)
    clock.advance(5)
    assert manager.heartbeat_nowait(session.session_id) is None
    got = await manager.get_session(session.session_id)
    assert (got.state, got.last_active_at) == (State.CONNECTING, session.created_at)
    assert await manager.heartbeat(session.session_id) == 1800.0
    got = await manager.get_session(session.session_id)
    assert (got.state, got.last_active_at) == (State.ACTIVE, clock.now)
    assert store.touched == 1
    beat = events(logs, "session heartbeat")
    assert [(b["session_id"], b["remaining"]) for b in beat] == [(session.session_id, 1800.0)]
    # on this path too a session's own timeout rules its heartbeats
    own, _ = await manager.create_session("user2", "10.0.0.1", 1, str(uuid.uuid4()), timeout=60.0)
    clock.advance(5)
    assert await manager.heartbeat(own.session_id) == 60.0
    expires_at = (await manager.get_session(own.session_id)).expires_at
    assert expires_at == clock.now + timedelta(seconds=60)
    clock.advance(1800)
    with pytest.raises(SessionExpired):
        await manager.heartbeat(session.session_id)


async def test_heartbeat_tries_the_path_without_io_once(clock: FakeClock) -> None:
    class SlowStore(MemoryStore):
        """Never does a heartbeat without I/O, and counts how often it was asked."""

        asked = 0
        touched = 0

        def touch_nowait(self, session_id: str, now: datetime,
                         expires_at: datetime) -> bool | Wake:
            self.asked += 1
            return False

        async def touch(self, session_id: str, now: datetime, expires_at: datetime) -> None:
            self.touched += 1
            await super().touch(session_id, now, expires_at)

    store = SlowStore()
    manager = SessionManager(ManagerConfig(store=store, clock=clock))
    session, _ = await create(manager)
    assert await manager.heartbeat(session.session_id) == 1800.0
    assert (store.asked, store.touched) == (1, 1)
    # the server's way: heartbeat_nowait first, then (it returned None) the rest with I/O
    assert manager.heartbeat_nowait(session.session_id) is None
    clock.advance(3)
    assert await manager.heartbeat_with_io(session.session_id) == 1800.0
    assert (store.asked, store.touched) == (2, 2)
    got = await manager.get_session(session.session_id)
    assert (got.state, got.last_active_at, got.expires_at) == (
        State.ACTIVE, clock.now, clock.now + timedelta(seconds=1800))


async def test_heartbeat_nowait_runs_a_store_subclass_override_of_touch_nowait(
    clock: FakeClock,
) -> None:
    # Store and MemoryStore are compiled and the manager's heartbeat calls touch_nowait
    # natively: an interpreted subclass's override must still be the one that runs
    class CountingStore(MemoryStore):
        touched = 0

        def touch_nowait(self, session_id: str, now: datetime,
                         expires_at: datetime) -> bool | Wake:
            self.touched += 1
            return super().touch_nowait(session_id, now, expires_at)

    store = CountingStore()
    manager = SessionManager(ManagerConfig(store=store, clock=clock))
    session, _ = await create(manager)
    clock.advance(5)
    assert manager.heartbeat_nowait(session.session_id) == 1800.0
    assert await manager.heartbeat(session.session_id) == 1800.0
    assert store.touched == 2
    got = await manager.get_session(session.session_id)
    assert (got.state, got.last_active_at) == (State.ACTIVE, clock.now)


# -- list and stats

async def test_list_sessions_filters_and_pages(manager: SessionManager) -> None:
    made = [await create(manager, user) for user in ("a", "b", "a", "c", "a")]
    ids = sorted(s.session_id for s, _ in made)
    await manager.update_session(made[0][0].session_id, state=State.ACTIVE)
    page, total = await manager.list_sessions(SessionFilter(limit=2, offset=2))
    assert total == 5 and [s.session_id for s in page] == ids[2:4]
    all_, total = await manager.list_sessions()
    assert total == 5 and [s.session_id for s in all_] == ids
    mine, total = await manager.list_sessions(SessionFilter(user_id="a"))
    assert total == 3 and {s.user_id for s in mine} == {"a"}
    active, total = await manager.list_sessions(SessionFilter(state=State.ACTIVE))
    assert total == 1 and active[0].session_id == made[0][0].session_id


@pytest.mark.parametrize("kwargs", [{"limit": -1}, {"offset": -1}, {"state": "ACTIVE"}])
def test_filter_rejects_bad_paging(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidSession):
        SessionFilter(**kwargs)


async def test_get_stats(manager: SessionManager) -> None:
    assert await manager.get_stats() == {
        "total": 0, "connecting": 0, "active": 0, "idle": 0, "disconnecting": 0, "closed": 0}
    sessions = [(await create(manager))[0] for _ in range(4)]
    await manager.heartbeat(sessions[0].session_id)
    await manager.update_session(sessions[1].session_id, state=State.IDLE)
    await manager.update_session(sessions[2].session_id, state=State.CLOSED)
    assert await manager.get_stats() == {
        "total": 4, "connecting": 1, "active": 1, "idle": 1, "disconnecting": 0, "closed": 1}


# -- tokens and resume

async def test_verify_token(manager: SessionManager) -> None:
    session, token = await create(manager)
    _, other_token = await create(manager)
    assert await manager.verify_token(session.session_id, token)
    assert not await manager.verify_token(session.session_id, other_token)
    assert not await manager.verify_token(session.session_id, token[:-1])
    assert not await manager.verify_token(session.session_id, "")
    assert not await manager.verify_token(session.session_id, None)  # type: ignore[arg-type]
    with pytest.raises(SessionNotFound):
        await manager.verify_token(new_session_id(), token)


async def test_resume_session(
    manager: SessionManager, clock: FakeClock, logs: LogCapture
) -> None:
    session, token = await create(manager)
    await manager.update_session(session.session_id, state=State.DISCONNECTING)
    clock.advance(200)
    new_cid = str(uuid.uuid4())
    resumed = await manager.resume_session(
        session.session_id, token, new_cid, "10.9.8.7", 4000, server_addr="10.0.0.2:9000")
    assert resumed.connection_id == new_cid
    assert (resumed.client_ip, resumed.client_port, resumed.server_addr) == (
        "10.9.8.7", 4000, "10.0.0.2:9000")
    assert resumed.state is State.ACTIVE
    assert resumed.expires_at == clock.now + timedelta(seconds=TIMEOUT)
    assert await manager.get_session(session.session_id) == resumed
    assert (await manager.get_session_by_connection(new_cid)).session_id == session.session_id
    with pytest.raises(SessionNotFound):
        await manager.get_session_by_connection(session.connection_id)
    (entry,) = events(logs, "session resumed")
    assert entry["session_id"] == session.session_id and entry["user_id"] == "user1"
    assert entry["connection_id"] == new_cid
    assert entry["previous_connection_id"] == session.connection_id
    assert entry["client"] == "10.9.8.7:4000"
    assert all(token not in repr(e) for e in logs.entries)
    # the token stays valid for the next reconnect
    again = await manager.resume_session(session.session_id, token, str(uuid.uuid4()), "::1", 1)
    assert again.server_addr == "10.0.0.2:9000"


async def test_resume_session_errors(manager: SessionManager, clock: FakeClock,
                                     logs: LogCapture) -> None:
    session, token = await create(manager)
    other, _ = await create(manager)
    sid = session.session_id
    with pytest.raises(InvalidToken, match=f"invalid token for session: {sid}"):
        await manager.resume_session(sid, "x" * 43, str(uuid.uuid4()), "10.0.0.1", 1)
    (refused,) = events(logs, "session resume refused: bad token")
    assert (refused["log_level"], refused["session_id"]) == ("warning", sid)
    with pytest.raises(SessionNotFound):
        await manager.resume_session(new_session_id(), token, str(uuid.uuid4()), "10.0.0.1", 1)
    with pytest.raises(InvalidSession):
        await manager.resume_session(sid, token, "bad", "10.0.0.1", 1)
    with pytest.raises(SessionExists):
        await manager.resume_session(sid, token, other.connection_id, "10.0.0.1", 1)
    assert (await manager.get_session(sid)).connection_id == session.connection_id
    clock.advance(TIMEOUT)
    with pytest.raises(SessionExpired, match=sid):
        await manager.resume_session(sid, token, str(uuid.uuid4()), "10.0.0.1", 1)
    with pytest.raises(InvalidToken):  # a wrong token learns nothing about expiry
        await manager.resume_session(sid, "y" * 43, str(uuid.uuid4()), "10.0.0.1", 1)


# -- delete, cleanup, listeners

async def test_delete_session(manager: SessionManager, logs: LogCapture) -> None:
    seen: list[tuple[str, str]] = []
    manager.add_listener(lambda s, reason: seen.append((s.session_id, reason)))
    session, _ = await create(manager, "user3")
    deleted = await manager.delete_session(session.session_id, "user logout")
    assert deleted.session_id == session.session_id
    assert seen == [(session.session_id, "user logout")]
    (entry,) = events(logs, "session deleted")
    assert (entry["session_id"], entry["user_id"], entry["reason"]) == (
        session.session_id, "user3", "user logout")
    with pytest.raises(SessionNotFound, match=f"session not found: {session.session_id}"):
        await manager.get_session(session.session_id)
    with pytest.raises(SessionNotFound):
        await manager.delete_session(session.session_id, "again")
    assert len(seen) == 1


async def test_cleanup_expired(
    manager: SessionManager, clock: FakeClock, logs: LogCapture
) -> None:
    seen: list[tuple[str, str]] = []
    manager.add_listener(lambda s, reason: seen.append((s.session_id, reason)))
    old = [(await create(manager))[0] for _ in range(3)]
    clock.advance(100)
    young, _ = await create(manager)
    assert await manager.cleanup_expired() == 0
    assert events(logs, "expired sessions cleaned up") == []
    clock.advance(TIMEOUT - 100)
    assert await manager.cleanup_expired() == 3
    assert sorted(seen) == sorted((s.session_id, "expired") for s in old)
    assert events(logs, "expired sessions cleaned up")[0]["count"] == 3
    gone = events(logs, "session expired")  # one debug line each
    assert sorted((e["log_level"], e["session_id"], e["user_id"]) for e in gone) == sorted(
        ("debug", s.session_id, "user1") for s in old)
    assert (await manager.get_session(young.session_id)).session_id == young.session_id
    for s in old:
        with pytest.raises(SessionNotFound):
            await manager.get_session(s.session_id)


async def test_failing_listener_is_logged_and_others_still_run(
    manager: SessionManager, logs: LogCapture
) -> None:
    seen: list[str] = []

    def broken(session: Session, reason: str) -> None:
        raise RuntimeError("listener bug")

    manager.add_listener(broken)
    manager.add_listener(lambda s, reason: seen.append(reason))
    session, _ = await create(manager)
    await manager.delete_session(session.session_id, "kicked")
    assert seen == ["kicked"]
    (failure,) = events(logs, "session listener failed")
    assert failure["session_id"] == session.session_id and failure["log_level"] == "error"
    assert failure["reason"] == "kicked"
    manager.remove_listener(broken)
    with pytest.raises(ValueError):
        manager.remove_listener(broken)


# -- background task and shutdown

class ClosingStore(MemoryStore):
    def __init__(self, fail_expire: int = 0) -> None:
        super().__init__()
        self.closed = 0
        self.fail_expire = fail_expire

    async def close(self) -> None:
        self.closed += 1

    async def expire(self, now: datetime) -> list[Session]:
        if self.fail_expire:
            self.fail_expire -= 1
            raise StoreUnavailable("etcd unreachable")
        return await super().expire(now)


async def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.005)


async def test_background_cleanup_runs_and_survives_store_errors(
    clock: FakeClock, logs: LogCapture
) -> None:
    store = ClosingStore(fail_expire=1)
    manager = SessionManager(ManagerConfig(
        store=store, default_timeout=60, cleanup_interval=0.01, clock=clock,
        logger=make_logger(logs)))
    async with manager:
        await create(manager)
        clock.advance(60)

        async def empty() -> bool:
            return await store.count() == 0

        await _wait_for(empty)
    assert events(logs, "session cleanup failed")[0]["error"] == "etcd unreachable"
    assert events(logs, "expired sessions cleaned up")[0]["count"] == 1
    assert store.closed == 1


async def test_a_crash_in_the_background_cleanup_is_logged_and_the_sweep_goes_on(
    clock: FakeClock, logs: LogCapture
) -> None:
    class CrashingStore(MemoryStore):
        crashes = 1

        async def expire(self, now: datetime) -> list[Session]:
            if self.crashes:
                self.crashes -= 1
                raise KeyError("a bug, not an outage")
            return await super().expire(now)

    store = CrashingStore()
    manager = SessionManager(ManagerConfig(
        store=store, default_timeout=60, cleanup_interval=0.01, clock=clock,
        logger=make_logger(logs)))
    async with manager:
        await create(manager)
        clock.advance(60)

        async def empty() -> bool:
            return await store.count() == 0

        await _wait_for(empty)
    (crash,) = events(logs, "session cleanup crashed")
    assert crash["log_level"] == "error" and crash["exc_info"] is True


async def test_close_is_idempotent_and_final(clock: FakeClock) -> None:
    store = ClosingStore()
    manager = SessionManager(ManagerConfig(store=store, clock=clock,
                                           logger=make_logger(LogCapture())))
    await manager.start()
    await manager.start()  # idempotent too
    task = manager._cleanup_task
    assert task is not None and not task.done()
    assert task.get_name() == "session-cleanup"  # what a task dump shows
    await manager.close()
    await manager.close()
    assert task.cancelled()
    assert store.closed == 1
    with pytest.raises(RuntimeError, match=r"^session manager is closed$"):
        await manager.start()


async def test_default_clock_is_wall_time_utc(store: MemoryStore) -> None:
    manager = SessionManager(ManagerConfig(store=store, logger=make_logger(LogCapture())))
    before = datetime.now(UTC)
    session, _ = await create(manager)
    assert session.created_at.tzinfo is UTC
    assert abs((session.created_at - before).total_seconds()) < 1.0
    assert await manager.heartbeat(session.session_id) == 1800.0
    assert await manager.heartbeat(session.session_id) == 1800.0
    got = await manager.get_session(session.session_id)
    assert got.expires_at - got.last_active_at == timedelta(seconds=1800)


# -- limits


@pytest.mark.parametrize("field", ["max_sessions_per_user", "max_sessions"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "8", True])
def test_config_rejects_bad_limits(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be a positive integer, got "):
        ManagerConfig(store=MemoryStore(), **{field: value})


@pytest.mark.parametrize("field", ["default_timeout", "cleanup_interval"])
@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "60"])
def test_config_rejects_bad_durations_naming_them(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be a "):
        ManagerConfig(store=MemoryStore(), **{field: value})


def test_config_limits_and_the_longest_timeout() -> None:
    config = ManagerConfig(store=MemoryStore())
    assert (config.max_sessions_per_user, config.max_sessions) == (8, 100_000)
    ManagerConfig(store=MemoryStore(), default_timeout=365 * 24 * 3600.0)
    with pytest.raises(ValueError, match="default_timeout must be at most"):
        ManagerConfig(store=MemoryStore(), default_timeout=1e308)


def limited(store: MemoryStore, clock: FakeClock, logs: LogCapture, per_user: int = 3,
            total: int = 100) -> SessionManager:
    return SessionManager(ManagerConfig(
        store=store, default_timeout=TIMEOUT, logger=make_logger(logs), clock=clock,
        max_sessions_per_user=per_user, max_sessions=total))


async def test_a_user_at_the_limit_evicts_the_least_recently_active_unheld_session(
    store: MemoryStore, clock: FakeClock, logs: LogCapture
) -> None:
    manager = limited(store, clock, logs)
    ended: list[tuple[str, str]] = []
    manager.add_listener(lambda s, reason: ended.append((s.session_id, reason)))
    sessions = []
    for state in (State.DISCONNECTING, State.ACTIVE, State.CLOSED):
        session, _ = await create(manager)
        await manager.update_session(session.session_id, state=state)
        sessions.append(session)
        clock.advance(1)
    # the CLOSED one is newer; the DISCONNECTING one was least recently active
    newest, _ = await create(manager)
    assert ended == [(sessions[0].session_id, EVICTED_REASON)]
    (entry,) = [e for e in events(logs, "session deleted") if e["reason"] == EVICTED_REASON]
    assert (entry["session_id"], entry["user_id"]) == (sessions[0].session_id, "user1")
    mine = {s.session_id for s in await store.get_by_user_id("user1")}
    assert mine == {sessions[1].session_id, sessions[2].session_id, newest.session_id}
    await create(manager)
    assert ended[-1] == (sessions[2].session_id, EVICTED_REASON)


async def test_expired_sessions_go_first_whatever_their_state(
    store: MemoryStore, clock: FakeClock, logs: LogCapture
) -> None:
    manager = limited(store, clock, logs, per_user=2)
    unheld, _ = await create(manager)
    stale, _ = await create(manager)
    await manager.update_session(unheld.session_id, state=State.DISCONNECTING)
    clock.advance(100)
    await manager.heartbeat(unheld.session_id)  # alive until 400, last active at 100
    clock.advance(100)
    await manager.update_session(stale.session_id, state=State.ACTIVE)  # active at 200...
    clock.advance(110)  # ...but expired at 300, not swept yet
    await create(manager)
    with pytest.raises(SessionNotFound):
        await store.get(stale.session_id)
    assert (await store.get(unheld.session_id)).state is State.DISCONNECTING


@pytest.mark.parametrize("state", [State.CONNECTING, State.ACTIVE, State.IDLE])
async def test_sessions_held_by_live_connections_are_never_evicted(
    store: MemoryStore, clock: FakeClock, logs: LogCapture, state: State
) -> None:
    manager = limited(store, clock, logs, per_user=2)
    ended: list[str] = []
    manager.add_listener(lambda s, reason: ended.append(reason))
    for _ in range(2):
        session, _ = await create(manager)
        await manager.update_session(session.session_id, state=state)
    before = await store.get_by_user_id("user1")
    cid = str(uuid.uuid4())
    with pytest.raises(TooManyUserSessions, match=r"'user1' has 2 sessions \(at most 2\)") as info:
        await create(manager, connection_id=cid)
    assert isinstance(info.value, SessionLimitExceeded)
    assert await store.get_by_user_id("user1") == before and ended == []
    with pytest.raises(SessionNotFound):
        await store.get_by_connection_id(cid)
    (refused,) = events(logs, "session refused: user at session limit")
    assert (refused["log_level"], refused["user_id"], refused["sessions"], refused["limit"]) == (
        "warning", "user1", 2, 2)
    await create(manager, "user2")  # other users are not affected


async def test_a_victim_resumed_between_the_read_and_the_delete_is_spared(
    clock: FakeClock, logs: LogCapture
) -> None:
    # the eviction re-checks each victim in the store's own delete: one that a resume took back
    # meanwhile (another node, another task) stays, and the next unheld one goes instead
    class RacingStore(MemoryStore):
        reclaim: str | None = None

        async def delete(self, session_id: str, *,
                         only_if: Callable[[Session], bool] | None = None) -> Session:
            if session_id == self.reclaim:
                self.reclaim = None
                taken = await self.get(session_id)
                taken.state = State.ACTIVE
                await self.update(taken)
            return await super().delete(session_id, only_if=only_if)

    store = RacingStore()
    manager = limited(store, clock, logs, per_user=2)
    older, _ = await create(manager)
    await manager.update_session(older.session_id, state=State.DISCONNECTING)
    clock.advance(1)
    newer, _ = await create(manager)
    await manager.update_session(newer.session_id, state=State.DISCONNECTING)
    store.reclaim = older.session_id  # the first victim: least recently active
    third, _ = await create(manager)
    assert (await store.get(older.session_id)).state is State.ACTIVE
    with pytest.raises(SessionNotFound):
        await store.get(newer.session_id)
    assert {s.session_id for s in await store.get_by_user_id("user1")} == {
        older.session_id, third.session_id}


async def test_a_create_that_loses_every_race_for_the_freed_slot_is_refused(
    clock: FakeClock, logs: LogCapture
) -> None:
    # another node takes each slot this one frees: after its last attempt the create is
    # refused, and nothing of it is stored (never a session reported created but not stored)
    class ContestedStore(MemoryStore):
        contested = False

        async def create(self, session: Session, *,
                         max_user_sessions: int | None = None) -> None:
            if self.contested:  # a rival's unheld session lands first, taking the slot
                rival = session.copy()
                rival.session_id, rival.connection_id = new_session_id(), str(uuid.uuid4())
                rival.state = State.DISCONNECTING
                await super().create(rival)
            await super().create(session, max_user_sessions=max_user_sessions)

    store = ContestedStore()
    manager = limited(store, clock, logs, per_user=2)
    for _ in range(2):
        unheld, _ = await create(manager)
        await manager.update_session(unheld.session_id, state=State.DISCONNECTING)
    store.contested = True
    cid = str(uuid.uuid4())
    with pytest.raises(TooManyUserSessions):
        await create(manager, connection_id=cid)
    with pytest.raises(SessionNotFound):
        await store.get_by_connection_id(cid)
    assert len(events(logs, "session created")) == 2  # the two made before the contest


async def test_the_total_limit_refuses_and_creates_nothing(
    store: MemoryStore, clock: FakeClock, logs: LogCapture
) -> None:
    manager = limited(store, clock, logs, total=3)
    for user in ("a", "b", "c"):
        await create(manager, user)
    with pytest.raises(SessionCapacityExceeded, match="holds 3 sessions, at most 3"):
        await create(manager, "d")
    assert await store.count() == 3
    (refused,) = events(logs, "session refused: session limit reached")
    assert (refused["log_level"], refused["user_id"], refused["sessions"], refused["limit"]) == (
        "warning", "d", 3, 3)
    await manager.delete_session((await store.get_by_user_id("a"))[0].session_id, "logout")
    await create(manager, "d")


async def test_a_create_that_loses_the_freed_slot_to_another_goes_round_again(
    clock: FakeClock, logs: LogCapture
) -> None:
    class RacingStore(MemoryStore):
        """Another create lands between the eviction and ours, the first time only."""

        sneaked = False

        async def delete(self, session_id: str, **kw: Any) -> Session:
            removed = await super().delete(session_id, **kw)
            if not self.sneaked:
                self.sneaked = True
                now = clock.now
                intruder = Session(
                    session_id=new_session_id(), user_id="user1",
                    connection_id=str(uuid.uuid4()), client_ip="10.0.0.9", client_port=1,
                    state=State.DISCONNECTING, created_at=now, last_active_at=now,
                    expires_at=now + timedelta(seconds=TIMEOUT))
                await super().create(intruder)
            return removed

    store = RacingStore()
    manager = limited(store, clock, logs, per_user=1)
    first, _ = await create(manager)
    await manager.update_session(first.session_id, state=State.DISCONNECTING)
    clock.advance(1)
    mine, _ = await create(manager)  # evicts `first`, loses the slot, evicts the intruder
    assert [s.session_id for s in await store.get_by_user_id("user1")] == [mine.session_id]


# -- a refused resume changes nothing


async def test_resume_for_another_user_is_refused_and_writes_nothing(
    store: MemoryStore, manager: SessionManager, clock: FakeClock, logs: LogCapture
) -> None:
    session, token = await create(manager, "alice")
    await manager.update_session(session.session_id, state=State.DISCONNECTING)
    before = (await store.get(session.session_id)).to_dict()
    clock.advance(30)
    with pytest.raises(InvalidToken, match="belongs to another user"):
        await manager.resume_session(session.session_id, token, str(uuid.uuid4()),
                                     "10.9.9.9", 4444, server_addr="10.0.0.5:1", user_id="mallory")
    with pytest.raises(InvalidToken, match="belongs to another user"):
        await manager.check_resume(session.session_id, token, "mallory")
    refused = events(logs, "session resume refused: another user's session")
    assert [(e["log_level"], e["session_id"]) for e in refused] == [
        ("warning", session.session_id)] * 2
    assert (await store.get(session.session_id)).to_dict() == before
    checked = await manager.check_resume(session.session_id, token, "alice")
    assert checked.to_dict() == before  # checking writes nothing either
    resumed = await manager.resume_session(session.session_id, token, str(uuid.uuid4()),
                                           "10.9.9.9", 4444, user_id="alice")
    assert resumed.state is State.ACTIVE


# -- the token rotates at every resume (PROTOCOL.md 12.3)

CID = str(uuid.UUID(int=1))
CID2 = str(uuid.UUID(int=2))


async def test_a_rotating_resume_gives_a_new_token_and_the_old_one_works_until_confirmed(
        manager: SessionManager, store: MemoryStore) -> None:
    session, first = await manager.create_session("alice", "10.0.0.2", 40000, CID)
    sid = session.session_id
    resumed, second = await manager.resume_session_rotating(sid, first, CID2, "10.0.0.3", 1,
                                                            user_id="alice")
    assert second != first and resumed.session_id == sid
    stored = await store.get(sid)
    assert stored.token_hash == hashlib.sha256(second.encode()).digest()
    assert stored.previous_token_hash == hashlib.sha256(first.encode()).digest()
    assert first not in repr(stored) and second not in repr(stored)
    # the new token was lost in transit: the old one still resumes, and the token it got
    # the first time is replaced by a third
    _, third = await manager.resume_session_rotating(sid, first, CID, "10.0.0.2", 2)
    with pytest.raises(InvalidToken):
        await manager.check_resume(sid, second)
    await manager.check_resume(sid, first)
    # the client acknowledged the third: the first stops working, the third goes on
    assert await manager.confirm_token(sid, hashlib.sha256(third.encode()).digest())
    with pytest.raises(InvalidToken):
        await manager.check_resume(sid, first)
    await manager.check_resume(sid, third)
    assert (await store.get(sid)).previous_token_hash == b""
    # confirming a token that is not the session's changes nothing
    assert not await manager.confirm_token(sid, hashlib.sha256(b"other").digest())


async def test_a_session_with_a_replaced_token_survives_its_encoding(
        manager: SessionManager, store: MemoryStore) -> None:
    session, first = await manager.create_session("alice", "10.0.0.2", 40000, CID)
    await manager.resume_session_rotating(session.session_id, first, CID2, "10.0.0.3", 1)
    stored = await store.get(session.session_id)
    data = stored.to_dict()
    assert data["previous_token_hash"] == hashlib.sha256(first.encode()).hexdigest()
    assert Session.from_dict(data) == stored
    stored.previous_token_hash = b""
    assert "previous_token_hash" not in stored.to_dict()  # the old encoding, unchanged


async def test_an_update_that_meets_another_nodes_write_is_applied_again(clock: FakeClock) -> None:
    # a shared store refuses a write whose read is stale (SessionConflict): update_session
    # reads again and applies its change to what is there, a bounded number of times
    class ContendedStore(MemoryStore):
        conflicts = 0

        async def update(self, session: Session) -> None:
            if self.conflicts:
                self.conflicts -= 1
                stored = await self.get(session.session_id)
                stored.metadata = {**stored.metadata, "by": "another node"}
                await super().update(stored)  # the other node's write lands first
                raise SessionConflict(f"session {session.session_id} changed meanwhile")
            await super().update(session)

    store = ContendedStore()
    manager = SessionManager(ManagerConfig(store=store, clock=clock))
    session, _ = await create(manager)
    store.conflicts = 2
    updated = await manager.update_session(session.session_id, state=State.IDLE,
                                           metadata={"seat": "3"})
    got = await manager.get_session(session.session_id)
    assert got.state is State.IDLE and updated.state is State.IDLE
    assert got.metadata["seat"] == "3" and got.metadata["by"] == "another node"  # both kept
    store.conflicts = 10  # every try meets a newer write: the conflict is reported
    with pytest.raises(SessionConflict):
        await manager.update_session(session.session_id, state=State.ACTIVE)
    assert store.conflicts == 10 - 5


async def test_a_plain_resume_keeps_the_token(manager: SessionManager, store: MemoryStore) -> None:
    """`resume_session` (no rotation): the same token goes on working, nothing is replaced."""
    session, token = await manager.create_session("alice", "10.0.0.2", 40000, CID)
    before = await store.get(session.session_id)
    await manager.resume_session(session.session_id, token, CID2, "10.0.0.3", 1)
    stored = await store.get(session.session_id)
    assert (stored.token_hash, stored.previous_token_hash) == (before.token_hash, b"")
    assert await manager.verify_token(session.session_id, token)


async def test_a_rotating_resume_moves_the_session_to_the_server_and_checks_the_user(
        manager: SessionManager, store: MemoryStore) -> None:
    session, token = await manager.create_session("alice", "10.0.0.2", 40000, CID)
    sid = session.session_id
    with pytest.raises(InvalidToken, match="belongs to another user"):
        await manager.resume_session_rotating(sid, token, CID2, "10.0.0.3", 1, user_id="bob")
    resumed, _ = await manager.resume_session_rotating(sid, token, CID2, "10.0.0.3", 1,
                                                       "node-b:7000", user_id="alice")
    assert resumed.server_addr == (await store.get(sid)).server_addr == "node-b:7000"


async def test_confirming_a_session_that_replaced_no_token_changes_nothing(
        manager: SessionManager, store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing to confirm (no resume rotated the token): False, even for the session's own
    current token hash, and the store is not written."""
    session, token = await manager.create_session("alice", "10.0.0.2", 40000, CID)
    writes: list[Session] = []
    update = store.update

    async def counted(s: Session) -> None:
        writes.append(s)
        await update(s)

    monkeypatch.setattr(store, "update", counted)
    assert not await manager.confirm_token(session.session_id,
                                           hashlib.sha256(token.encode()).digest())
    assert writes == []


async def test_the_managers_own_logger_names_itself_session(clock: FakeClock) -> None:
    """Without a logger in its configuration the manager logs through
    `session.logs.get_logger("session")`: every event says ``logger="session"``."""
    with structlog.testing.capture_logs() as captured:
        manager = SessionManager(ManagerConfig(store=MemoryStore(), default_timeout=TIMEOUT,
                                               clock=clock))
        await create(manager)
    created = [e for e in captured if e["event"] == "session created"]
    assert created and all(e["logger"] == "session" for e in created)

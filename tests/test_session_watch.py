"""SessionManager watchers: one event per change, in order, with the session as it was."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import pytest
from structlog.testing import LogCapture

from session.etcd import EtcdStore
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.model import Session, State
from session.store import Listener, Store
from session.watch import EventKind, SessionEvent
from tests.conftest import FakeClock
from tests.etcd_cluster import etcd_endpoints, etcd_prefix  # noqa: F401  (fixtures)
from tests.test_session_manager import make_logger


class GenericStore(MemoryStore):
    """A store without the synchronous touch and with the base class's read-modify-write one,
    like a networked store: heartbeats take the awaited path."""

    touch_now = None  # type: ignore[assignment]

    async def touch(self, session_id: str, now: datetime,
                    expires_at: datetime) -> tuple[State, Session] | None:
        return await Store.touch(self, session_id, now, expires_at)


def watched(manager: SessionManager) -> list[SessionEvent]:
    events: list[SessionEvent] = []
    manager.add_watcher(events.append)
    return events


def summary(events: list[SessionEvent]) -> list[tuple[str, State, State | None, str]]:
    return [(e.kind.value, e.session.state, e.previous_state, e.reason) for e in events]


@pytest.mark.parametrize("store", [MemoryStore, GenericStore], ids=["memory", "generic-touch"])
async def test_every_change_is_published_in_order(clock: FakeClock,
                                                  store: type[Store]) -> None:
    manager = SessionManager(ManagerConfig(store=store(), default_timeout=60.0, clock=clock))
    events = watched(manager)
    session, token = await manager.create_session("alice", "10.0.0.1", 1, "", metadata={"a": "1"})
    sid = session.session_id
    clock.advance(1)
    await manager.resume_session(sid, token, str(uuid.uuid4()), "10.0.0.2", 2)  # -> ACTIVE
    await manager.resume_session(sid, token, str(uuid.uuid4()), "10.0.0.3", 3)  # no change
    await manager.update_session(sid, metadata={"b": "2"})  # no state change: no event
    await manager.update_session(sid, state=State.IDLE)
    await manager.heartbeat(sid)  # wakes IDLE -> ACTIVE
    await manager.heartbeat(sid)  # already ACTIVE
    await manager.delete_session(sid, "user logout")
    short, _ = await manager.create_session("bob", "10.0.0.1", 1, str(uuid.uuid4()))
    clock.advance(61)
    assert await manager.cleanup_expired() == 1

    assert summary(events) == [
        ("CREATED", State.CONNECTING, None, ""),
        ("STATE_CHANGED", State.ACTIVE, State.CONNECTING, ""),
        ("STATE_CHANGED", State.IDLE, State.ACTIVE, ""),
        ("STATE_CHANGED", State.ACTIVE, State.IDLE, ""),
        ("DELETED", State.ACTIVE, None, "user logout"),
        ("CREATED", State.CONNECTING, None, ""),
        ("EXPIRED", State.CONNECTING, None, "expired"),
    ]
    assert [e.session.session_id for e in events] == [sid] * 5 + [short.session_id] * 2
    assert events[3].session.metadata == {"a": "1", "b": "2"}
    assert events[0].at < events[1].at
    assert all(e.remote is False for e in events)


async def test_the_hot_path_heartbeat_publishes_its_wake_ups(clock: FakeClock) -> None:
    manager = SessionManager(ManagerConfig(store=MemoryStore(), default_timeout=60.0,
                                           clock=clock))
    events = watched(manager)
    session, _ = await manager.create_session("alice", "10.0.0.1", 1, str(uuid.uuid4()))
    assert manager.heartbeat_nowait(session.session_id) == 60.0
    assert manager.heartbeat_nowait(session.session_id) == 60.0
    assert summary(events)[1:] == [("STATE_CHANGED", State.ACTIVE, State.CONNECTING, "")]


async def test_events_hold_copies_and_a_failing_watcher_harms_nobody(clock: FakeClock) -> None:
    logs = LogCapture()
    manager = SessionManager(ManagerConfig(store=MemoryStore(), clock=clock,
                                           logger=make_logger(logs)))

    def broken(event: SessionEvent) -> None:
        raise RuntimeError("watcher bug")

    manager.add_watcher(broken)
    events = watched(manager)
    session, _ = await manager.create_session("alice", "10.0.0.1", 1, "")
    events[0].session.metadata["x"] = "changed"
    assert (await manager.get_session(session.session_id)).metadata == {}
    assert [e["event"] for e in logs.entries if e["log_level"] == "error"] == [
        "session watcher failed"]
    (failed,) = [e for e in logs.entries if e["event"] == "session watcher failed"]
    assert (failed["session_id"], failed["kind"]) == (session.session_id, "CREATED")

    manager.remove_watcher(broken)
    manager.remove_watcher(events.append)
    await manager.delete_session(session.session_id, "gone")
    assert len(events) == 1
    with pytest.raises(ValueError):
        manager.remove_watcher(events.append)


@pytest.mark.etcd
async def test_changes_from_another_node_arrive_marked_remote(
        etcd_endpoints: list[str], etcd_prefix: str) -> None:
    here = SessionManager(ManagerConfig(store=EtcdStore(etcd_endpoints, prefix=etcd_prefix)))
    there = SessionManager(ManagerConfig(store=EtcdStore(etcd_endpoints, prefix=etcd_prefix)))
    async with here, there:
        events = watched(here)
        session, _ = await there.create_session("alice", "10.0.0.1", 1, "")
        await there.delete_session(session.session_id, "kicked elsewhere")
        for _ in range(100):
            if events:
                break
            await asyncio.sleep(0.05)
        assert [(e.kind, e.remote, e.session.session_id) for e in events] == [
            (EventKind.DELETED, True, session.session_id)]


class SharedStore(MemoryStore):
    """A store with other writers, as a shared store is: `remove_elsewhere` is another node's
    delete (or expiry) of a session, reported to the listeners the store was given."""

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[Listener] = []

    def add_listener(self, callback: Listener) -> None:
        self.listeners.append(callback)

    async def remove_elsewhere(self, session_id: str, reason: str) -> None:
        gone = await self.delete(session_id)
        for callback in self.listeners:
            callback(gone, reason)


@pytest.mark.parametrize(("reason", "kind"), [("deleted", EventKind.DELETED),
                                              ("expired", EventKind.EXPIRED)])
async def test_a_removal_the_store_reports_reaches_listeners_and_watchers_as_remote(
        clock: FakeClock, reason: str, kind: EventKind) -> None:
    store = SharedStore()
    manager = SessionManager(ManagerConfig(store=store, clock=clock))
    told: list[tuple[str, str]] = []
    manager.add_listener(lambda session, why: told.append((session.session_id, why)))
    events = watched(manager)
    session, _ = await manager.create_session("alice", "10.0.0.1", 1, "")
    await store.remove_elsewhere(session.session_id, reason)
    assert told == [(session.session_id, reason)]
    assert [(e.kind, e.remote, e.reason, e.session.session_id) for e in events[1:]] == [
        (kind, True, reason, session.session_id)]
    assert not events[0].remote  # what this manager did itself is not remote

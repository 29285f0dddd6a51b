"""EtcdStore against a real etcd: layout, leases, watch, conflicts, lazy heartbeats, faults."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aetcd
import pytest

from benchmarks.etcd_util import EtcdCluster
from session.errors import (
    InvalidSession,
    SessionExpired,
    SessionNotFound,
    StoreUnavailable,
    TooManyUserSessions,
)
from session.etcd import EtcdStore, SessionConflict, decode_session
from session.manager import EVICTED_REASON, ManagerConfig, SessionManager
from session.model import Session, SessionFilter, State, Stats, new_session_id
from tests.etcd_cluster import (  # noqa: F401 - fixtures
    etcd_cluster3,
    etcd_endpoints,
    etcd_prefix,
    etcd_private,
)

pytestmark = pytest.mark.etcd


def make_session(timeout: float = 30.0, **overrides: Any) -> Session:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "session_id": new_session_id(), "user_id": "user1",
        "connection_id": str(uuid.uuid4()), "client_ip": "10.0.0.1", "client_port": 4000,
        "state": State.ACTIVE, "created_at": now, "last_active_at": now,
        "expires_at": now + timedelta(seconds=timeout),
    }
    fields.update(overrides)
    return Session(**fields)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition another task or node makes true; fail after `timeout`."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


class Clock:
    """A monotonic clock the test moves by hand, to cross refresh thresholds instantly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def raw(etcd_endpoints: list[str]) -> AsyncIterator[aetcd.Client]:
    host, port = etcd_endpoints[0].split(":")
    async with aetcd.Client(host=host, port=int(port), timeout=5) as client:
        yield client


@pytest.fixture
async def pair(
    etcd_endpoints: list[str], etcd_prefix: str
) -> AsyncIterator[tuple[EtcdStore, EtcdStore]]:
    """Two nodes sharing one prefix."""
    a = EtcdStore(etcd_endpoints, prefix=etcd_prefix, timeout=5.0)
    b = EtcdStore(etcd_endpoints, prefix=etcd_prefix, timeout=5.0)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_key_layout_and_one_lease_per_session(
    pair: tuple[EtcdStore, EtcdStore], raw: aetcd.Client, etcd_prefix: str
) -> None:
    a, _ = pair
    session = make_session(user_id="team/alice")
    await a.create(session)
    p = etcd_prefix.encode()
    sid = session.session_id.encode()
    record = await raw.get(p + b"/s/" + sid)
    conn = await raw.get(p + b"/c/" + session.connection_id.encode())
    user = await raw.get(p + b"/u/team%2Falice/" + sid)
    assert record is not None and conn is not None and user is not None
    assert conn.value == sid
    assert record.lease != 0 and record.lease == conn.lease == user.lease
    session.connection_id = str(uuid.uuid4())
    session.user_id = "bob"
    await a.update(session)
    keys = sorted(kv.key for kv in await raw.get_prefix(p + b"/"))
    assert keys == sorted([
        p + b"/s/" + sid, p + b"/c/" + session.connection_id.encode(), p + b"/u/bob/" + sid,
    ])


async def test_deletion_on_one_node_is_reported_on_the_other(
    pair: tuple[EtcdStore, EtcdStore],
) -> None:
    a, b = pair
    heard: list[tuple[str, str]] = []
    a.add_listener(lambda s, reason: heard.append((s.session_id, reason)))
    session = make_session()
    await a.create(session)
    await b.delete(session.session_id)
    await eventually(lambda: bool(heard))
    assert heard == [(session.session_id, "deleted")]
    with pytest.raises(SessionNotFound):
        await a.get(session.session_id)  # the watch dropped it from A's cache too


async def test_own_deletes_are_not_reported(pair: tuple[EtcdStore, EtcdStore]) -> None:
    a, b = pair
    heard_a: list[str] = []
    heard_b: list[str] = []
    a.add_listener(lambda s, reason: heard_a.append(s.session_id))
    b.add_listener(lambda s, reason: heard_b.append(s.session_id))
    session = make_session()
    await a.create(session)
    await a.delete(session.session_id)
    await eventually(lambda: bool(heard_b))
    assert heard_b == [session.session_id]
    assert heard_a == []


async def test_two_nodes_racing_for_a_users_last_slot_one_wins(
    pair: tuple[EtcdStore, EtcdStore],
) -> None:
    a, b = pair
    await a.create(make_session(user_id="racer"), max_user_sessions=2)
    for _ in range(5):  # the race is decided by etcd's compare, whoever counts first
        first, second = make_session(user_id="racer"), make_session(user_id="racer")
        results = await asyncio.gather(a.create(first, max_user_sessions=2),
                                       b.create(second, max_user_sessions=2),
                                       return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["NoneType", "TooManyUserSessions"]
        assert len(await a.get_by_user_id("racer")) == 2
        winner = first if results[0] is None else second
        await b.delete(winner.session_id)
    assert len(await b.get_by_user_id("racer")) == 1


async def test_eviction_spares_a_session_another_node_just_resumed(
    pair: tuple[EtcdStore, EtcdStore],
) -> None:
    a, b = pair
    managers = [SessionManager(ManagerConfig(store=store, max_sessions_per_user=1))
                for store in (a, b)]
    session, token = await managers[0].create_session("eve", "10.0.0.1", 4000,
                                                       str(uuid.uuid4()))
    await managers[0].update_session(session.session_id, state=State.DISCONNECTING)
    ended: list[str] = []
    managers[0].add_listener(lambda s, reason: ended.append(reason))
    # node B resumes it; node A, perhaps still seeing it DISCONNECTING, makes room for a new one
    await managers[1].resume_session(session.session_id, token, str(uuid.uuid4()),
                                     "10.0.0.2", 4001)
    with pytest.raises(TooManyUserSessions):
        await managers[0].create_session("eve", "10.0.0.3", 4002, str(uuid.uuid4()))
    assert (await b.get(session.session_id)).state is State.ACTIVE
    assert ended == []
    # once it is unheld again, the new session takes its place
    await managers[1].update_session(session.session_id, state=State.DISCONNECTING)
    await eventually(lambda: a._cache[session.session_id].session.state is State.DISCONNECTING)
    newer, _ = await managers[0].create_session("eve", "10.0.0.3", 4002, str(uuid.uuid4()))
    assert ended == [EVICTED_REASON]
    assert [s.session_id for s in await b.get_by_user_id("eve")] == [newer.session_id]


async def test_session_nobody_refreshes_expires_through_its_lease(
    etcd_endpoints: list[str], etcd_prefix: str
) -> None:
    observer = EtcdStore(etcd_endpoints, prefix=etcd_prefix)
    owner = EtcdStore(etcd_endpoints, prefix=etcd_prefix)
    await observer.start()
    await owner.start()
    heard: list[tuple[str, str]] = []
    observer.add_listener(lambda s, reason: heard.append((s.session_id, reason)))
    try:
        session = make_session(timeout=1.0)
        await owner.create(session)
        await owner.close()  # the owning node goes away; nobody runs expire()
        await eventually(lambda: bool(heard), timeout=8.0)
        assert heard == [(session.session_id, "expired")]
        with pytest.raises(SessionNotFound):
            await observer.get_by_connection_id(session.connection_id)
        assert await observer.count() == 0
    finally:
        await observer.close()


async def test_heartbeats_stay_local_until_the_lease_needs_refreshing(
    etcd_endpoints: list[str], etcd_prefix: str
) -> None:
    clock = Clock()
    a = EtcdStore(etcd_endpoints, prefix=etcd_prefix, monotonic=clock, stats_interval=3600)
    b = EtcdStore(etcd_endpoints, prefix=etcd_prefix)
    await a.start()
    await b.start()
    try:
        session = make_session(timeout=60.0)
        await a.create(session)
        before = a.requests
        t = session.last_active_at
        for i in range(1, 101):
            clock.now += 0.1
            await a.touch(session.session_id, t + timedelta(seconds=i * 0.1),
                          t + timedelta(seconds=60 + i * 0.1))
        assert a.requests == before  # 100 heartbeats, 10 s of them: no etcd traffic
        assert (await b.get(session.session_id)).last_active_at == t  # others see the old time
        clock.now += 15.0  # a quarter of the 60 s timeout since the lease was granted
        late = t + timedelta(seconds=25)
        await a.touch(session.session_id, late, late + timedelta(seconds=60))
        assert a.requests == before + 2  # one keepalive, one record write
        await eventually(lambda: b._cache[session.session_id].session.last_active_at == late)
        assert (await b.get(session.session_id)).expires_at == late + timedelta(seconds=60)
    finally:
        await a.close()
        await b.close()


async def test_stats_are_flushed_in_the_background(
    etcd_endpoints: list[str], etcd_prefix: str
) -> None:
    a = EtcdStore(etcd_endpoints, prefix=etcd_prefix, stats_interval=0.2)
    b = EtcdStore(etcd_endpoints, prefix=etcd_prefix)
    await a.start()
    await b.start()
    try:
        session = make_session()
        await a.create(session)
        await b.get(session.session_id)
        await a.set_stats(session.session_id, Stats(bytes_sent=1234))
        await eventually(
            lambda: b._cache[session.session_id].session.stats.bytes_sent == 1234
        )
    finally:
        await a.close()
        await b.close()


async def test_stale_whole_record_update_is_reported_not_lost(
    pair: tuple[EtcdStore, EtcdStore],
) -> None:
    a, b = pair
    session = make_session()
    await a.create(session)
    mine = await a.get(session.session_id)
    theirs = await b.get(session.session_id)
    mine.metadata["from"] = "a"
    await a.update(mine)
    theirs.metadata["from"] = "b"
    with pytest.raises(SessionConflict, match=session.session_id):
        await b.update(theirs)
    assert (await a.get(session.session_id)).metadata == {"from": "a"}
    fresh = await b.get(session.session_id)
    fresh.metadata["also"] = "b"
    await b.update(fresh)
    await eventually(lambda: a._cache[session.session_id].session.metadata.get("also") == "b")
    assert (await a.get(session.session_id)).metadata == {"from": "a", "also": "b"}


async def test_concurrent_read_modify_write_from_two_nodes_loses_nothing(
    pair: tuple[EtcdStore, EtcdStore],
) -> None:
    session = make_session()
    await pair[0].create(session)

    async def writer(node: EtcdStore, name: str) -> int:
        conflicts = 0
        for i in range(15):
            while True:
                current = await node.get(session.session_id)
                current.metadata[f"{name}{i}"] = "x"
                try:
                    await node.update(current)
                    break
                except SessionConflict:
                    conflicts += 1
        return conflicts

    await asyncio.gather(writer(pair[0], "a"), writer(pair[1], "b"))
    raw_view = EtcdStore(pair[0].endpoints, prefix=pair[0].prefix)
    await raw_view.start()
    try:
        final = await raw_view.get(session.session_id)
    finally:
        await raw_view.close()
    assert set(final.metadata) == {f"{n}{i}" for n in "ab" for i in range(15)}


async def test_heartbeat_merges_onto_a_record_changed_elsewhere(
    pair: tuple[EtcdStore, EtcdStore],
) -> None:
    a, b = pair
    session = make_session(state=State.IDLE)
    await a.create(session)
    other = await b.get(session.session_id)
    other.metadata["room"] = "blue"
    await b.update(other)
    # A may not have seen B's write yet; its keepalive write must merge, not overwrite
    now = datetime.now(UTC)
    await a.touch(session.session_id, now, now + timedelta(seconds=30))
    await eventually(lambda: b._cache[session.session_id].session.state is State.ACTIVE)
    final = await b.get(session.session_id)
    assert final.metadata == {"room": "blue"}
    assert (final.state, final.last_active_at) == (State.ACTIVE, now)


async def test_wake_up_survives_a_remote_write_arriving_while_it_is_written(
    pair: tuple[EtcdStore, EtcdStore], raw: aetcd.Client, etcd_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The flaky interleaving of the test above, forced: A's watch delivers B's write after
    `touch` changed the cached copy but before A's compare-on-revision write is answered."""
    a, b = pair
    session = make_session(state=State.IDLE)
    sid = session.session_id
    await a.create(session)
    deliver = a._on_event
    held: list[Any] = []
    monkeypatch.setattr(a, "_on_event", held.append)
    other = await b.get(sid)
    other.metadata["room"] = "blue"
    await b.update(other)
    remote_rev = b._cache[sid].mod_rev
    await eventually(lambda: any(e.kv.mod_revision == remote_rev for e in held))
    txn = a._txn
    interleaved: list[bool] = []

    async def watch_first(*args: Any) -> Any:
        if not interleaved:
            interleaved.append(True)
            monkeypatch.setattr(a, "_on_event", deliver)
            for event in held:
                deliver(event)
        return await txn(*args)

    monkeypatch.setattr(a, "_txn", watch_first)
    now = datetime.now(UTC)
    await a.touch(sid, now, now + timedelta(seconds=30))
    assert interleaved
    record = await raw.get(f"{etcd_prefix}/s/{sid}".encode())
    assert record is not None
    stored = decode_session(record.key, record.value)
    assert (stored.state, stored.last_active_at, stored.metadata) == (
        State.ACTIVE, now, {"room": "blue"})
    cached = a._cache[sid]
    assert (cached.session.state, cached.mod_rev, cached.dirty) == (
        State.ACTIVE, record.mod_revision, False)


async def test_later_remote_write_delivered_before_the_answer_is_kept(
    pair: tuple[EtcdStore, EtcdStore], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B writes on top of A's write, and A's watch brings that in before A's own answer:
    A's cache must keep B's newer record, not fall back to the one it wrote."""
    a, b = pair
    session = make_session(state=State.IDLE)
    sid = session.session_id
    await a.create(session)
    await b.get(sid)
    txn = a._txn
    newer: list[int] = []

    async def answer_late(*args: Any) -> Any:
        result = await txn(*args)
        if not newer:
            await eventually(lambda: b._cache[sid].mod_rev == result[1])
            theirs = await b.get(sid)
            theirs.metadata["room"] = "blue"
            await b.update(theirs)
            newer.append(b._cache[sid].mod_rev)
            await eventually(lambda: a._watch_rev >= newer[0])
        return result

    monkeypatch.setattr(a, "_txn", answer_late)
    now = datetime.now(UTC)
    await a.touch(sid, now, now + timedelta(seconds=30))
    cached = a._cache[sid]
    assert (cached.mod_rev, cached.session.metadata, cached.session.state) == (
        newer[0], {"room": "blue"}, State.ACTIVE)
    assert not cached.dirty


async def test_heartbeat_during_a_write_stays_dirty(
    pair: tuple[EtcdStore, EtcdStore], raw: aetcd.Client, etcd_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A local heartbeat that lands while the wake-up write is in flight is not in that
    write, so the entry must stay dirty and the next flush must carry it."""
    a, _ = pair
    session = make_session(state=State.IDLE)
    sid = session.session_id
    await a.create(session)
    first = datetime.now(UTC)
    later = first + timedelta(seconds=1)
    txn = a._txn
    landed: list[bool] = []

    async def heartbeat_meanwhile(*args: Any) -> Any:
        pending = txn(*args)
        landed.append(a.touch_nowait(sid, later, later + timedelta(seconds=30)))
        return await pending

    monkeypatch.setattr(a, "_txn", heartbeat_meanwhile)
    await a.touch(sid, first, first + timedelta(seconds=30))
    assert landed == [True]
    key = f"{etcd_prefix}/s/{sid}".encode()
    record = await raw.get(key)
    assert record is not None
    assert decode_session(record.key, record.value).last_active_at == first
    assert a._cache[sid].dirty
    await a.flush()
    record = await raw.get(key)
    assert record is not None
    assert decode_session(record.key, record.value).last_active_at == later
    assert not a._cache[sid].dirty


async def test_touch_nowait_does_only_the_heartbeats_that_need_no_io(
    etcd_endpoints: list[str], etcd_prefix: str,
) -> None:
    clock = Clock()
    a = EtcdStore(etcd_endpoints, prefix=etcd_prefix, monotonic=clock, stats_interval=3600)
    b = EtcdStore(etcd_endpoints, prefix=etcd_prefix, monotonic=clock, stats_interval=3600)
    await a.start()
    await b.start()
    try:
        active = make_session(timeout=60.0)
        idle = make_session(timeout=60.0, state=State.IDLE)
        await a.create(active)
        await a.create(idle)
        t = active.last_active_at
        requests = a.requests

        def beat(store: EtcdStore, sid: str, seconds: float, timeout: float = 60.0) -> bool:
            at = t + timedelta(seconds=seconds)
            return store.touch_nowait(sid, at, at + timedelta(seconds=timeout))

        def cached(store: EtcdStore, sid: str) -> tuple[datetime, datetime, bool]:
            entry = store._cache[sid]
            return entry.session.last_active_at, entry.session.expires_at, entry.dirty

        assert beat(b, active.session_id, 1) is False  # not in B's cache
        await b.get(active.session_id)
        assert beat(b, active.session_id, 1) is False  # cached on B but owned by A
        assert cached(b, active.session_id) == (t, active.expires_at, False)
        assert beat(a, idle.session_id, 1) is False  # the wake-up must be written
        assert a._cache[idle.session_id].session.state is State.IDLE
        assert not a._cache[idle.session_id].dirty
        assert beat(a, active.session_id, 1, timeout=90) is False  # new lease needed
        assert cached(a, active.session_id) == (t, active.expires_at, False)

        assert beat(a, active.session_id, 2) is True
        later = t + timedelta(seconds=2)
        assert cached(a, active.session_id) == (later, later + timedelta(seconds=60), True)
        assert a.requests == requests

        clock.now += 15.0  # a quarter of the timeout: the lease keepalive is due
        assert beat(a, active.session_id, 17) is False
        assert cached(a, active.session_id) == (later, later + timedelta(seconds=60), True)

        with pytest.raises(SessionExpired, match=active.session_id):
            beat(a, active.session_id, 63)
        assert a.requests == requests
    finally:
        await a.close()
        await b.close()


async def test_update_that_keeps_expiry_keeps_the_lease(
    etcd_endpoints: list[str], etcd_prefix: str, raw: aetcd.Client,
) -> None:
    """`update_session` counts as activity without extending expiry: the time left shrinks,
    the timeout does not, so neither the update nor the next heartbeat re-grants the lease."""
    clock = Clock()
    a = EtcdStore(etcd_endpoints, prefix=etcd_prefix, monotonic=clock, stats_interval=3600)
    await a.start()
    try:
        session = make_session(timeout=60.0)
        sid = session.session_id
        await a.create(session)
        lease = a._cache[sid].lease
        changed = await a.get(sid)
        changed.metadata["room"] = "blue"
        changed.last_active_at += timedelta(seconds=10)
        before = a.requests
        await a.update(changed)
        assert a.requests == before + 1  # one transaction: no grant, no revoke
        record = await raw.get(f"{etcd_prefix}/s/{sid}".encode())
        assert record is not None and record.lease == lease
        beat = changed.last_active_at + timedelta(seconds=1)
        assert a.touch_nowait(sid, beat, beat + timedelta(seconds=60))
        assert a.requests == before + 1
    finally:
        await a.close()


async def test_undecodable_record_is_reported_with_its_key_and_skipped(
    pair: tuple[EtcdStore, EtcdStore], raw: aetcd.Client, etcd_prefix: str
) -> None:
    a, _ = pair
    good = make_session()
    await a.create(good)
    bad_id = new_session_id()
    bad_key = f"{etcd_prefix}/s/{bad_id}"
    await raw.put(bad_key.encode(), b'{"v": 1, "garbage": true}')
    with pytest.raises(InvalidSession, match=bad_key):
        await a.get(bad_id)
    page, total = await a.list(SessionFilter())
    assert ([s.session_id for s in page], total) == ([good.session_id], 1)
    # the watch survived the bad record: later changes still arrive
    heard: list[str] = []
    a.add_listener(lambda s, reason: heard.append(s.session_id))
    await pair[1].delete(good.session_id)
    await eventually(lambda: heard == [good.session_id])


async def test_all_of_etcd_down_fails_fast_then_recovers(etcd_private: EtcdCluster) -> None:
    store = EtcdStore(etcd_private.endpoints, prefix="/down", timeout=1.0)
    other = EtcdStore(etcd_private.endpoints, prefix="/down", timeout=1.0)
    await store.start()
    await other.start()
    heard: list[str] = []
    store.add_listener(lambda s, reason: heard.append(s.session_id))
    try:
        etcd_private.kill_all()
        async with asyncio.timeout(5.0):  # fails fast: a hang would trip this
            with pytest.raises(StoreUnavailable, match=etcd_private.endpoints[0]):
                await store.create(make_session())
            with pytest.raises(StoreUnavailable, match="unreachable"):
                await store.count()
        await asyncio.to_thread(etcd_private.restart)
        session = make_session()
        await store.create(session)
        assert (await other.get(session.session_id)).session_id == session.session_id
        await other.delete(session.session_id)  # the watch reconnected by itself
        await eventually(lambda: heard == [session.session_id])
    finally:
        await store.close()
        await other.close()


async def test_service_continues_with_one_member_of_three_killed(
    etcd_cluster3: EtcdCluster,
) -> None:
    store = EtcdStore(etcd_cluster3.endpoints, prefix="/ha", timeout=5.0)
    watcher = EtcdStore(etcd_cluster3.endpoints[::-1], prefix="/ha", timeout=5.0)
    await store.start()
    await watcher.start()
    heard: list[str] = []
    watcher.add_listener(lambda s, reason: heard.append(s.session_id))
    try:
        first = make_session()
        await store.create(first)
        etcd_cluster3.kill(0)  # the member both `store` and its watch are talking to
        second = make_session()
        await store.create(second)
        assert (await store.get(first.session_id)).session_id == first.session_id
        assert await store.count() == 2
        await store.delete(first.session_id)
        await eventually(lambda: heard == [first.session_id])
    finally:
        await store.close()
        await watcher.close()
        await asyncio.to_thread(etcd_cluster3.restart, 0)


async def test_close_writes_what_is_still_dirty(
    etcd_endpoints: list[str], etcd_prefix: str
) -> None:
    a = EtcdStore(etcd_endpoints, prefix=etcd_prefix, stats_interval=3600)
    await a.start()
    session = make_session()
    await a.create(session)
    await a.set_stats(session.session_id, Stats(packets_received=77))
    await a.close()
    b = EtcdStore(etcd_endpoints, prefix=etcd_prefix)
    await b.start()
    try:
        assert (await b.get(session.session_id)).stats.packets_received == 77
    finally:
        await b.close()

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
from session.errors import InvalidSession, SessionNotFound, StoreUnavailable
from session.etcd import EtcdStore, SessionConflict
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

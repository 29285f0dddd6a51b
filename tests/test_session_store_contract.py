"""The Store contract, run against every store in `STORE_FACTORIES` (memory, etcd, ...)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from session.model import Session, SessionFilter, State, Stats, new_session_id
from session.store import (
    InvalidSession,
    SessionChanged,
    SessionExists,
    SessionExpired,
    SessionNotFound,
    Store,
    TooManyUserSessions,
)

T0 = datetime(2025, 11, 7, 14, 30, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_session(**overrides: Any) -> Session:
    fields: dict[str, Any] = {
        "session_id": new_session_id(),
        "user_id": "user1",
        "connection_id": str(uuid.uuid4()),
        "client_ip": "192.168.1.100",
        "client_port": 50000,
        "state": State.CONNECTING,
        "created_at": T0,
        "last_active_at": T0,
        "expires_at": at(1800),
        "server_addr": "0.0.0.0:9000",
        "metadata": {"device": "desktop"},
        "stats": Stats(packets_sent=1, current_rtt_ms=12.5),
        "token_hash": b"\x01" * 32,
    }
    fields.update(overrides)
    return Session(**fields)


async def test_create_then_get_round_trips_every_field(store: Store) -> None:
    session = make_session()
    await store.create(session)
    assert await store.get(session.session_id) == session
    assert await store.count() == 1


async def test_get_hands_out_copies(store: Store) -> None:
    session = make_session()
    await store.create(session)
    got = await store.get(session.session_id)
    got.metadata["device"] = "hacked"
    got.stats.packets_sent = 999
    got.state = State.CLOSED
    again = await store.get(session.session_id)
    assert again.metadata == {"device": "desktop"}
    assert again.stats.packets_sent == 1
    assert again.state is State.CONNECTING


async def test_create_copies_its_input(store: Store) -> None:
    session = make_session()
    await store.create(session)
    session.metadata["device"] = "changed"
    session.stats.bytes_sent = 7
    stored = await store.get(session.session_id)
    assert stored.metadata == {"device": "desktop"}
    assert stored.stats.bytes_sent == 0


async def test_create_duplicate_id_raises_and_keeps_original(store: Store) -> None:
    session = make_session()
    await store.create(session)
    clash = make_session(session_id=session.session_id, user_id="other")
    with pytest.raises(SessionExists, match=session.session_id):
        await store.create(clash)
    assert (await store.get(session.session_id)).user_id == "user1"
    assert await store.count() == 1


async def test_create_duplicate_connection_id_raises(store: Store) -> None:
    first = make_session()
    await store.create(first)
    second = make_session(connection_id=first.connection_id)
    with pytest.raises(SessionExists, match=first.connection_id):
        await store.create(second)
    with pytest.raises(SessionNotFound):
        await store.get(second.session_id)
    assert (await store.get_by_connection_id(first.connection_id)).session_id == first.session_id


@pytest.mark.parametrize(
    "overrides",
    [
        {"user_id": ""},
        {"user_id": "x" * 257},
        {"client_port": 70000},
        {"connection_id": "not-a-uuid"},
        {"session_id": "nope"},
        {"client_ip": "999.1.1.1"},
        {"expires_at": datetime(2025, 1, 1)},
        {"metadata": {f"k{i}": "v" for i in range(65)}},
    ],
    ids=["empty-user", "long-user", "port", "cid", "sid", "ip", "naive-time", "metadata"],
)
async def test_create_rejects_invalid_sessions_and_stores_nothing(
    store: Store, overrides: dict[str, Any]
) -> None:
    with pytest.raises(InvalidSession):
        await store.create(make_session(**overrides))
    assert await store.count() == 0


async def test_get_missing_names_the_id(store: Store) -> None:
    sid = new_session_id()
    with pytest.raises(SessionNotFound, match=f"^session not found: {sid}$"):
        await store.get(sid)


async def test_update_replaces_and_reindexes(store: Store) -> None:
    session = make_session()
    await store.create(session)
    old_cid = session.connection_id
    session.connection_id = str(uuid.uuid4())
    session.user_id = "user2"
    session.state = State.ACTIVE
    session.metadata["room"] = "lobby"
    await store.update(session)
    assert await store.get(session.session_id) == session
    assert (await store.get_by_connection_id(session.connection_id)).user_id == "user2"
    with pytest.raises(SessionNotFound, match=old_cid):
        await store.get_by_connection_id(old_cid)
    assert await store.get_by_user_id("user1") == []
    assert [s.session_id for s in await store.get_by_user_id("user2")] == [session.session_id]
    by_state = await store.count_by_state()
    assert by_state[State.ACTIVE] == 1 and by_state[State.CONNECTING] == 0


async def test_update_copies_its_input(store: Store) -> None:
    session = make_session()
    await store.create(session)
    session.metadata["room"] = "a"
    await store.update(session)
    session.metadata["room"] = "b"
    assert (await store.get(session.session_id)).metadata["room"] == "a"


async def test_update_missing_raises(store: Store) -> None:
    session = make_session()
    with pytest.raises(SessionNotFound, match=session.session_id):
        await store.update(session)
    assert await store.count() == 0


async def test_update_to_another_sessions_connection_raises(store: Store) -> None:
    a, b = make_session(), make_session()
    await store.create(a)
    await store.create(b)
    b.connection_id = a.connection_id
    with pytest.raises(SessionExists) as taken:
        await store.update(b)
    # the refusal names the connection and the session holding it
    assert str(taken.value) == f"connection {a.connection_id} already has a session: {a.session_id}"
    assert (await store.get_by_connection_id(a.connection_id)).session_id == a.session_id
    assert (await store.get(b.session_id)).connection_id != a.connection_id


async def test_update_rejects_invalid(store: Store) -> None:
    session = make_session()
    await store.create(session)
    session.client_port = -1
    with pytest.raises(InvalidSession):
        await store.update(session)
    assert (await store.get(session.session_id)).client_port == 50000


async def test_delete_returns_session_and_clears_indexes(store: Store) -> None:
    session = make_session()
    await store.create(session)
    deleted = await store.delete(session.session_id)
    assert deleted == session
    with pytest.raises(SessionNotFound):
        await store.get(session.session_id)
    with pytest.raises(SessionNotFound):
        await store.get_by_connection_id(session.connection_id)
    assert await store.get_by_user_id("user1") == []
    assert await store.count() == 0
    assert sum((await store.count_by_state()).values()) == 0
    assert await store.delete_expired(at(10**6)) == 0


async def test_delete_missing_raises(store: Store) -> None:
    sid = new_session_id()
    with pytest.raises(SessionNotFound, match=f"session not found: {sid}"):
        await store.delete(sid)


async def test_connection_id_is_reusable_after_delete(store: Store) -> None:
    first = make_session()
    await store.create(first)
    await store.delete(first.session_id)
    second = make_session(connection_id=first.connection_id)
    await store.create(second)
    assert (await store.get_by_connection_id(first.connection_id)).session_id == second.session_id


async def _populate(store: Store) -> list[Session]:
    layout = [
        ("alice", State.ACTIVE), ("bob", State.IDLE), ("alice", State.IDLE),
        ("carol", State.ACTIVE), ("alice", State.ACTIVE), ("bob", State.CONNECTING),
    ]
    sessions = [make_session(user_id=u, state=s) for u, s in layout]
    for session in reversed(sessions):  # insertion order must not matter
        await store.create(session)
    return sorted(sessions, key=lambda s: s.session_id)


@pytest.mark.parametrize(
    ("user_id", "state"),
    [(None, None), ("alice", None), (None, State.ACTIVE), ("alice", State.IDLE),
     ("nobody", None), ("bob", State.ACTIVE)],
)
async def test_list_filters_and_orders_by_session_id(
    store: Store, user_id: str | None, state: State | None
) -> None:
    sessions = await _populate(store)
    expected = [
        s for s in sessions
        if (user_id is None or s.user_id == user_id) and (state is None or s.state is state)
    ]
    got, total = await store.list(SessionFilter(user_id=user_id, state=state))
    assert got == expected
    assert total == len(expected)


async def test_list_pages_and_reports_total_before_paging(store: Store) -> None:
    sessions = await _populate(store)
    page, total = await store.list(SessionFilter(limit=2, offset=1))
    assert total == 6
    assert page == sessions[1:3]
    tail, total = await store.list(SessionFilter(limit=10, offset=5))
    assert (tail, total) == (sessions[5:], 6)
    past, total = await store.list(SessionFilter(offset=50))
    assert (past, total) == ([], 6)
    none, total = await store.list(SessionFilter(limit=0))
    assert (none, total) == ([], 6)
    alice, total = await store.list(SessionFilter(user_id="alice", limit=1, offset=1))
    assert total == 3
    assert alice == [s for s in sessions if s.user_id == "alice"][1:2]


async def test_list_returns_copies(store: Store) -> None:
    await _populate(store)
    page, _ = await store.list(SessionFilter())
    page[0].metadata.clear()
    again, _ = await store.list(SessionFilter())
    assert again[0].metadata == {"device": "desktop"}


async def test_get_by_user_id_orders_by_session_id(store: Store) -> None:
    sessions = await _populate(store)
    got = await store.get_by_user_id("alice")
    assert got == [s for s in sessions if s.user_id == "alice"]
    assert await store.get_by_user_id("nobody") == []


async def test_get_by_connection_id_missing_names_it(store: Store) -> None:
    cid = str(uuid.uuid4())
    with pytest.raises(SessionNotFound, match=f"session not found for connection: {cid}"):
        await store.get_by_connection_id(cid)


async def test_count_by_state_lists_every_state(store: Store) -> None:
    await _populate(store)
    assert await store.count_by_state() == {
        State.CONNECTING: 1, State.ACTIVE: 3, State.IDLE: 2,
        State.DISCONNECTING: 0, State.CLOSED: 0,
    }


async def test_expire_removes_exactly_the_due_sessions(store: Store) -> None:
    early = make_session(expires_at=at(10))
    boundary = make_session(expires_at=at(20))
    late = make_session(expires_at=at(30))
    for s in (late, boundary, early):
        await store.create(s)
    assert await store.expire(at(5)) == []
    removed = await store.expire(at(20))  # expiring exactly now counts as expired
    assert sorted(s.session_id for s in removed) == sorted([early.session_id, boundary.session_id])
    assert await store.count() == 1
    assert (await store.get(late.session_id)) == late
    with pytest.raises(SessionNotFound):
        await store.get_by_connection_id(early.connection_id)
    assert await store.delete_expired(at(30)) == 1
    assert await store.count() == 0


async def test_expire_respects_extensions_and_shortenings(store: Store) -> None:
    extended = make_session(expires_at=at(10))
    shortened = make_session(expires_at=at(100))
    await store.create(extended)
    await store.create(shortened)
    extended.expires_at = at(50)
    await store.update(extended)
    shortened.expires_at = at(5)
    await store.update(shortened)
    assert [s.session_id for s in await store.expire(at(10))] == [shortened.session_id]
    assert await store.delete_expired(at(49)) == 0
    assert await store.delete_expired(at(50)) == 1


async def test_touch_refreshes_and_wakes(store: Store) -> None:
    connecting = make_session(state=State.CONNECTING, expires_at=at(60))
    idle = make_session(state=State.IDLE, expires_at=at(60))
    leaving = make_session(state=State.DISCONNECTING, expires_at=at(60))
    for s in (connecting, idle, leaving):
        await store.create(s)
    for s in (connecting, idle, leaving):
        await store.touch(s.session_id, at(30), at(90))
    for s, state in ((connecting, State.ACTIVE), (idle, State.ACTIVE),
                     (leaving, State.DISCONNECTING)):
        got = await store.get(s.session_id)
        assert (got.state, got.last_active_at, got.expires_at) == (state, at(30), at(90))
    assert (await store.count_by_state())[State.ACTIVE] == 2
    assert await store.delete_expired(at(60)) == 0
    assert await store.delete_expired(at(90)) == 3


async def test_touch_never_revives_an_expired_session(store: Store) -> None:
    session = make_session(state=State.IDLE, expires_at=at(60))
    await store.create(session)
    with pytest.raises(SessionExpired, match=session.session_id):
        await store.touch(session.session_id, at(60), at(120))
    got = await store.get(session.session_id)
    assert (got.state, got.expires_at) == (State.IDLE, at(60))


async def test_touch_missing_raises(store: Store) -> None:
    sid = new_session_id()
    with pytest.raises(SessionNotFound, match=sid):
        await store.touch(sid, at(0), at(10))


async def test_touch_that_shortens_expiry_is_honoured(store: Store) -> None:
    session = make_session(expires_at=at(100))
    await store.create(session)
    await store.touch(session.session_id, at(1), at(5))
    assert await store.delete_expired(at(5)) == 1


async def test_close_is_idempotent(store: Store) -> None:
    await store.close()
    await store.close()


async def test_set_stats_replaces_only_stats_and_copies(store: Store) -> None:
    session = make_session()
    await store.create(session)
    stats = Stats(packets_sent=5, packets_received=4, bytes_sent=300, bytes_received=200,
                  retransmissions=1, current_rtt_ms=33.0)
    await store.set_stats(session.session_id, stats)
    stats.packets_sent = 99
    got = await store.get(session.session_id)
    assert got.stats == Stats(5, 4, 300, 200, 1, 33.0)
    got.stats = session.stats
    assert got == session


async def test_set_stats_missing_raises(store: Store) -> None:
    sid = new_session_id()
    with pytest.raises(SessionNotFound, match=sid):
        await store.set_stats(sid, Stats())


# -- the per-user limit, conditional delete and the cheap count


async def test_create_within_a_user_limit_refuses_past_it_and_stores_nothing(
    store: Store,
) -> None:
    for _ in range(3):
        await store.create(make_session(), max_user_sessions=3)
    refused = make_session()
    with pytest.raises(TooManyUserSessions, match="'user1' already has 3 sessions"):
        await store.create(refused, max_user_sessions=3)
    with pytest.raises(SessionNotFound):
        await store.get(refused.session_id)
    with pytest.raises(SessionNotFound):
        await store.get_by_connection_id(refused.connection_id)
    assert len(await store.get_by_user_id("user1")) == 3
    await store.create(make_session(user_id="user2"), max_user_sessions=3)  # per user
    await store.create(make_session(), max_user_sessions=4)  # the limit is the caller's
    assert await store.count() == 5


@pytest.mark.parametrize("limit", [1, 2])
async def test_a_user_limit_admits_exactly_that_many_sessions(store: Store, limit: int) -> None:
    # the smallest limits: a user with none yet gets the first even under a limit of 1, and
    # one session counts as one
    for _ in range(limit):
        await store.create(make_session(), max_user_sessions=limit)
    refusal = f"^user 'user1' already has {limit} sessions stored, at most {limit}$"
    with pytest.raises(TooManyUserSessions, match=refusal):
        await store.create(make_session(), max_user_sessions=limit)
    assert len(await store.get_by_user_id("user1")) == limit


async def test_creates_racing_for_a_users_last_slots_never_exceed_the_limit(
    store: Store,
) -> None:
    await store.create(make_session(), max_user_sessions=3)
    racers = [make_session() for _ in range(6)]
    results = await asyncio.gather(
        *(store.create(s, max_user_sessions=3) for s in racers), return_exceptions=True)
    won = [s for s, r in zip(racers, results, strict=True) if r is None]
    assert len(won) == 2
    assert all(isinstance(r, TooManyUserSessions) for r in results if r is not None)
    stored = {s.session_id for s in await store.get_by_user_id("user1")}
    assert len(stored) == 3 and {s.session_id for s in won} <= stored


async def test_delete_only_if_removes_nothing_when_the_condition_fails(store: Store) -> None:
    session = make_session(state=State.DISCONNECTING)
    await store.create(session)
    seen: list[Session] = []

    def unheld(s: Session) -> bool:
        seen.append(s)
        return s.state is State.DISCONNECTING

    await store.update(dataclasses.replace(session, state=State.ACTIVE))  # a resume, say
    with pytest.raises(SessionChanged, match=session.session_id):
        await store.delete(session.session_id, only_if=unheld)
    assert (await store.get(session.session_id)).state is State.ACTIVE
    seen[-1].state = State.CLOSED  # the predicate gets a copy
    assert (await store.get(session.session_id)).state is State.ACTIVE
    changed = await store.get(session.session_id)
    changed.state = State.DISCONNECTING
    await store.update(changed)
    removed = await store.delete(session.session_id, only_if=unheld)
    assert removed.state is State.DISCONNECTING
    assert await store.count() == 0


async def test_approximate_count_follows_creates_and_deletes(store: Store) -> None:
    sessions = [make_session(user_id=f"u{i}") for i in range(5)]
    for session in sessions:
        await store.create(session)
    await store.delete(sessions[0].session_id)
    async with asyncio.timeout(5):  # a shared store learns it from its watch
        while await store.approximate_count() != 4:
            await asyncio.sleep(0.01)
    assert await store.count() == 4


# -- the heartbeat without I/O, and listeners


async def test_touch_nowait_does_what_touch_would_or_changes_nothing(store: Store) -> None:
    sessions = [make_session(state=state, expires_at=at(60)) for state in State]
    for s in sessions:
        await store.create(s)
    for s in sessions:
        done = store.touch_nowait(s.session_id, at(30), at(90))
        wakes = s.state in (State.CONNECTING, State.IDLE)
        got = await store.get(s.session_id)
        if done:
            woken = State.ACTIVE if wakes else s.state
            assert (got.state, got.last_active_at, got.expires_at) == (woken, at(30), at(90))
            # a wake-up is reported as `touch` reports it: the state left and the session now
            assert done == ((s.state, got) if wakes else True)
        else:
            assert done is False and got == s
        if not done:
            await store.touch(s.session_id, at(30), at(90))  # what the manager does then
    assert await store.delete_expired(at(60)) == 0
    assert await store.delete_expired(at(90)) == len(sessions)


async def test_touch_nowait_does_the_common_heartbeat(store: Store) -> None:
    # what both our stores promise: a session that this store touched last, is ACTIVE and
    # keeps its timeout is kept alive without I/O (it is every keepalive after the first)
    session = make_session(state=State.ACTIVE, expires_at=at(60))
    await store.create(session)
    await store.touch(session.session_id, at(1), at(61))
    for beat in (2, 3, 4):
        assert store.touch_nowait(session.session_id, at(beat), at(beat + 60)) is True
    got = await store.get(session.session_id)
    assert (got.state, got.last_active_at, got.expires_at) == (State.ACTIVE, at(4), at(64))
    assert await store.delete_expired(at(63)) == 0
    assert await store.delete_expired(at(64)) == 1


async def test_touch_nowait_never_revives_an_expired_session(store: Store) -> None:
    session = make_session(state=State.ACTIVE, expires_at=at(60))
    await store.create(session)
    await store.touch(session.session_id, at(1), at(61))
    try:
        done = store.touch_nowait(session.session_id, at(61), at(121))
    except SessionExpired as exc:
        assert session.session_id in str(exc)
    else:
        assert done is False  # left to `touch`, which refuses
        with pytest.raises(SessionExpired):
            await store.touch(session.session_id, at(61), at(121))
    assert (await store.get(session.session_id)).expires_at == at(61)


async def test_touch_nowait_on_a_missing_session_raises_or_declines(store: Store) -> None:
    sid = new_session_id()
    try:
        assert store.touch_nowait(sid, at(0), at(10)) is False
    except SessionNotFound as exc:
        assert sid in str(exc)
    with pytest.raises(SessionNotFound):
        await store.get(sid)


async def test_listeners_never_hear_of_removals_made_through_the_store(store: Store) -> None:
    heard: list[tuple[str, str]] = []
    store.add_listener(lambda s, reason: heard.append((s.session_id, reason)))
    deleted, expired, kept = (make_session(expires_at=at(10)) for _ in range(3))
    for s in (deleted, expired, kept):
        await store.create(s)
    await store.delete(deleted.session_id)
    kept.expires_at = at(100)
    await store.update(kept)
    assert [s.session_id for s in await store.expire(at(10))] == [expired.session_id]
    await store.delete(kept.session_id)
    async with asyncio.timeout(5):  # a shared store hears its own removals on its watch too
        while await store.approximate_count() != 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert heard == []


async def test_listeners_hear_of_removals_made_elsewhere(
    store_pair: tuple[Store, Store],
) -> None:
    here, elsewhere = store_pair
    heard: list[tuple[str, str]] = []

    def listener(s: Session, reason: str) -> None:
        heard.append((s.session_id, reason))

    here.add_listener(listener)
    live = make_session(expires_at=datetime.now(UTC) + timedelta(hours=1))
    dead = make_session(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    later = make_session(user_id="user2", expires_at=datetime.now(UTC) + timedelta(hours=1))
    for s in (live, dead, later):
        await here.create(s)
    await elsewhere.delete(live.session_id)
    await elsewhere.delete(dead.session_id)
    async with asyncio.timeout(5):
        while len(heard) < 2:
            await asyncio.sleep(0.01)
    assert sorted(heard) == sorted([(live.session_id, "deleted"), (dead.session_id, "expired")])
    here.remove_listener(listener)
    here.remove_listener(listener)  # a second time: harmless
    await elsewhere.delete(later.session_id)
    async with asyncio.timeout(5):  # once `here` knows of the delete, it has not told us
        while await here.approximate_count() != 0:
            await asyncio.sleep(0.01)
    assert len(heard) == 2

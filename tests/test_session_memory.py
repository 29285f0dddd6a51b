"""MemoryStore specifics beyond the shared contract: never suspending, and the expiry heap."""

from __future__ import annotations

import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from session.errors import SessionExists
from session.memory import MemoryStore
from session.model import Session, SessionFilter, State, Stats, new_session_id

T0 = datetime(2025, 11, 7, 14, 30, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run_now(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("MemoryStore suspended")


def make(expires: float = 60, user_id: str = "u") -> Session:
    return Session(new_session_id(), user_id, str(uuid.uuid4()), "10.0.0.1", 1, State.ACTIVE,
                   T0, T0, at(expires))


def test_every_method_completes_without_suspending() -> None:
    store = MemoryStore()
    s = make()
    run_now(store.create(s))
    assert run_now(store.get(s.session_id)) == s
    run_now(store.update(s))
    run_now(store.touch(s.session_id, at(1), at(61)))
    run_now(store.set_stats(s.session_id, Stats(packets_sent=1)))
    assert run_now(store.list(SessionFilter()))[1] == 1
    assert run_now(store.get_by_connection_id(s.connection_id)).session_id == s.session_id
    assert len(run_now(store.get_by_user_id("u"))) == 1
    assert run_now(store.count()) == 1
    assert run_now(store.count_by_state())[State.ACTIVE] == 1
    assert run_now(store.delete_expired(at(61))) == 1
    run_now(store.close())


def test_heartbeats_never_grow_the_heap() -> None:
    store = MemoryStore()
    sessions = [make() for _ in range(10)]
    for s in sessions:
        run_now(store.create(s))
    for step in range(1, 50):
        for s in sessions:
            store.touch_nowait(s.session_id, at(step), at(step + 60))
    assert store.heap_size() == 10


def test_sweep_work_is_bounded_by_what_came_due() -> None:
    store = MemoryStore()
    early = [make(expires=10) for _ in range(5)]
    late = [make(expires=1000) for _ in range(500)]
    for s in early + late:
        run_now(store.create(s))
    assert run_now(store.delete_expired(at(10))) == 5
    # nothing else was due, so nothing else was touched: the late entries are still the
    # originals, not re-filed copies
    assert store.heap_size() == 500
    assert run_now(store.delete_expired(at(999))) == 0
    assert store.heap_size() == 500


def test_extended_sessions_are_refiled_once_then_left_alone() -> None:
    store = MemoryStore()
    s = make(expires=10)
    run_now(store.create(s))
    store.touch_nowait(s.session_id, at(5), at(100))
    assert run_now(store.delete_expired(at(10))) == 0  # re-filed at 100
    assert store.heap_size() == 1
    assert run_now(store.delete_expired(at(99))) == 0
    assert run_now(store.delete_expired(at(100))) == 1
    assert store.heap_size() == 0


def test_deleted_sessions_leave_bounded_garbage() -> None:
    store = MemoryStore()
    keep = [make(expires=10**6) for _ in range(10)]
    for s in keep:
        run_now(store.create(s))
    for _ in range(5000):
        s = make(expires=10**6)
        run_now(store.create(s))
        run_now(store.delete(s.session_id))
    assert store.heap_size() <= 2 * len(keep) + 1024 + 1
    assert run_now(store.delete_expired(at(10**6))) == 10


def test_recreated_session_id_is_not_expired_by_its_predecessors_entry() -> None:
    store = MemoryStore()
    first = make(expires=10)
    run_now(store.create(first))
    run_now(store.delete(first.session_id))
    second = make(expires=100)
    second.session_id = first.session_id
    run_now(store.create(second))
    assert run_now(store.delete_expired(at(10))) == 0
    assert run_now(store.get(first.session_id)).expires_at == at(100)


@pytest.mark.parametrize("shorten_with", ["update", "touch"])
def test_shortened_expiry_is_found_in_time(shorten_with: str) -> None:
    store = MemoryStore()
    s = make(expires=1000)
    run_now(store.create(s))
    if shorten_with == "update":
        s.expires_at = at(5)
        run_now(store.update(s))
    else:
        store.touch_nowait(s.session_id, at(1), at(5))
    assert run_now(store.delete_expired(at(4))) == 0
    assert run_now(store.delete_expired(at(5))) == 1


def _user_index(store: MemoryStore, user_id: str) -> object:
    return store._by_user.get(user_id)


def _ids(sessions: list[Session]) -> list[str]:
    return [s.session_id for s in sessions]


def test_user_index_goes_from_bare_id_to_set_and_back() -> None:
    store = MemoryStore()
    a, b = make(user_id="alice"), make(user_id="alice")
    a.state, b.state = State.ACTIVE, State.IDLE
    first, second = sorted([a, b], key=lambda s: s.session_id)

    run_now(store.create(first))  # 1 session: the bare id, no set
    assert _user_index(store, "alice") == first.session_id
    assert _ids(run_now(store.get_by_user_id("alice"))) == [first.session_id]
    assert _ids(run_now(store.list(SessionFilter(user_id="alice")))[0]) == [first.session_id]
    assert run_now(store.list(SessionFilter(user_id="alice", state=first.state)))[1] == 1
    assert run_now(store.list(SessionFilter(user_id="alice", state=State.CLOSED)))[1] == 0

    run_now(store.create(second))  # 2 sessions: a set
    assert _user_index(store, "alice") == {first.session_id, second.session_id}
    both = [first.session_id, second.session_id]
    assert _ids(run_now(store.get_by_user_id("alice"))) == both
    assert _ids(run_now(store.list(SessionFilter(user_id="alice")))[0]) == both
    for s in (first, second):
        got = run_now(store.list(SessionFilter(user_id="alice", state=s.state)))[0]
        assert _ids(got) == [s.session_id]

    # an update that keeps the user keeps both; one that moves a session away shrinks the set
    run_now(store.update(second))
    assert _user_index(store, "alice") == {first.session_id, second.session_id}
    moved = second.copy()
    moved.user_id = "bob"
    run_now(store.update(moved))
    assert _user_index(store, "alice") == first.session_id
    assert _user_index(store, "bob") == second.session_id
    assert _ids(run_now(store.get_by_user_id("alice"))) == [first.session_id]
    run_now(store.update(second))  # and back to alice
    assert _user_index(store, "alice") == {first.session_id, second.session_id}
    assert _user_index(store, "bob") is None
    assert run_now(store.get_by_user_id("bob")) == []

    run_now(store.delete(second.session_id))  # back to 1: the bare id again
    assert _user_index(store, "alice") == first.session_id
    assert _ids(run_now(store.get_by_user_id("alice"))) == [first.session_id]
    assert run_now(store.list(SessionFilter(user_id="alice", state=second.state)))[1] == 0

    assert run_now(store.delete_expired(at(60))) == 1  # 0 sessions: no entry at all
    assert _user_index(store, "alice") is None
    assert run_now(store.get_by_user_id("alice")) == []
    assert run_now(store.list(SessionFilter(user_id="alice"))) == ([], 0)


def test_equal_dues_expire_each_session_exactly_once() -> None:
    store = MemoryStore()
    sessions = [make(expires=10) for _ in range(20)]
    for s in sessions:
        run_now(store.create(s))
    for s in sessions[::2]:  # half were extended: re-filed at the same later due
        store.touch_nowait(s.session_id, at(1), at(20))
    expired = run_now(store.expire(at(10)))
    assert sorted(_ids(expired)) == sorted(s.session_id for s in sessions[1::2])
    assert store.heap_size() == 10
    assert run_now(store.delete_expired(at(19))) == 0
    expired = run_now(store.expire(at(20)))
    assert sorted(_ids(expired)) == sorted(s.session_id for s in sessions[::2])
    assert store.heap_size() == 0


def test_shortening_to_the_live_due_or_later_pushes_nothing() -> None:
    store = MemoryStore()
    s = make(expires=10)
    run_now(store.create(s))
    store.touch_nowait(s.session_id, at(1), at(200))  # extended: the entry stays at 10
    store.touch_nowait(s.session_id, at(2), at(10))  # shortened to exactly the live due
    assert store.heap_size() == 1
    store.touch_nowait(s.session_id, at(3), at(100))  # extended again
    s.expires_at = at(50)
    s.last_active_at = at(3)
    run_now(store.update(s))  # shortened, but still later than the live due
    assert store.heap_size() == 1
    assert run_now(store.delete_expired(at(10))) == 0  # re-filed at 50
    assert store.heap_size() == 1
    assert run_now(store.delete_expired(at(49))) == 0
    assert run_now(store.delete_expired(at(50))) == 1
    assert store.heap_size() == 0


@pytest.mark.parametrize("extended", [False, True])
def test_stale_entry_alike_the_live_one_neither_doubles_nor_loses_expiry(extended: bool) -> None:
    store = MemoryStore()
    first = make(expires=10)
    run_now(store.create(first))
    run_now(store.delete(first.session_id))
    # the same id back, with the same due: the heap holds two identical entries
    again = make(expires=10)
    again.session_id = first.session_id
    run_now(store.create(again))
    assert store.heap_size() == 2
    if extended:
        store.touch_nowait(again.session_id, at(5), at(30))
        assert run_now(store.expire(at(10))) == []  # re-filed once, the twin skipped
        assert store.heap_size() == 1
        expired = run_now(store.expire(at(30)))
    else:
        expired = run_now(store.expire(at(10)))
    assert _ids(expired) == [again.session_id]
    assert store.heap_size() == 0
    assert run_now(store.count()) == 0
    assert run_now(store.expire(at(10**6))) == []


def test_sessions_leaving_the_store_do_not_share_their_empty_metadata() -> None:
    # the store keeps one shared empty dict for sessions without metadata; what it hands out,
    # deleted and expired sessions included, must each own theirs
    store = MemoryStore()
    a, b, c = make(60), make(1), make(60)
    for session in (a, b, c):
        run_now(store.create(session))
    deleted = run_now(store.delete(a.session_id))
    expired = run_now(store.expire(at(2)))
    fetched = run_now(store.get(c.session_id))
    deleted.metadata["x"] = "1"
    expired[0].metadata["y"] = "2"
    fetched.metadata["z"] = "3"
    assert run_now(store.get(c.session_id)).metadata == {}
    assert [s.session_id for s in expired] == [b.session_id]
    assert (deleted.metadata, expired[0].metadata) == ({"x": "1"}, {"y": "2"})


@pytest.mark.parametrize(("created", "compacted_at"), [(1100, 37), (1101, 38)])
def test_the_heap_is_rebuilt_exactly_when_dead_entries_pass_twice_the_live_plus_1024(
        created: int, compacted_at: int) -> None:
    # deletes leave their entries; the heap is rebuilt on the delete after which it holds more
    # than 2 * live + 1024 entries, not one delete sooner or later
    store = MemoryStore()
    sessions = [make(expires=10**6) for _ in range(created)]
    for s in sessions:
        run_now(store.create(s))
    live = created
    for s in sessions:
        run_now(store.delete(s.session_id))
        live -= 1
        if live == compacted_at + 1:
            assert store.heap_size() == created  # 2 * live + 1024 >= created: not yet
        if live == compacted_at:
            break
    assert store.heap_size() == compacted_at  # rebuilt from the live entries alone
    assert run_now(store.delete_expired(at(10**6))) == compacted_at


@pytest.mark.parametrize("state", [State.CONNECTING, State.IDLE])
def test_a_heartbeat_moves_a_waking_session_from_its_state_index_to_active(state: State) -> None:
    store = MemoryStore()
    s, other = make(), make()
    s.state = other.state = state
    run_now(store.create(s))
    run_now(store.create(other))
    woke = store.touch_nowait(s.session_id, at(1), at(61))
    assert isinstance(woke, tuple) and woke[0] is state and woke[1].state is State.ACTIVE
    counts = run_now(store.count_by_state())
    assert (counts[state], counts[State.ACTIVE]) == (1, 1)
    assert _ids(run_now(store.list(SessionFilter(state=state)))[0]) == [other.session_id]
    assert _ids(run_now(store.list(SessionFilter(state=State.ACTIVE)))[0]) == [s.session_id]
    assert _ids(run_now(store.list(SessionFilter(user_id="u", state=state)))[0]) == \
        [other.session_id]


# ------------------------------------------------------------------ restore (a restart)


def restored(n: int, expires: float, connection_id: str | None = None,
             metadata: dict[str, str] | None = None) -> Session:
    s = make(expires, user_id=f"u{n}")
    if connection_id is not None:
        s.connection_id = connection_id
    s.metadata = metadata or {}
    return s


def test_restore_fills_an_empty_store_as_create_would() -> None:
    """Each session is stored as given and indexed (by connection, user and state), its
    metadata kept (none reads back as an empty dict), and filed for expiry at its time."""
    store = MemoryStore()
    roomy = restored(1, 30, metadata={"room": "7"})
    bare = restored(2, 60)
    unbound = [restored(3, 90, connection_id=""), restored(4, 90, connection_id="")]
    store.restore([roomy, bare, *unbound])  # sessions without a connection may be several
    assert run_now(store.get(roomy.session_id)).metadata == {"room": "7"}
    assert run_now(store.get(bare.session_id)).metadata == {}
    assert run_now(store.get_by_connection_id(bare.connection_id)).session_id == bare.session_id
    assert [s.session_id for s in run_now(store.get_by_user_id("u1"))] == [roomy.session_id]
    assert run_now(store.count_by_state())[State.ACTIVE] == 4
    assert run_now(store.expire(at(29))) == []
    assert [s.session_id for s in run_now(store.expire(at(30)))] == [roomy.session_id]
    assert [s.session_id for s in run_now(store.expire(at(90)))] == [
        bare.session_id, *(s.session_id for s in unbound)]
    assert run_now(store.count()) == 0


@pytest.mark.parametrize("clash", ["id", "connection"])
def test_restore_refuses_sessions_that_share_an_id_or_a_connection(clash: str) -> None:
    store = MemoryStore()
    first, second = restored(1, 60), restored(2, 60)
    if clash == "id":
        second.session_id = first.session_id  # its own connection id: only the id clashes
    else:
        second.connection_id = first.connection_id
    with pytest.raises(SessionExists) as info:
        store.restore([first, second])
    assert str(info.value) == "two sessions share an id or a connection id"
    assert run_now(store.count()) == 0  # nothing taken


def test_restore_refuses_a_store_that_holds_sessions_naming_how_many() -> None:
    store = MemoryStore()
    store.restore([restored(1, 60), restored(2, 60)])
    with pytest.raises(SessionExists) as info:
        store.restore([restored(3, 60)])
    assert str(info.value) == "the store already holds 2 sessions"
    assert run_now(store.count()) == 2

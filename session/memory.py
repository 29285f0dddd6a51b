"""`MemoryStore`: the in-process session store.

No method ever suspends (there is no real ``await`` inside), so under asyncio each call is
atomic without a lock (a caller may drive one synchronously with ``coro.send(None)``), and
`touch_nowait` always does the heartbeat. Sessions leave only through this store's own methods,
so there is never anything to tell listeners of (`add_listener` is the `Store` default, which
keeps nothing).

Indexes: by id and by connection id (dicts, O(1)); by user, a dict to the user's one session id
(the common case) or to a set of ids once the user has several; by state, a dict per state with
``None`` values, used as a set (it takes less memory than a `set`). Expiry uses a lazy min-heap of
``(due, session_id)`` with exactly one live entry per session whose key is never later than the
session's real expiry. Extending a session (every heartbeat) leaves the heap alone; when an entry
comes due, `expire` either removes the session or re-files it at its real expiry. So the work
of `expire` is proportional to the sessions that came due since the last sweep (expired, or
extended and re-filed once), never to the number stored.

Sessions are copied on the way in and on the way out: nothing a caller holds aliases state.
"""

from __future__ import annotations

import builtins
import heapq
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from mypy_extensions import mypyc_attr

from session.errors import SessionExists, SessionExpired
from session.model import Session, SessionFilter, State, Stats, validate_session
from session.store import (
    Store,
    Wake,
    changed,
    not_found,
    not_found_for_connection,
    too_many_user_sessions,
)

__all__ = ["MemoryStore"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_CONNECTING: Final = State.CONNECTING
_IDLE: Final = State.IDLE
_ACTIVE: Final = State.ACTIVE


#: the metadata of every stored session that has none: never mutated (stored sessions are
#: replaced, not changed, and copied on the way out), so one dict serves them all
_NO_METADATA: Final[dict[str, str]] = {}


def _stored_copy(session: Session) -> Session:
    stored = session.copy()
    if not stored.metadata:
        stored.metadata = _NO_METADATA
    return stored


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled; tests and users may subclass it
class MemoryStore(Store):
    """Sessions in dicts, safe under concurrent asyncio tasks because nothing awaits."""

    __slots__ = ("_by_connection", "_by_state", "_by_user", "_due", "_heap", "_sessions")

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._by_connection: dict[str, str] = {}
        # a user with one session maps to its id, a user with several to a set of ids: most
        # users have one, and a one-member set costs ~200 bytes more than the bare id
        self._by_user: dict[str, str | set[str]] = {}
        # values are always None: a dict of n str keys takes ~21-38 bytes per key, a set 42-105
        self._by_state: dict[State, dict[str, None]] = {state: {} for state in State}
        # heap entries are (due, session_id), due in integer microseconds since the epoch:
        # exact like the datetimes, but much cheaper to compare; equal dues order by session
        # id. _due[session_id] is the due of the session's one live entry (the same int
        # object), so an entry is live exactly when its due equals _due[its session id]: entries
        # left behind by deletes and re-filing are recognised and skipped. `_schedule` never
        # pushes a due equal to the live one, so two entries can only look alike when one was
        # left behind by a deleted session whose id came back; whichever `expire` meets first
        # settles the session (removes it, or re-files it at a later due), which makes the
        # other one stale: no double expiry, none lost.
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}

    # -- helpers (synchronous, so callers stay atomic)

    def _schedule(self, session_id: str, expires_at: datetime) -> None:
        due = (expires_at - _EPOCH) // _MICROSECOND
        live = self._due.get(session_id)
        if live is not None and live <= due:
            # the live entry comes due no later than the new expiry, so it keeps the invariant
            # (`expire` re-files it then); pushing would only leave a stale entry behind, or two
            # alike if the dues were equal
            return
        heapq.heappush(self._heap, (due, session_id))
        self._due[session_id] = due

    def _compact(self) -> None:
        # Deletes leave dead heap entries behind; rebuilding once they outnumber the live ones
        # keeps memory bounded at an amortised O(1) per delete.
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._heap = [(due, sid) for sid, due in self._due.items()]
            heapq.heapify(self._heap)

    def _unindex(self, session: Session) -> None:
        sid, user_id = session.session_id, session.user_id
        self._by_connection.pop(session.connection_id, None)
        by_user = self._by_user
        mine = by_user.get(user_id)
        if isinstance(mine, str):
            if mine == sid:
                del by_user[user_id]
        elif mine is not None:
            mine.discard(sid)
            if len(mine) == 1:
                by_user[user_id] = next(iter(mine))  # back to the bare id
            elif not mine:
                del by_user[user_id]
        self._by_state[session.state].pop(sid, None)

    def _index(self, session: Session) -> None:
        sid, user_id = session.session_id, session.user_id
        if session.connection_id:  # empty: no connection holds the session yet
            self._by_connection[session.connection_id] = sid
        by_user = self._by_user
        mine = by_user.get(user_id)
        if mine is None:
            by_user[user_id] = sid
        elif isinstance(mine, str):
            if mine != sid:
                by_user[user_id] = {mine, sid}
        else:
            mine.add(sid)
        self._by_state[session.state][sid] = None

    def _user_count(self, user_id: str) -> int:
        mine = self._by_user.get(user_id)
        if mine is None:
            return 0
        return 1 if isinstance(mine, str) else len(mine)

    def _remove(self, session_id: str) -> Session:
        session = self._sessions.pop(session_id)
        self._unindex(session)
        del self._due[session_id]
        if session.metadata is _NO_METADATA:  # it leaves the store: its own dict from now on
            session.metadata = {}
        return session

    # -- the Store contract

    async def create(self, session: Session, *, max_user_sessions: int | None = None) -> None:
        validate_session(session)
        sid = session.session_id
        if sid in self._sessions:
            raise SessionExists(f"session already exists: {sid}")
        owner = self._by_connection.get(session.connection_id)
        if owner is not None:
            raise SessionExists(
                f"connection {session.connection_id} already has a session: {owner}"
            )
        if max_user_sessions is not None:
            # atomic like every call here: nothing between this count and the write awaits
            count = self._user_count(session.user_id)
            if count >= max_user_sessions:
                raise too_many_user_sessions(session.user_id, count, max_user_sessions)
        stored = _stored_copy(session)
        self._sessions[sid] = stored
        self._index(stored)
        self._schedule(sid, stored.expires_at)

    async def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise not_found(session_id)
        return session.copy()

    async def update(self, session: Session) -> None:
        validate_session(session)
        sid = session.session_id
        old = self._sessions.get(sid)
        if old is None:
            raise not_found(sid)
        owner = self._by_connection.get(session.connection_id)
        if owner is not None and owner != sid:
            raise SessionExists(
                f"connection {session.connection_id} already has a session: {owner}"
            )
        stored = _stored_copy(session)
        self._unindex(old)
        self._sessions[sid] = stored
        self._index(stored)
        if stored.expires_at < old.expires_at:
            self._schedule(sid, stored.expires_at)
            self._compact()

    async def delete(
        self, session_id: str, *, only_if: Callable[[Session], bool] | None = None
    ) -> Session:
        stored = self._sessions.get(session_id)
        if stored is None:
            raise not_found(session_id)
        if only_if is not None and not only_if(stored.copy()):
            raise changed(session_id)
        removed = self._remove(session_id)
        self._compact()
        return removed

    async def list(self, filter: SessionFilter) -> tuple[builtins.list[Session], int]:
        ids = self._matching_ids(filter)
        ids.sort()
        total = len(ids)
        end = None if filter.limit is None else filter.offset + filter.limit
        sessions = self._sessions
        return [sessions[sid].copy() for sid in ids[filter.offset:end]], total

    def _matching_ids(self, filter: SessionFilter) -> builtins.list[str]:
        user_id, state = filter.user_id, filter.state
        if user_id is None and state is None:
            return builtins.list(self._sessions)
        if user_id is None:
            assert state is not None
            return builtins.list(self._by_state[state])
        mine = self._by_user.get(user_id)
        if mine is None:
            return []
        if isinstance(mine, str):
            return [mine] if state is None or mine in self._by_state[state] else []
        if state is None:
            return builtins.list(mine)
        in_state = self._by_state[state]
        if len(in_state) < len(mine):
            return [sid for sid in in_state if sid in mine]
        return [sid for sid in mine if sid in in_state]

    async def get_by_connection_id(self, connection_id: str) -> Session:
        sid = self._by_connection.get(connection_id)
        if sid is None:
            raise not_found_for_connection(connection_id)
        return self._sessions[sid].copy()

    async def get_by_user_id(self, user_id: str) -> builtins.list[Session]:
        sessions = self._sessions
        mine = self._by_user.get(user_id)
        if mine is None:
            return []
        if isinstance(mine, str):
            return [sessions[mine].copy()]
        return [sessions[sid].copy() for sid in sorted(mine)]

    async def expire(self, now: datetime) -> builtins.list[Session]:
        heap, due, sessions = self._heap, self._due, self._sessions
        now_key = (now - _EPOCH) // _MICROSECOND
        expired: builtins.list[Session] = []
        while heap and heap[0][0] <= now_key:
            key, sid = heap[0]
            if due.get(sid) != key:
                heapq.heappop(heap)  # left behind by a delete or superseded by a re-filing
                continue
            actual = sessions[sid].expires_at
            if actual <= now:
                heapq.heappop(heap)
                expired.append(self._remove(sid))
            else:
                # extended since it was filed: re-file at its real expiry (> now, so the loop
                # cannot meet it again), replacing the top in one sift
                key = (actual - _EPOCH) // _MICROSECOND
                heapq.heapreplace(heap, (key, sid))
                due[sid] = key
        return expired

    async def count(self) -> int:
        return len(self._sessions)

    async def approximate_count(self) -> int:
        return len(self._sessions)

    async def count_by_state(self) -> dict[State, int]:
        return {state: len(ids) for state, ids in self._by_state.items()}

    async def touch(self, session_id: str, now: datetime, expires_at: datetime) -> Wake | None:
        # this class's own, not a subclass's override: one that declines (returns False) must
        # not turn `touch`, the fallback, into a no-op
        done = MemoryStore.touch_nowait(self, session_id, now, expires_at)
        return None if done is True or done is False else done

    def touch_nowait(self, session_id: str, now: datetime,
                     expires_at: datetime) -> bool | Wake:
        """Always done here (True, or on a wake-up, rare: once per CONNECTING or IDLE spell,
        the state it woke the session from and a copy of the session): nothing in this store
        needs I/O. The manager's heartbeat calls it directly, saving a coroutine per
        keepalive. In place, no copy, no validation (the manager computed both times)."""
        try:
            session = self._sessions[session_id]
        except KeyError:
            raise not_found(session_id) from None
        old_expiry = session.expires_at
        if now >= old_expiry:
            raise SessionExpired(f"session expired: {session_id}")
        session.last_active_at = now
        session.expires_at = expires_at
        if expires_at < old_expiry:
            self._schedule(session_id, expires_at)
        state = session.state
        if state is _CONNECTING or state is _IDLE:
            by_state = self._by_state
            by_state[state].pop(session_id, None)
            by_state[_ACTIVE][session_id] = None
            session.state = _ACTIVE
            return state, session.copy()
        return True

    async def set_stats(self, session_id: str, stats: Stats) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            raise not_found(session_id)
        session.stats = stats.copy()

    def restore(self, sessions: builtins.list[Session]) -> None:
        """Fill an empty store with sessions checked already (a restart snapshot's, which
        `session.snapshot.decode` validated whole: unique ids and connection ids), without
        checking each again: all of them, or none (`SessionExists`) if the store is not empty
        or two of them share an id or a connection. Taken as they are, not copied: the
        caller gives them up."""
        if self._sessions:
            raise SessionExists(f"the store already holds {len(self._sessions)} sessions")
        ids = {s.session_id for s in sessions}
        connections = [s.connection_id for s in sessions if s.connection_id]
        if len(ids) != len(sessions) or len(set(connections)) != len(connections):
            raise SessionExists("two sessions share an id or a connection id")
        for session in sessions:
            if not session.metadata:
                session.metadata = _NO_METADATA
            self._sessions[session.session_id] = session
            self._index(session)
            self._schedule(session.session_id, session.expires_at)

    def heap_size(self) -> int:
        """Entries in the expiry heap, stale ones included (for tests and benchmarks)."""
        return len(self._heap)

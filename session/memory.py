"""`MemoryStore`: the in-process session store.

No method ever suspends (there is no real ``await`` inside), so under asyncio each call is
atomic without a lock, and the server may drive `touch` synchronously with ``coro.send(None)``.

Indexes: by id and by connection id (dicts, O(1)), by user and by state (sets). Expiry uses a
lazy min-heap with exactly one live entry per session whose key is never later than the
session's real expiry. Extending a session (every heartbeat) leaves the heap alone; when an entry
comes due, `expire` either removes the session or re-files it at its real expiry. So the work
of `expire` is proportional to the sessions that came due since the last sweep (expired, or
extended and re-filed once), never to the number stored.

Sessions are copied on the way in and on the way out: nothing a caller holds aliases state.
"""

from __future__ import annotations

import builtins
import heapq
import itertools
from datetime import UTC, datetime, timedelta

from session.errors import SessionExists, SessionExpired
from session.model import Session, SessionFilter, State, Stats, validate_session
from session.store import Store, not_found, not_found_for_connection

__all__ = ["MemoryStore"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CONNECTING = State.CONNECTING
_IDLE = State.IDLE
_ACTIVE = State.ACTIVE


class MemoryStore(Store):
    """Sessions in dicts, safe under concurrent asyncio tasks because nothing awaits."""

    __slots__ = ("_by_connection", "_by_state", "_by_user", "_due", "_heap", "_seq", "_sessions")

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._by_connection: dict[str, str] = {}
        self._by_user: dict[str, set[str]] = {}
        self._by_state: dict[State, set[str]] = {state: set() for state in State}
        # heap entries are (due, seq, session_id), due in integer microseconds since the epoch:
        # exact like the datetimes, but much cheaper to compare. _due[session_id] is the
        # (due, seq) of the session's one live entry, so entries left behind by deletes and
        # re-filing are recognised and skipped.
        self._heap: list[tuple[int, int, str]] = []
        self._due: dict[str, tuple[int, int]] = {}
        self._seq = itertools.count()

    # -- helpers (synchronous, so callers stay atomic)

    def _schedule(self, session_id: str, expires_at: datetime) -> None:
        due = (expires_at - _EPOCH) // _MICROSECOND
        seq = next(self._seq)
        heapq.heappush(self._heap, (due, seq, session_id))
        self._due[session_id] = (due, seq)

    def _compact(self) -> None:
        # Deletes leave dead heap entries behind; rebuilding once they outnumber the live ones
        # keeps memory bounded at an amortised O(1) per delete.
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._heap = [(due, seq, sid) for sid, (due, seq) in self._due.items()]
            heapq.heapify(self._heap)

    def _unindex(self, session: Session) -> None:
        sid = session.session_id
        self._by_connection.pop(session.connection_id, None)
        users = self._by_user[session.user_id]
        users.discard(sid)
        if not users:
            del self._by_user[session.user_id]
        self._by_state[session.state].discard(sid)

    def _index(self, session: Session) -> None:
        sid = session.session_id
        self._by_connection[session.connection_id] = sid
        self._by_user.setdefault(session.user_id, set()).add(sid)
        self._by_state[session.state].add(sid)

    def _remove(self, session_id: str) -> Session:
        session = self._sessions.pop(session_id)
        self._unindex(session)
        del self._due[session_id]
        return session

    # -- the Store contract

    async def create(self, session: Session) -> None:
        validate_session(session)
        sid = session.session_id
        if sid in self._sessions:
            raise SessionExists(f"session already exists: {sid}")
        owner = self._by_connection.get(session.connection_id)
        if owner is not None:
            raise SessionExists(
                f"connection {session.connection_id} already has a session: {owner}"
            )
        stored = session.copy()
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
        stored = session.copy()
        self._unindex(old)
        self._sessions[sid] = stored
        self._index(stored)
        if stored.expires_at < old.expires_at:
            self._schedule(sid, stored.expires_at)
            self._compact()

    async def delete(self, session_id: str) -> Session:
        if session_id not in self._sessions:
            raise not_found(session_id)
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
        mine = self._by_user.get(user_id, ())
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
        return [sessions[sid].copy() for sid in sorted(self._by_user.get(user_id, ()))]

    async def expire(self, now: datetime) -> builtins.list[Session]:
        heap, due, sessions = self._heap, self._due, self._sessions
        now_key = (now - _EPOCH) // _MICROSECOND
        expired: builtins.list[Session] = []
        while heap and heap[0][0] <= now_key:
            _, seq, sid = heap[0]
            live = due.get(sid)
            if live is None or live[1] != seq:
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
                seq = next(self._seq)
                heapq.heapreplace(heap, (key, seq, sid))
                due[sid] = (key, seq)
        return expired

    async def count(self) -> int:
        return len(self._sessions)

    async def count_by_state(self) -> dict[State, int]:
        return {state: len(ids) for state, ids in self._by_state.items()}

    async def touch(self, session_id: str, now: datetime, expires_at: datetime) -> None:
        self.touch_now(session_id, now, expires_at)

    def touch_now(self, session_id: str, now: datetime, expires_at: datetime) -> None:
        """`touch` as a plain function: the manager calls it directly on the heartbeat path,
        saving a coroutine per keepalive. In place, no copy, no validation (the manager
        computed both times)."""
        try:
            session = self._sessions[session_id]
        except KeyError:
            raise not_found(session_id) from None
        old_expiry = session.expires_at
        if now >= old_expiry:
            raise SessionExpired(f"session expired: {session_id}")
        session.last_active_at = now
        session.expires_at = expires_at
        state = session.state
        if state is _CONNECTING or state is _IDLE:
            by_state = self._by_state
            by_state[state].discard(session_id)
            by_state[_ACTIVE].add(session_id)
            session.state = _ACTIVE
        if expires_at < old_expiry:
            self._schedule(session_id, expires_at)

    async def set_stats(self, session_id: str, stats: Stats) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            raise not_found(session_id)
        session.stats = stats.copy()

    def heap_size(self) -> int:
        """Entries in the expiry heap, stale ones included (for tests and benchmarks)."""
        return len(self._heap)

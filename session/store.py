"""The storage contract every session store (memory, etcd) fulfils.

Stores keep sessions and their indexes (by connection id, by user id, by expiry); they hold no
policy beyond what each method documents. Every method is a coroutine so a networked store can
implement it; every session passed in or handed out is the caller's own copy.

Ordering: `list` and `get_by_user_id` return sessions sorted by session id (creation order for
UUIDv7 ids). A connection id maps to at most one session; the empty connection id (a session
no connection holds yet) is not indexed, so any number of sessions may have it.

Two calls are synchronous on purpose. `touch_nowait` is the heartbeat without I/O, for the
server's per-keepalive path (`session/heartbeat.py` calls it for every keepalive; `touch` is the
fallback when it cannot). `add_listener` registers for removals made by someone other than this
store object's callers (another node of a shared store); the manager passes them on to its own
listeners.
"""

from __future__ import annotations

import abc
import builtins
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from mypy_extensions import mypyc_attr

from session.errors import (
    InvalidSession,
    InvalidToken,
    SessionChanged,
    SessionError,
    SessionExists,
    SessionExpired,
    SessionNotFound,
    StoreUnavailable,
    TooManyUserSessions,
)
from session.model import Session, SessionFilter, State, Stats

__all__ = [
    "InvalidSession",
    "InvalidToken",
    "Listener",
    "SessionChanged",
    "SessionError",
    "SessionExists",
    "SessionExpired",
    "SessionNotFound",
    "Store",
    "StoreUnavailable",
    "TooManyUserSessions",
    "changed",
    "not_found",
    "not_found_for_connection",
    "too_many_user_sessions",
]

#: ``callback(session, reason)``: told that a session ended, with why ("expired", "deleted"...).
#: The same signature serves the store's listeners and the manager's.
Listener = Callable[[Session, str], None]

#: what a touch that woke the session up reports: the state it left, and a copy of the session
Wake = tuple[State, Session]

#: States a keepalive wakes up: the client is demonstrably there.
WAKE_ON_TOUCH = frozenset({State.CONNECTING, State.IDLE})


def not_found(session_id: str) -> SessionNotFound:
    return SessionNotFound(f"session not found: {session_id}")


def not_found_for_connection(connection_id: str) -> SessionNotFound:
    return SessionNotFound(f"session not found for connection: {connection_id}")


def too_many_user_sessions(user_id: str, count: int, limit: int) -> TooManyUserSessions:
    return TooManyUserSessions(
        f"user {user_id!r} already has {count} sessions stored, at most {limit}")


def changed(session_id: str) -> SessionChanged:
    return SessionChanged(f"session changed, condition no longer holds: {session_id}")


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (setup.py); EtcdStore is interpreted
class Store(abc.ABC):
    """Async session storage. Implementations raise only `SessionError` subclasses."""

    @abc.abstractmethod
    async def create(self, session: Session, *, max_user_sessions: int | None = None) -> None:
        """Store a new session.

        With `max_user_sessions`, only if the session's user then has fewer sessions stored
        (expired ones included until removed), checked atomically with the write: of creates
        racing for a user's last slot, on one node or on several sharing the store, exactly
        one succeeds and the others raise `TooManyUserSessions`, storing nothing.

        Raises `SessionExists` if the session id, or its connection id, is already stored, and
        `InvalidSession` if the session fails `model.validate_session`.
        """

    @abc.abstractmethod
    async def get(self, session_id: str) -> Session:
        """The stored session, expired or not. Raises `SessionNotFound`."""

    @abc.abstractmethod
    async def update(self, session: Session) -> None:
        """Replace the stored session with the same id (indexes follow any changed field).

        Raises `SessionNotFound`, `SessionExists` if the new connection id belongs to another
        session, `InvalidSession` if the session fails validation.
        """

    @abc.abstractmethod
    async def delete(
        self, session_id: str, *, only_if: Callable[[Session], bool] | None = None
    ) -> Session:
        """Remove a session and return what was stored. Raises `SessionNotFound`.

        With `only_if`, remove it only if `only_if(a copy of the stored session)` holds for
        the very version removed (a shared store compares revisions); otherwise raise
        `SessionChanged` and remove nothing.
        """

    @abc.abstractmethod
    async def list(self, filter: SessionFilter) -> tuple[list[Session], int]:
        """The page of matching sessions selected by the filter, and the total match count."""

    @abc.abstractmethod
    async def get_by_connection_id(self, connection_id: str) -> Session:
        """The session for a connection id. Raises `SessionNotFound`."""

    @abc.abstractmethod
    async def get_by_user_id(self, user_id: str) -> builtins.list[Session]:
        """All of a user's sessions (possibly none), ordered by session id."""

    @abc.abstractmethod
    async def expire(self, now: datetime) -> builtins.list[Session]:
        """Remove and return every session whose `expires_at` is at or before `now`."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many sessions are stored, expired ones included until removed."""

    async def approximate_count(self) -> int:
        """How many sessions are stored, as cheaply as the store can tell: exact on a local
        store, possibly behind by its propagation delay on a shared one. The session limit
        (`ManagerConfig.max_sessions`) checks this on every create."""
        return await self.count()

    async def delete_expired(self, now: datetime) -> int:
        """Remove expired sessions and say how many there were."""
        return len(await self.expire(now))

    async def count_by_state(self) -> dict[State, int]:
        """Sessions per state, every state present (zero when none).

        Stores with a state index should override this; the default reads everything.
        """
        sessions, _ = await self.list(SessionFilter())
        counts = Counter([s.state for s in sessions])
        return {state: counts.get(state, 0) for state in State}

    async def touch(self, session_id: str, now: datetime,
                    expires_at: datetime) -> Wake | None:
        """A keepalive: `last_active_at = now`, new `expires_at`, CONNECTING/IDLE -> ACTIVE.

        Returns None, or when the touch woke the session up, the state it woke it from and a
        copy of the session as it is now (the manager reports the state change). Raises
        `SessionNotFound`, or `SessionExpired` if the session had expired by `now` (an expired
        session is never revived). This is the hot path; stores should override the default
        read-modify-write with something cheaper.
        """
        session = await self.get(session_id)
        if now >= session.expires_at:
            raise SessionExpired(f"session expired: {session_id}")
        session.last_active_at = now
        session.expires_at = expires_at
        previous = session.state
        if previous in WAKE_ON_TOUCH:
            session.state = State.ACTIVE
        await self.update(session)
        return (previous, session) if previous in WAKE_ON_TOUCH else None

    def touch_nowait(self, session_id: str, now: datetime,
                     expires_at: datetime) -> bool | Wake:
        """`touch` without I/O, if this store can do it so. Once it is done, exactly as `touch`
        would have done it (raising what `touch` raises, when that too is known without I/O):
        True, or when the touch woke the session up, what `touch` returns then (a `Wake`,
        which is truthy). False, having changed nothing, when only `touch` can do it.

        Synchronous and allocation-free in the common case: the server calls it for every
        keepalive and awaits `touch` only when it returns False. The default cannot do anything
        without I/O and always returns False; `MemoryStore` always does it, `EtcdStore` does
        it from its cache while no etcd write (lease refresh, state change) is due.
        """
        return False

    def add_listener(self, callback: Listener) -> None:  # noqa: B027 - see below
        """Call ``callback(last_known_session, reason)`` for each session removed by someone
        other than this store object's callers: another node's delete or expiry, a lease
        running out (reason ``"expired"`` when the session had expired, else ``"deleted"``).
        Removals made through this object are never reported (its caller knows of them).

        The default keeps nothing: a store whose sessions change only through its own methods
        (`MemoryStore`) has nothing to report. A shared store must override it.
        """

    def remove_listener(self, callback: Listener) -> None:  # noqa: B027 - see add_listener
        """Stop calling `callback` (added with `add_listener`); nothing if it was not."""

    async def set_stats(self, session_id: str, stats: Stats) -> None:
        """Replace a session's stats and nothing else. Raises `SessionNotFound`.

        Called for every connection every few seconds; stores may override the default
        read-modify-write with an in-place change.
        """
        session = await self.get(session_id)
        session.stats = stats.copy()
        await self.update(session)

    async def ping(self) -> None:  # noqa: B027 - a local store is always reachable
        """Raise `StoreUnavailable` unless the backing store answers now (health checks)."""

    async def start(self) -> None:  # noqa: B027 - a no-op is the right default for local stores
        """Connect and start background work (a shared store's watch); idempotent."""

    async def close(self) -> None:  # noqa: B027 - a no-op is the right default for local stores
        """Release connections or other resources; calling it twice is harmless."""

"""`SessionManager`: session life-cycle policy on top of any `Store`.

The manager validates input, issues and checks resume tokens, applies the timeout, logs what
happened, tells listeners when sessions end, and runs the periodic expiry sweep. The store only
keeps data.

Time: `ManagerConfig.clock` is a zero-argument callable returning the current time as a
timezone-aware UTC `datetime` (default: `clock.CoarseClock`, wall time at 1 ms resolution);
tests inject a fake one and never sleep. Durations (`default_timeout`, `cleanup_interval`,
`heartbeat`'s result) are float seconds.

Limits: a user has at most `ManagerConfig.max_sessions_per_user` sessions and the store at most
`max_sessions`. A new session for a user at the limit first evicts the user's least recently
active sessions that no live connection holds (DISCONNECTING or CLOSED, or already expired),
with reason `EVICTED_REASON`; when every one is live, `create_session` raises
`TooManyUserSessions`. At the total limit it raises `SessionCapacityExceeded`.

`heartbeat` is the hot path (every keepalive of every client): one clock read, one store call,
no lock, no copy, no allocation while the clock stays on one tick, and no logging unless debug
was enabled when the manager was built.

Watchers (`add_watcher`) hear of every change as a `session.watch.SessionEvent`: created,
state changed, deleted (with the reason) and expired; the network API streams them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

from session import tokens
from session.clock import CoarseClock
from session.errors import (
    InvalidSession,
    InvalidToken,
    SessionCapacityExceeded,
    SessionChanged,
    SessionConflict,
    SessionError,
    SessionExpired,
    SessionNotFound,
    TooManyUserSessions,
)
from session.heartbeat import LocalHeartbeat
from session.logs import debug_enabled, get_logger
from session.model import (
    Session,
    SessionFilter,
    State,
    Stats,
    client_address_text,
    new_session_id,
    normalize_client_ip,
    normalize_connection_id,
    require_utc,
    validate_metadata,
    validate_port,
    validate_server_addr,
    validate_stats,
    validate_timeout,
    validate_user_id,
)
from session.store import Listener, Store
from session.watch import EventKind, SessionEvent, Watcher

__all__ = ["EVICTED_REASON", "Listener", "ManagerConfig", "SessionManager"]

Clock = Callable[[], datetime]

#: the reason listeners hear for a session removed to make room under `max_sessions_per_user`
EVICTED_REASON = "evicted: session limit per user"
#: states in which no connection holds a session: the ones a new session may evict
_UNHELD = frozenset({State.DISCONNECTING, State.CLOSED})
#: rounds of evict-then-create when concurrent creates keep taking the freed slots
_LIMIT_ATTEMPTS = 3
#: read-modify-write tries of `update_session` when a shared store reports that the session
#: changed between the read and the write (SessionConflict)
_UPDATE_ATTEMPTS = 5


def _check_duration(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")
    return float(value)


def _check_limit(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


#: the longest session timeout: a year (a longer one is a session that never ends)
MAX_TIMEOUT = 365 * 24 * 3600.0


@dataclass(slots=True)
class ManagerConfig:
    """`logger` is any structlog-style logger (default: `session.logs.get_logger("session")`,
    which follows the application's structlog configuration, else logs INFO and above to
    stderr; see session/logs.py); `clock` returns aware UTC datetimes.

    `max_sessions_per_user` (default 8, as the original session service advised) and
    `max_sessions` (default 100,000, about 200 MB of sessions in a MemoryStore) bound what
    clients can make the service hold; see the module docstring for what happens at each.
    """

    store: Store
    default_timeout: float = 1800.0
    cleanup_interval: float = 300.0
    logger: Any | None = None
    clock: Clock | None = None
    max_sessions_per_user: int = 8
    max_sessions: int = 100_000

    def __post_init__(self) -> None:
        self.default_timeout = _check_duration("default_timeout", self.default_timeout)
        if self.default_timeout > MAX_TIMEOUT:
            raise ValueError(f"default_timeout must be at most {MAX_TIMEOUT:g} s (a year), "
                             f"got {self.default_timeout!r}")
        self.cleanup_interval = _check_duration("cleanup_interval", self.cleanup_interval)
        self.max_sessions_per_user = _check_limit("max_sessions_per_user",
                                                  self.max_sessions_per_user)
        self.max_sessions = _check_limit("max_sessions", self.max_sessions)


def _expired(session_id: str) -> SessionExpired:
    return SessionExpired(f"session expired: {session_id}")


class SessionManager:
    """Creates, finds, updates, keeps alive, resumes and ends sessions.

    The manager owns its store: `close` closes it. Use ``async with manager:`` or
    `start`/`close` to run the background expiry sweep.
    """

    #: ``heartbeat_nowait(session_id) -> float | None``: `heartbeat` for callers that must not
    #: suspend (the server's per-packet path). Done at once when the store can do it locally:
    #: always on a `MemoryStore`, and on an `EtcdStore` while no lease refresh or state write
    #: is due. Then it returns the seconds remaining (raising like `heartbeat`); otherwise it
    #: changes nothing and returns None, and the caller awaits `heartbeat` instead. A compiled
    #: callable built for this manager's store (see session/heartbeat.py), not a method.
    heartbeat_nowait: LocalHeartbeat

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self.store = config.store
        self._clock: Clock = config.clock or CoarseClock()
        try:
            require_utc(self._clock(), "clock()")
        except InvalidSession as exc:
            raise ValueError(f"the clock must return aware UTC datetimes: {exc}") from None
        self._timeout_s = config.default_timeout
        self._timeout = timedelta(seconds=config.default_timeout)
        # a concrete logger, bound once: per-call proxy resolution would cost more than the
        # heartbeat itself
        self._log = (config.logger or get_logger("session")).bind()
        self._debug = debug_enabled(self._log)
        self._touch = self.store.touch
        # most heartbeats need no coroutine at all: the store does them without I/O
        # (`Store.touch_nowait`: always on a MemoryStore, from its cache on an EtcdStore)
        self.heartbeat_nowait = LocalHeartbeat(self._clock, config.default_timeout, self.store,
                                               log=self._log if self._debug else None,
                                               on_wake=self._woke)
        self._listeners: list[Listener] = []
        self._watchers: list[Watcher] = []
        # a shared store (EtcdStore) reports sessions that other nodes deleted or that expired
        # there: they reach this manager's listeners like local deletions do
        self.store.add_listener(self._notify_from_store)
        self._cleanup_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- life cycle

    async def start(self) -> None:
        """Start the store (an EtcdStore connects and starts its watch; `StoreUnavailable` if
        it cannot) and the periodic expiry sweep. Idempotent."""
        if self._closed:
            raise RuntimeError("session manager is closed")
        await self.store.start()
        if self._cleanup_task is None:
            self._cleanup_task = asyncio.get_running_loop().create_task(
                self._cleanup_loop(), name="session-cleanup"
            )

    async def close(self) -> None:
        """Stop the sweep and close the store. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        task, self._cleanup_task = self._cleanup_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _cleanup_loop(self) -> None:
        interval = self.config.cleanup_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.cleanup_expired()
            except SessionError as exc:
                # a store outage must not kill the sweep: the next round catches up
                self._log.warning("session cleanup failed", error=str(exc))
            except Exception:
                self._log.exception("session cleanup crashed")

    # -- listeners

    def add_listener(self, callback: Listener) -> None:
        """Call `callback(session, reason)` whenever a session is deleted or expires."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        """Stop calling `callback`; raises `ValueError` if it was never added."""
        self._listeners.remove(callback)

    def _notify(self, session: Session, reason: str, remote: bool = False) -> None:
        for callback in tuple(self._listeners):
            try:
                callback(session, reason)
            except Exception:
                # one faulty listener must neither break the caller nor starve the others
                self._log.exception(
                    "session listener failed", session_id=session.session_id, reason=reason
                )
        self.heartbeat_nowait.set_timeout(session.session_id, None)
        kind = EventKind.EXPIRED if reason == "expired" else EventKind.DELETED
        self._publish(kind, session, reason=reason, remote=remote)

    def _notify_from_store(self, session: Session, reason: str) -> None:
        """A shared store's listener: a session that another node removed, or that expired."""
        self._notify(session, reason, remote=True)

    # -- watchers

    def add_watcher(self, callback: Watcher) -> None:
        """Call `callback(event)` for every change (see `session.watch`), in order. It runs
        synchronously inside the change: it must only queue the event and return."""
        self._watchers.append(callback)

    def remove_watcher(self, callback: Watcher) -> None:
        """Stop calling `callback`; raises `ValueError` if it was never added."""
        self._watchers.remove(callback)

    def _publish(self, kind: EventKind, session: Session, previous: State | None = None,
                 reason: str = "", remote: bool = False) -> None:
        if not self._watchers:
            return
        event = SessionEvent(kind, session.copy(), self._clock(), previous, reason, remote)
        for callback in tuple(self._watchers):
            try:
                callback(event)
            except Exception:
                self._log.exception("session watcher failed", session_id=session.session_id,
                                    kind=kind.value)

    def _woke(self, previous: State, session: Session) -> None:
        """A heartbeat's touch woke `session` (the store's copy) up from `previous`."""
        self._publish(EventKind.STATE_CHANGED, session, previous)

    def _learn_timeout(self, session: Session) -> None:
        """Heartbeats of a session with a timeout of its own must extend it by that one: this
        manager may not have created it (another node did, or an earlier process)."""
        if session.timeout is not None:
            self.heartbeat_nowait.set_timeout(session.session_id, session.timeout)

    def _timeout_of(self, session: Session) -> timedelta:
        if session.timeout is None:
            return self._timeout
        return timedelta(seconds=session.timeout)

    # -- creating and finding

    async def create_session(
        self,
        user_id: str,
        client_ip: str,
        client_port: int,
        connection_id: str,
        metadata: Mapping[str, str] | None = None,
        server_addr: str | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[Session, str]:
        """A new CONNECTING session and its resume token (returned once, never stored).

        At the user's session limit the user's least recently active unheld sessions are
        evicted first (listeners hear `EVICTED_REASON`); raises `TooManyUserSessions` when
        none can be, `SessionCapacityExceeded` at the total limit. Nothing is created then.

        `connection_id` "": no connection holds it yet; the client claims it by resuming it
        with the token. `timeout`: seconds each heartbeat extends it by, when not the default.
        """
        user_id = validate_user_id(user_id)
        client_ip = normalize_client_ip(client_ip)
        client_port = validate_port(client_port)
        connection_id = normalize_connection_id(connection_id) if connection_id != "" else ""
        timeout = validate_timeout(timeout)
        clean_metadata = validate_metadata(metadata)
        server_addr = validate_server_addr(server_addr)
        token, token_hash = tokens.new_token()
        now = self._clock()
        session = Session(
            session_id=new_session_id(),
            user_id=user_id,
            connection_id=connection_id,
            client_ip=client_ip,
            client_port=client_port,
            state=State.CONNECTING,
            created_at=now,
            last_active_at=now,
            expires_at=now + (self._timeout if timeout is None else timedelta(seconds=timeout)),
            server_addr=server_addr,
            metadata=clean_metadata,
            stats=Stats(),
            token_hash=token_hash,
            timeout=timeout,
        )
        total = await self.store.approximate_count()
        if total >= self.config.max_sessions:
            self._log.warning("session refused: session limit reached", user_id=user_id,
                              sessions=total, limit=self.config.max_sessions)
            raise SessionCapacityExceeded(
                f"the session service holds {total} sessions, at most {self.config.max_sessions}")
        await self._create_within_user_limit(session)
        self._learn_timeout(session)
        self._log.info(
            "session created",
            session_id=session.session_id,
            user_id=user_id,
            connection_id=connection_id,
            client=client_address_text(client_ip, client_port),
        )
        self._publish(EventKind.CREATED, session)
        return session, token

    async def _create_within_user_limit(self, session: Session) -> None:
        """Store `session`; if its user is at the limit, evict unheld sessions of the user and
        try again. The store checks the limit atomically with the write, so a concurrent
        create that took the freed slot sends us round again."""
        limit = self.config.max_sessions_per_user
        for attempt in range(_LIMIT_ATTEMPTS):
            try:
                await self.store.create(session, max_user_sessions=limit)
                return
            except TooManyUserSessions:
                if attempt == _LIMIT_ATTEMPTS - 1:
                    raise
            # only now read the user's sessions: the common create pays for a count alone
            await self._make_room(session.user_id, limit)

    async def _make_room(self, user_id: str, limit: int) -> None:
        """Evict enough of the user's unheld sessions that one more fits, or raise
        `TooManyUserSessions` (evicting nothing) when there are too few of them."""
        sessions = await self.store.get_by_user_id(user_id)
        excess = len(sessions) - limit + 1
        if excess <= 0:
            return
        now = self._clock()

        def evictable(s: Session) -> bool:
            return s.state in _UNHELD or s.is_expired(now)

        # expired ones first, then the least recently active; ids break ties
        candidates = sorted((s for s in sessions if evictable(s)),
                            key=lambda s: (not s.is_expired(now), s.last_active_at, s.session_id))
        if len(candidates) < excess:
            self._log.warning("session refused: user at session limit", user_id=user_id,
                              sessions=len(sessions), limit=limit)
            raise TooManyUserSessions(
                f"user {user_id!r} has {len(sessions)} sessions (at most {limit}) and "
                f"{len(candidates)} of them can be evicted; the others are in use")
        for victim in candidates[:excess]:
            try:
                removed = await self.store.delete(victim.session_id, only_if=evictable)
            except (SessionNotFound, SessionChanged):
                continue  # gone or reclaimed meanwhile: the store's own check decides
            self._log.info("session deleted", session_id=removed.session_id, user_id=user_id,
                           reason=EVICTED_REASON)
            self._notify(removed, EVICTED_REASON)

    async def get_session(self, session_id: str) -> Session:
        """The live session; `SessionExpired` once its expiry has passed."""
        session = await self.store.get(session_id)
        if session.is_expired(self._clock()):
            raise _expired(session_id)
        return session

    async def get_session_by_connection(self, connection_id: str) -> Session:
        """The live session of a connection; `SessionExpired` once its expiry has passed."""
        session = await self.store.get_by_connection_id(normalize_connection_id(connection_id))
        if session.is_expired(self._clock()):
            raise _expired(session.session_id)
        return session

    async def list_sessions(
        self, filter: SessionFilter | None = None
    ) -> tuple[list[Session], int]:
        """A page of sessions (ordered by id) and the number matching before paging."""
        return await self.store.list(filter or SessionFilter())

    async def get_stats(self) -> dict[str, int]:
        """``total``, and one count per state under its lower-case name (``active``, ...)."""
        counts = await self.store.count_by_state()
        stats = {"total": sum(counts.values())}
        for state in State:
            stats[state.name.lower()] = counts.get(state, 0)
        return stats

    # -- changing

    async def update_session(
        self,
        session_id: str,
        state: State | None = None,
        metadata: Mapping[str, str] | None = None,
        stats: Stats | None = None,
    ) -> Session:
        """Change state, merge metadata into the existing map, replace stats.

        Counts as activity (`last_active_at`) but does not extend expiry: only heartbeats and
        resumes do. Raises `SessionExpired` for an expired session.
        """
        if state is not None and not isinstance(state, State):
            raise InvalidSession(f"state must be a State, got {state!r}")
        if stats is not None:
            validate_stats(stats)
        changes = validate_metadata(metadata)
        for attempt in range(_UPDATE_ATTEMPTS):
            now = self._clock()
            session = await self.store.get(session_id)
            if session.is_expired(now):
                raise _expired(session_id)
            previous = session.state
            if changes:
                merged = {**session.metadata, **changes}
                session.metadata = validate_metadata(merged)
            if state is not None:
                session.state = state
            if stats is not None:
                session.stats = stats.copy()
            session.last_active_at = now
            try:
                await self.store.update(session)
                break
            except SessionConflict:
                # another node (or this node's own transport, say a resume confirming its
                # rotated token) wrote the session between our read and our write: our
                # change is applied again to what is there now
                if attempt == _UPDATE_ATTEMPTS - 1:
                    raise
        if session.state is not previous:
            self._log.info(
                "session state changed",
                session_id=session_id,
                user_id=session.user_id,
                old_state=previous.value,
                new_state=session.state.value,
            )
            self._publish(EventKind.STATE_CHANGED, session, previous)
        return session

    async def record_stats(self, session_id: str, stats: Stats) -> None:
        """Replace the session's transport statistics. Cheap and silent: called often."""
        validate_stats(stats)
        await self.store.set_stats(session_id, stats)

    async def update_client_address(
        self, session_id: str, client_ip: str, client_port: int
    ) -> Session:
        """Follow a client whose address changed (NAT rebinding, network switch)."""
        client_ip = normalize_client_ip(client_ip)
        client_port = validate_port(client_port)
        now = self._clock()
        session = await self.store.get(session_id)
        if session.is_expired(now):
            raise _expired(session_id)
        session.client_ip, session.client_port = client_ip, client_port
        session.last_active_at = now
        await self.store.update(session)
        self._log.info(
            "session address changed",
            session_id=session_id,
            user_id=session.user_id,
            client=client_address_text(client_ip, client_port),
        )
        return session

    async def heartbeat(self, session_id: str) -> float:
        """Keep a session alive: expiry moves to now + timeout, CONNECTING/IDLE become ACTIVE.

        Returns the seconds remaining. Raises `SessionNotFound` or `SessionExpired` (an expired
        session is never revived). Never suspends on a `MemoryStore`. Tries the store's path
        without I/O once (`heartbeat_nowait`), then its `touch`.
        """
        remaining = self.heartbeat_nowait(session_id)
        if remaining is not None:
            return remaining
        return await self.heartbeat_with_io(session_id)

    async def heartbeat_with_io(self, session_id: str) -> float:
        """The heartbeat `heartbeat_nowait` could not do (it returned None): the store's
        `touch`, which may do I/O, without trying the path without I/O again. Returns and
        raises as `heartbeat`."""
        now, expires_at, remaining = self.heartbeat_nowait.timing(session_id)
        woke = await self._touch(session_id, now, expires_at)
        if woke is not None:
            self._woke(*woke)
        if self._debug:
            self._log.debug("session heartbeat", session_id=session_id, remaining=remaining)
        return remaining

    async def keep_alive(self, session_id: str) -> float:
        """`heartbeat` for a caller other than the session's connection (the network API).

        Reads the session first, so its own timeout is honoured whichever node created it.
        A session no connection holds yet is extended but stays CONNECTING: only its client
        connecting makes it ACTIVE. Returns the seconds remaining; raises like `heartbeat`.
        """
        session = await self.get_session(session_id)
        self._learn_timeout(session)
        if session.connection_id != "":
            return await self.heartbeat(session_id)
        now = self._clock()
        session.last_active_at = now
        session.expires_at = now + self._timeout_of(session)
        await self.store.update(session)
        return session.remaining(now)

    async def resume_session(
        self,
        session_id: str,
        token: str,
        connection_id: str,
        client_ip: str,
        client_port: int,
        server_addr: str | None = None,
        *,
        user_id: str | None = None,
    ) -> Session:
        """Move a session to a new connection, given its resume token (and, with `user_id`,
        only if the session is that user's).

        Everything is checked before anything is written: a refused resume changes nothing.
        Raises `SessionNotFound`, `InvalidToken` (a wrong token or, checked after it, another
        user's session; both before expiry, so only a token holder learns that the session
        expired), `SessionExpired`, `SessionExists` if the new connection already has another
        session, `InvalidSession` for bad input.
        """
        session, _ = await self._resume(session_id, token, connection_id, client_ip,
                                        client_port, server_addr, user_id, rotate=False)
        return session

    async def resume_session_rotating(self, session_id: str, token: str, connection_id: str,
                                      client_ip: str, client_port: int,
                                      server_addr: str | None = None, *,
                                      user_id: str | None = None) -> tuple[Session, str]:
        """`resume_session` that also rotates the token (PROTOCOL.md 12.3): returns the
        session and its new token (returned once, never stored). The presented token stays
        good for resuming until `confirm_token` says the client holds the new one; a token
        the last resume replaced and the client never confirmed is dropped now."""
        return await self._resume(session_id, token, connection_id, client_ip, client_port,
                                  server_addr, user_id, rotate=True)

    async def confirm_token(self, session_id: str, token_hash: bytes) -> bool:
        """The client acknowledged the token whose hash is `token_hash`: the token it replaced
        stops working. False (nothing changed) if that is no longer the session's token."""
        session = await self.store.get(session_id)
        if not session.previous_token_hash or not hmac.compare_digest(session.token_hash,
                                                                      token_hash):
            return False
        session.previous_token_hash = b""
        await self.store.update(session)
        return True

    async def _resume(
        self, session_id: str, token: str, connection_id: str, client_ip: str,
        client_port: int, server_addr: str | None, user_id: str | None, *, rotate: bool,
    ) -> tuple[Session, str]:
        connection_id = normalize_connection_id(connection_id)
        client_ip = normalize_client_ip(client_ip)
        client_port = validate_port(client_port)
        server_addr = validate_server_addr(server_addr)
        now = self._clock()
        session = await self._check_resume(session_id, token, user_id, now)
        new_token = token
        if rotate:
            new_token, new_hash = tokens.new_token()
            session.previous_token_hash = tokens.hash_token(token)
            session.token_hash = new_hash
        previous_connection = session.connection_id
        session.connection_id = connection_id
        session.client_ip, session.client_port = client_ip, client_port
        if server_addr is not None:
            session.server_addr = server_addr
        previous = session.state
        session.state = State.ACTIVE
        session.last_active_at = now
        session.expires_at = now + self._timeout_of(session)
        await self.store.update(session)
        self._learn_timeout(session)
        self._log.info(
            "session resumed",
            session_id=session_id,
            user_id=session.user_id,
            connection_id=connection_id,
            previous_connection_id=previous_connection,
            client=client_address_text(client_ip, client_port),
        )
        if previous is not State.ACTIVE:
            self._publish(EventKind.STATE_CHANGED, session, previous)
        return session, new_token

    async def check_resume(
        self, session_id: str, token: str, user_id: str | None = None
    ) -> Session:
        """The live session that `resume_session` would resume, changing nothing: raises as it
        does (`SessionNotFound`, `InvalidToken`, `SessionExpired`)."""
        return await self._check_resume(session_id, token, user_id, self._clock())

    async def _check_resume(
        self, session_id: str, token: str, user_id: str | None, now: datetime
    ) -> Session:
        session = await self.store.get(session_id)
        # both compared, always: the time taken says nothing of which one matched
        current = tokens.verify(token, session.token_hash)
        replaced = tokens.verify(token, session.previous_token_hash)
        if not (current or replaced):
            self._log.warning("session resume refused: bad token", session_id=session_id)
            raise InvalidToken(f"invalid token for session: {session_id}")
        if user_id is not None and session.user_id != user_id:
            self._log.warning("session resume refused: another user's session",
                              session_id=session_id)
            raise InvalidToken(f"session {session_id} belongs to another user")
        if session.is_expired(now):
            raise _expired(session_id)
        return session

    async def verify_token(self, session_id: str, token: str) -> bool:
        """Whether `token` is this session's resume token (constant-time). `SessionNotFound`."""
        session = await self.store.get(session_id)
        return tokens.verify(token, session.token_hash)

    # -- ending

    async def delete_session(self, session_id: str, reason: str) -> Session:
        """Remove a session, log why, tell the listeners; returns what was removed."""
        session = await self.store.delete(session_id)
        self._log.info(
            "session deleted", session_id=session_id, user_id=session.user_id, reason=reason
        )
        self._notify(session, reason)
        return session

    async def cleanup_expired(self) -> int:
        """Remove every expired session now (the sweep calls this); returns how many."""
        expired = await self.store.expire(self._clock())
        if expired:
            self._log.info("expired sessions cleaned up", count=len(expired))
            for session in expired:
                if self._debug:
                    self._log.debug(
                        "session expired", session_id=session.session_id, user_id=session.user_id
                    )
                self._notify(session, "expired")
        return len(expired)

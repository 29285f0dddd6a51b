"""The heartbeat's hot path, compiled by setup.py: it runs for every keepalive the server gets.

`SessionManager.heartbeat_nowait` is a `LocalHeartbeat`. It reads the coarse clock, reuses
``now + timeout`` while the clock stands on one tick (the clock hands out one `datetime` per
tick, so the sum is not allocated again), and touches the session through the store's
synchronous entry point, `Store.touch_nowait`: a `MemoryStore` always completes the heartbeat
there, an `EtcdStore` whenever no lease refresh or state write is due. A compiled callable
rather than a manager method, because at >100,000 calls a second an interpreted frame costs as
much as the work it does.

Two rare cases cost the common one a check each: a session with a timeout of its own (created
with one over the API; `set_timeout` registers it) gets ``now + its timeout``, and a touch that
woke a session up (CONNECTING or IDLE -> ACTIVE) is reported to `on_wake`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from session.clock import CoarseClock
from session.model import Session, State
from session.store import Store, Wake

__all__ = ["LocalHeartbeat", "Wake"]



class LocalHeartbeat:
    """``heartbeat_nowait(session_id) -> float | None``: the seconds remaining once the session
    was touched without I/O, or None (nothing changed) when the store needs I/O for it.

    Raises what the store's `touch_nowait` raises: `SessionNotFound`, `SessionExpired`.
    `log`: a logger to write a debug event per heartbeat to, or None for silence.
    `on_wake(previous_state, session)`: told of every touch that woke a session up.
    """

    __slots__ = ("_clock", "_coarse", "_custom", "_expiry", "_log", "_now", "_on_wake",
                 "_remaining", "_store", "_timeout")

    def __init__(self, clock: Callable[[], datetime], timeout: float, store: Store,
                 log: Any | None = None,
                 on_wake: Callable[[State, Session], None] | None = None) -> None:
        self._clock = clock
        # typed `float | None` so that it is kept as a Python float: returning it then hands
        # out this one object, where a plain float attribute is boxed anew on every call
        self._remaining: float | None = float(timeout)
        self._timeout = timedelta(seconds=timeout)
        self._store = store
        self._log = log
        self._on_wake = on_wake
        # session id -> (its own timeout, the same in seconds): empty in the common case
        self._custom: dict[str, tuple[timedelta, float]] = {}
        # the default clock is compiled with this module: called as such, natively, rather
        # than through Python's call protocol
        self._coarse = clock if isinstance(clock, CoarseClock) else None
        # the tick `_expiry` was computed for (None: none yet)
        self._now: datetime | None = None
        self._expiry = datetime.min.replace(tzinfo=UTC)

    def now_and_expiry(self) -> tuple[datetime, datetime]:
        """The clock, and the expiry a heartbeat now would set (for a touch that needs I/O)."""
        now = self._tick()
        return now, self._expiry

    def timing(self, session_id: str) -> tuple[datetime, datetime, float]:
        """The clock, the expiry a heartbeat of this session now sets, and the seconds that
        leaves (for a touch that needs I/O): `now_and_expiry` with the session's own timeout."""
        now = self._tick()
        own = self._custom.get(session_id) if self._custom else None
        if own is not None:
            return now, now + own[0], own[1]
        return now, self._expiry, self._timeout.total_seconds()

    def set_timeout(self, session_id: str, timeout: float | None) -> None:
        """Heartbeats of this session extend it by `timeout` seconds instead of the default;
        None forgets it (the session ended, or follows the default)."""
        if timeout is None:
            self._custom.pop(session_id, None)
        else:
            self._custom[session_id] = (timedelta(seconds=timeout), float(timeout))

    def timeout_of(self, session_id: str) -> float | None:
        """The session's own timeout registered here, or None."""
        own = self._custom.get(session_id)
        return None if own is None else own[1]

    def _tick(self) -> datetime:
        """Read the clock; on a new tick, compute the expiry `_expiry` for it."""
        coarse = self._coarse
        now = coarse() if coarse is not None else self._clock()
        if now is not self._now:
            self._now = now
            self._expiry = now + self._timeout
        return now

    def __call__(self, session_id: str) -> float | None:
        now = self._tick()
        expiry = self._expiry
        remaining = self._remaining
        if self._custom:
            own = self._custom.get(session_id)
            if own is not None:
                expiry = now + own[0]
                remaining = own[1]
        done = self._store.touch_nowait(session_id, now, expiry)
        if done is False:
            return None
        if done is not True:
            on_wake = self._on_wake
            if on_wake is not None:
                on_wake(done[0], done[1])
        log = self._log
        if log is not None:
            log.debug("session heartbeat", session_id=session_id, remaining=remaining)
        return remaining

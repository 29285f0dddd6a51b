"""The heartbeat's hot path, compiled by setup.py: it runs for every keepalive the server gets.

`SessionManager.heartbeat_nowait` is a `LocalHeartbeat`. It reads the coarse clock, reuses
``now + timeout`` while the clock stands on one tick (the clock hands out one `datetime` per
tick, so the sum is not allocated again), and touches the session through the store's
synchronous entry point, `Store.touch_nowait`: a `MemoryStore` always completes the heartbeat
there, an `EtcdStore` whenever no lease refresh or state write is due. A compiled callable
rather than a manager method, because at >100,000 calls a second an interpreted frame costs as
much as the work it does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from session.clock import CoarseClock
from session.store import Store

__all__ = ["LocalHeartbeat"]


class LocalHeartbeat:
    """``heartbeat_nowait(session_id) -> float | None``: the seconds remaining once the session
    was touched without I/O, or None (nothing changed) when the store needs I/O for it.

    Raises what the store's `touch_nowait` raises: `SessionNotFound`, `SessionExpired`.
    `log`: a logger to write a debug event per heartbeat to, or None for silence.
    """

    __slots__ = ("_clock", "_coarse", "_expiry", "_log", "_now", "_remaining", "_store",
                 "_timeout")

    def __init__(self, clock: Callable[[], datetime], timeout: float, store: Store,
                 log: Any | None = None) -> None:
        self._clock = clock
        # typed `float | None` so that it is kept as a Python float: returning it then hands
        # out this one object, where a plain float attribute is boxed anew on every call
        self._remaining: float | None = float(timeout)
        self._timeout = timedelta(seconds=timeout)
        self._store = store
        self._log = log
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
        if not self._store.touch_nowait(session_id, now, self._expiry):
            return None
        log = self._log
        if log is not None:
            log.debug("session heartbeat", session_id=session_id, remaining=self._remaining)
        return self._remaining

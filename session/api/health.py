"""Whether the session store can be reached: the one readiness signal of the whole server.

`StoreHealth` pings the store (`Store.ping`: a no-op for the memory store, one quorum read for
etcd) every `interval` seconds and tells its subscribers when the answer changes: the gRPC
health service (grpc.health.v1) says SERVING only while the store is reachable, and the HTTP
``/readyz`` endpoint answers 200 only then. A call that finds the store down reports it at once
(`report_failure`), so readiness drops without waiting for the next ping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from session.errors import SessionError
from session.logs import LazyLogger
from session.store import Store

__all__ = ["StoreHealth"]

log = LazyLogger("session.health")  # quiet unless the application configured structlog


class StoreHealth:
    """`ready` is True while the last ping succeeded. `start` pings once before returning."""

    def __init__(self, store: Store, interval: float = 1.0, timeout: float = 2.0) -> None:
        if not interval > 0 or not timeout > 0:
            raise ValueError("interval and timeout must be positive seconds")
        self.store = store
        self.interval = interval
        self.timeout = timeout
        self.ready = False
        self.last_error = "not checked yet"
        self._checked = False
        self._subscribers: list[Callable[[bool], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def subscribe(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(ready)` now and whenever readiness changes."""
        self._subscribers.append(callback)
        callback(self.ready)

    async def check(self) -> bool:
        """Ping the store now; returns (and publishes) whether it answered."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.store.ping()
        except (SessionError, TimeoutError) as exc:
            self._set(False, str(exc) or f"no answer within {self.timeout:g} s")
            return False
        self._set(True, "")
        return True

    def report_failure(self) -> None:
        """A call just found the store unreachable: not ready until a ping succeeds."""
        self._set(False, "a call found the store unavailable")
        self._wake.set()

    def _set(self, ready: bool, error: str) -> None:
        self.last_error = error
        first, self._checked = not self._checked, True
        if ready == self.ready and not first:
            return
        self.ready = ready
        if not ready:
            log.warning("session store unreachable: not ready", error=error)
        elif not first:
            log.info("session store reachable again")
        for callback in tuple(self._subscribers):
            try:
                callback(ready)
            except Exception:
                log.exception("health subscriber failed")

    async def start(self) -> None:
        await self.check()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="store-health")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.check()
            except Exception:  # the probe must outlive any store bug
                log.exception("store health check crashed")

"""The manager's default clock: UTC wall time at millisecond resolution, cheap to read often.

`datetime.now(UTC)` costs an allocation and ~150 ns on every call, and the heartbeat path reads
the clock for every keepalive (>100,000/s). `CoarseClock` reads the float time source (tens of
ns) and rebuilds its `datetime` only once the time has moved past the current tick, so bursts of
calls share one object; the manager in turn reuses ``now + timeout`` while ``now`` is the same
object. Session timestamps are thus exact to within `resolution` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["CoarseClock"]


class CoarseClock:
    """Callable returning an aware UTC `datetime` no older than `resolution` seconds."""

    __slots__ = ("_resolution", "_since", "_source", "_until", "_value")

    def __init__(
        self, resolution: float = 0.001, source: Callable[[], float] = time.time
    ) -> None:
        if not resolution > 0:
            raise ValueError(f"resolution must be positive, got {resolution!r}")
        self._resolution = resolution
        self._source = source
        self._since = self._until = float("-inf")
        self._value = datetime.fromtimestamp(0, UTC)

    def __call__(self) -> datetime:
        t = self._source()
        # the lower bound catches the wall clock stepping backwards (NTP): rebuild then too
        if self._since <= t < self._until:
            return self._value
        self._since, self._until = t, t + self._resolution
        self._value = datetime.fromtimestamp(t, UTC)
        return self._value

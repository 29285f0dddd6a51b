"""Deadlines for the server's per-connection upkeep, so that periodic work costs what is due.

Idle detection, hibernation and statistics pushes are each due at a time a connection's own
events decide (its last keepalive, its last packet, its last push), not at a sweep over every
connection. `DeadlineWheel` files a connection under the slot of `resolution` seconds its next
look is due in (an append to a list), and hands back only the slots that have come due: a
server holding a million quiet connections and ten busy ones does the ten's work.

Entries are never searched for or removed: an owner's `check_at` names its live deadline, and
an entry filed for another one (the owner was filed again, earlier) is skipped when its slot
is taken. When its slot comes due the owner decides what it needs next and files itself
again, or not at all until it hears something (the server files a connection from its packet
path when it has no deadline that soon: a field test per packet). Entries of owners that are
gone are dropped by the caller.

`StallProbe` measures what these deadlines are for: the longest the event loop went without
running a callback (the lag of a chain of `call_later(interval)`), read by the benchmark
(`benchmarks/scale.py`) and the metrics (`quantum_event_loop_stall_seconds_max`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["DeadlineWheel", "Filed", "StallProbe"]


class Filed(Protocol):
    """Anything filed on a DeadlineWheel records the deadline it is filed for (None: not
    filed)."""

    check_at: float | None


FiledT = TypeVar("FiledT", bound=Filed)


class DeadlineWheel(Generic[FiledT]):
    """Owners filed by deadline in slots of `resolution` seconds. `file` is O(1); `take_due`
    costs the slots passed plus the entries they hold."""

    def __init__(self, resolution: float) -> None:
        if not (resolution > 0 and math.isfinite(resolution)):
            raise ValueError(f"resolution must be a positive number of seconds, "
                             f"got {resolution!r}")
        self.resolution = resolution
        # slot -> its owners, as they are (no tuple per entry: an entry is live when its
        # owner's `check_at` still falls in its slot)
        self._slots: dict[int, list[FiledT]] = {}
        self._taken: int | None = None  # the last slot handed out
        self._filed = 0

    def __len__(self) -> int:
        """Entries filed and not yet taken (superseded ones included)."""
        return self._filed

    def file(self, item: FiledT, at: float) -> None:
        """File `item` to be handed out once `at` has passed (in the first slot ending at or
        after it; a time whose slot was handed out already is moved into the next one). An
        entry it had for another deadline is left to be skipped."""
        slot = math.ceil(at / self.resolution)
        if self._taken is not None and slot <= self._taken:
            # its slot was handed out already: the middle of the next one
            at = (self._taken + 0.5) * self.resolution
            slot = math.ceil(at / self.resolution)
        item.check_at = at
        entries = self._slots.get(slot)
        if entries is None:
            self._slots[slot] = [item]
        else:
            entries.append(item)
        self._filed += 1

    def take_due(self, now: float) -> list[FiledT]:
        """The items of every slot ended by `now`, their `check_at` cleared: each is the
        caller's to look at and file again if it needs to."""
        last = math.floor(now / self.resolution)
        first = self._taken + 1 if self._taken is not None else None
        if first is not None and first > last:
            return []
        self._taken = last
        slots = self._slots
        if first is None or last - first > len(slots):
            due_slots = sorted(s for s in slots if s <= last)  # a long gap: fewer lookups
        else:
            due_slots = [s for s in range(first, last + 1) if s in slots]
        out: list[FiledT] = []
        for slot in due_slots:
            entries = slots.pop(slot)
            self._filed -= len(entries)
            for item in entries:
                at = item.check_at
                # its live deadline is in this slot (the same arithmetic as `file`), not a
                # later one it was filed for since, nor none (handed out from another slot)
                if at is not None and math.ceil(at / self.resolution) == slot:
                    item.check_at = None
                    out.append(item)
        return out


class StallProbe:
    """The longest event-loop stall: a callback that re-arms itself every `interval` seconds
    and records how much later than asked it ran. Costs one timer callback per interval."""

    def __init__(self, interval: float = 0.001,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        self.interval = interval
        self._clock = clock
        #: the longest lag seen since start (or the last `take_max`), seconds
        self.max_lag = 0.0
        #: the longest lag seen since start, never reset (the metric)
        self.max_lag_ever = 0.0
        #: lags over 20 ms since start (the issue-16 target's threshold)
        self.stalls_over_20ms = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._expected = 0.0

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is not None:
            return
        self._loop = loop
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def take_max(self) -> float:
        """The longest lag since the last call (or start), and start a new window."""
        lag, self.max_lag = self.max_lag, 0.0
        return lag

    def _schedule(self) -> None:
        assert self._loop is not None
        self._expected = self._clock() + self.interval
        self._handle = self._loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        # the loop's timers have millisecond steps: a lag under one step is no stall
        lag = max(0.0, self._clock() - self._expected)
        if lag > self.max_lag:
            self.max_lag = lag
            if lag > self.max_lag_ever:
                self.max_lag_ever = lag
        if lag > 0.020:
            self.stalls_over_20ms += 1
        self._schedule()

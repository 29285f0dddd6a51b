"""Many sans-I/O connections' deadlines on one event-loop timer.

A sans-I/O connection names its next deadline (`Connection.get_timer`) and acts on it when
told (`handle_timer`); its owner arms the clock. An owner of thousands of connections (the
server, the benchmark's load generator) keeps them all in one `TimerHeap` armed with a single
`loop.call_at`, instead of one timer handle per connection.

Connections run on the high-resolution monotonic clock (`time.monotonic`), not on the event
loop's: uvloop's `loop.time()` advances in whole milliseconds (and may lag the fine clock by a
kernel tick), too coarse for the round-trip and bandwidth samples of a fast path. Both count
from the same origin (CLOCK_MONOTONIC), so a deadline on the fine clock can be armed with
`loop.call_at`; `arm_at` adds `TIMER_SLACK` so that the loop's rounding never wakes an owner
before its deadline (an early wake would find nothing due and re-arm at once).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from typing import Any, Final, Generic, Protocol, TypeVar

#: added to a deadline armed on the event loop: uvloop rounds a delay to whole milliseconds
#: against a clock that may be behind the fine one; a millisecond late is what it does anyway
TIMER_SLACK: Final = 0.001


def arm_at(loop: asyncio.AbstractEventLoop, at: float,
           callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
    """`loop.call_at` for a deadline on the connections' clock: never fires before `at`
    (a deadline already passed fires at the loop's next pass)."""
    return loop.call_at(at if at <= time.monotonic() else at + TIMER_SLACK, callback, *args)


class Timed(Protocol):
    """Anything scheduled on a TimerHeap records its pending deadline here (None: none) and
    names a unique key that breaks ties between equal deadlines (loop times step in whole
    milliseconds, so ties are common): an object it already holds, compared in C."""

    timer_at: float | None

    @property
    def timer_key(self) -> bytes: ...


TimedT = TypeVar("TimedT", bound=Timed)


class TimerHeap(Generic[TimedT]):
    """The deadlines of many sans-I/O connections in one heap, with one `loop.call_at`.

    Re-scheduling does not search the heap: the owner's `timer_at` names its live deadline and
    any other entry for it is skipped when popped, as are entries whose owner `alive` denies.
    A deadline that moves *later* is not pushed at all: when the earlier entry comes due, the
    owner's real deadline is asked again (`deadline`) and, if it is still ahead, re-filed
    without firing. Every ACK moves the retransmission deadline later, so this turns a heap
    push and a stale pop per packet into one early wake-up per deadline.
    """

    def __init__(self, fire: Callable[[TimedT, float], None],
                 alive: Callable[[TimedT], bool],
                 deadline: Callable[[TimedT], float | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # set when the owner starts
        self._fire = fire
        self._alive = alive
        self._deadline = deadline  # the owner's current deadline (None: take entries as due)
        self._clock = clock  # the time base of every deadline (the connections' clock)
        # (deadline, owner's tie-break key, owner): no new object per entry but the tuple
        self._heap: list[tuple[float, bytes, TimedT]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at: float | None = None

    def schedule(self, item: TimedT, at: float | None) -> None:
        if at is None:
            return
        current = item.timer_at
        if current is not None and current <= at:
            return  # the live entry fires first; its owner re-schedules then
        item.timer_at = at
        heapq.heappush(self._heap, (at, item.timer_key, item))
        if self._handle_at is None or at < self._handle_at:
            self._arm(at)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, at: float) -> None:
        assert self.loop is not None, "TimerHeap.loop is set when its owner starts"
        if self._handle is not None:
            self._handle.cancel()
        self._handle_at = at
        self._handle = arm_at(self.loop, at, self._run)

    def _run(self) -> None:
        """Fire every live deadline that is due, each at most once, then arm for the earliest
        live one left and return to the event loop.

        The entries due are taken off the heap before any fires: whatever firing schedules,
        even at or before `now` (an owner whose deadline did not move), waits for the next
        pass, after the loop has polled the socket. No owner can keep this loop running."""
        assert self.loop is not None
        self._handle = None
        self._handle_at = None
        now = self._clock()
        heap, alive, deadline = self._heap, self._alive, self._deadline
        due: list[TimedT] = []
        while heap and heap[0][0] <= now:
            at, key, item = heapq.heappop(heap)
            if item.timer_at != at or not alive(item):
                continue  # superseded by a later scheduling, or gone
            real = deadline(item) if deadline is not None else None
            if real is not None and real > now:  # an early wake-up: the deadline moved later
                item.timer_at = real
                heapq.heappush(heap, (real, key, item))
                continue
            item.timer_at = None
            due.append(item)
        for item in due:
            if alive(item):  # an earlier one of this pass may have ended it
                self._fire(item, now)
        while heap:
            at, _, item = heap[0]
            if item.timer_at == at and alive(item):
                self._arm(at)
                break
            heapq.heappop(heap)

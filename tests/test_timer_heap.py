"""quantum.timers.TimerHeap: one heap and one loop.call_at for many connections' deadlines.

The heap asks its loop only for `time()` and `call_at()`: the tests of what fires when drive it
with `ManualLoop`, a clock that moves only when told (a loaded machine cannot make a sleep of
30 ms last 70 and fire what must not have fired yet). The last test needs the real loop: it
checks that a firing owner gives the loop back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from quantum.timers import TimerHeap


class Item:
    def __init__(self, name: str) -> None:
        self.name = name
        self.timer_at: float | None = None

    @property
    def timer_key(self) -> bytes:
        return self.name.encode()


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualLoop:
    """`time()` and `call_at()` on a clock that `advance` moves, running what comes due in
    deadline order, each callback at its own deadline (as the event loop would, on time)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._calls: list[tuple[float, int, Handle, Callable[[], None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, at: float, callback: Callable[[], None]) -> Handle:
        handle = Handle()
        heapq.heappush(self._calls, (at, next(self._order), handle, callback))
        return handle

    def armed(self) -> int:
        return sum(not handle.cancelled for _, _, handle, _ in self._calls)

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while self._calls and self._calls[0][0] <= until:
            at, _, handle, callback = heapq.heappop(self._calls)
            if handle.cancelled:
                continue
            self.now = max(self.now, at)
            callback()
        self.now = until


def manual_heap(fire: Callable[[Item, float], None], alive: Callable[[Item], bool],
                deadline: Callable[[Item], float | None] | None = None,
                ) -> tuple[TimerHeap[Item], ManualLoop]:
    loop = ManualLoop()
    # the heap reads "now" from its clock (the connections' clock): the manual one here
    heap: TimerHeap[Item] = TimerHeap(fire, alive, deadline, clock=loop.time)
    heap.loop = loop  # type: ignore[assignment]
    return heap, loop


def test_deadlines_fire_in_order_and_later_ones_ride_on_the_earlier_entry() -> None:
    fired: list[tuple[str, float]] = []
    alive = {"a", "b"}
    heap, loop = manual_heap(lambda item, now: fired.append((item.name, now)),
                             lambda item: item.name in alive)
    a, b = Item("a"), Item("b")
    t0 = loop.time()
    heap.schedule(a, t0 + 0.05)
    heap.schedule(b, t0 + 0.02)
    # a's deadline moves later: no new heap entry, the earlier one stays live
    heap.schedule(a, t0 + 10.0)
    assert a.timer_at == t0 + 0.05
    assert len(heap._heap) == 2
    # ... but an earlier deadline replaces it at once
    heap.schedule(b, t0 + 0.01)
    assert b.timer_at == t0 + 0.01
    loop.advance(0.0099)
    assert fired == []  # nothing before its deadline
    loop.advance(0.12)
    # each at its own deadline; the stale b entry at +0.02 is skipped
    assert fired == [("b", t0 + 0.01), ("a", t0 + 0.05)]
    assert a.timer_at is None and b.timer_at is None  # owners re-schedule from their fire
    assert loop.armed() == 0  # nothing live is left: the loop is not woken for nothing
    heap.close()


def test_equal_deadlines_fire_every_owner() -> None:
    fired: list[str] = []
    heap, loop = manual_heap(lambda item, now: fired.append(item.name), lambda item: True)
    at = loop.time() + 0.01
    for name in ("c", "a", "b"):
        heap.schedule(Item(name), at)
    loop.advance(0.01)
    assert sorted(fired) == ["a", "b", "c"]


def test_entries_of_dead_owners_are_skipped_and_close_disarms() -> None:
    fired: list[str] = []
    alive = {"a"}
    heap, loop = manual_heap(lambda item, now: fired.append(item.name),
                             lambda item: item.name in alive)
    a, gone = Item("a"), Item("gone")
    heap.schedule(gone, loop.time() + 0.01)
    heap.schedule(a, loop.time() + 0.02)
    heap.schedule(a, None)  # no deadline: nothing changes
    loop.advance(0.06)
    assert fired == ["a"]
    heap.schedule(a, loop.time() + 0.01)
    heap.close()
    loop.advance(3600)
    assert fired == ["a"]


def test_an_entry_whose_owner_deadline_moved_later_is_refiled_not_fired() -> None:
    fired: list[tuple[str, float]] = []
    real: dict[str, float] = {}
    heap, loop = manual_heap(lambda item, now: fired.append((item.name, now)),
                             lambda item: True, lambda item: real[item.name])
    a = Item("a")
    t0 = loop.time()
    real["a"] = t0 + 0.01
    heap.schedule(a, real["a"])
    real["a"] = t0 + 0.06  # e.g. an ACK pushed the retransmission deadline back
    heap.schedule(a, real["a"])  # later: not pushed
    loop.advance(0.0599)
    assert fired == [] and a.timer_at == real["a"]  # woke early, re-filed, did not fire
    loop.advance(0.0001)
    assert fired == [("a", real["a"])]
    heap.close()


async def test_an_owner_that_keeps_a_past_deadline_cannot_hold_the_loop() -> None:
    """An owner whose fire re-schedules it at or before now (a connection whose timer names a
    deadline it will not act on) fires once per pass, and the loop runs its other work in
    between: before each pass re-read its clock once and looped on `heap[0] <= now` forever."""
    loop = asyncio.get_running_loop()
    fires = 0
    heap: TimerHeap[Item] = TimerHeap(lambda item, now: None, lambda item: True)

    def fire(item: Item, now: float) -> None:
        nonlocal fires
        fires += 1
        if fires > 1000:  # a regression must fail this test, not hang the suite
            raise RuntimeError("the timer heap keeps firing within one pass")
        heap.schedule(item, now)  # the same deadline again: nothing moved

    heap._fire = fire
    heap.loop = loop
    heap.schedule(Item("stuck"), loop.time())
    ticks = 0
    for _ in range(20):
        await asyncio.sleep(0)  # each of these needs the loop back from the timer
        ticks += 1
    assert ticks == 20
    assert 1 <= fires <= 25  # once per loop pass, not without end
    heap.close()

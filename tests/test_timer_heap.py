"""quantum.timers.TimerHeap: one heap and one loop.call_at for many connections' deadlines."""

from __future__ import annotations

import asyncio

from quantum.timers import TimerHeap


class Item:
    def __init__(self, name: str) -> None:
        self.name = name
        self.timer_at: float | None = None

    @property
    def timer_key(self) -> bytes:
        return self.name.encode()


async def test_deadlines_fire_in_order_and_later_ones_ride_on_the_earlier_entry() -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    alive = {"a", "b"}
    heap: TimerHeap[Item] = TimerHeap(lambda item, now: fired.append((item.name, now)),
                                      lambda item: item.name in alive)
    heap.loop = loop
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
    await asyncio.sleep(0.12)
    assert [name for name, _ in fired] == ["b", "a"]  # the stale b entry at +0.02 is skipped
    assert all(now >= t0 for _, now in fired)
    assert a.timer_at is None and b.timer_at is None  # owners re-schedule from their fire
    heap.close()


async def test_equal_deadlines_fire_every_owner() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    heap: TimerHeap[Item] = TimerHeap(lambda item, now: fired.append(item.name),
                                      lambda item: True)
    heap.loop = loop
    at = loop.time() + 0.01
    for name in ("c", "a", "b"):
        heap.schedule(Item(name), at)
    await asyncio.sleep(0.05)
    assert sorted(fired) == ["a", "b", "c"]


async def test_entries_of_dead_owners_are_skipped_and_close_disarms() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    alive = {"a"}
    heap: TimerHeap[Item] = TimerHeap(lambda item, now: fired.append(item.name),
                                      lambda item: item.name in alive)
    heap.loop = loop
    a, gone = Item("a"), Item("gone")
    heap.schedule(gone, loop.time() + 0.01)
    heap.schedule(a, loop.time() + 0.02)
    heap.schedule(a, None)  # no deadline: nothing changes
    await asyncio.sleep(0.06)
    assert fired == ["a"]
    heap.schedule(a, loop.time() + 0.01)
    heap.close()
    await asyncio.sleep(0.03)
    assert fired == ["a"]


async def test_an_entry_whose_owner_deadline_moved_later_is_refiled_not_fired() -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    real: dict[str, float] = {}
    heap: TimerHeap[Item] = TimerHeap(lambda item, now: fired.append((item.name, now)),
                                      lambda item: True, lambda item: real[item.name])
    heap.loop = loop
    a = Item("a")
    t0 = loop.time()
    real["a"] = t0 + 0.01
    heap.schedule(a, real["a"])
    real["a"] = t0 + 0.06  # e.g. an ACK pushed the retransmission deadline back
    heap.schedule(a, real["a"])  # later: not pushed
    await asyncio.sleep(0.03)
    assert fired == [] and a.timer_at == real["a"]  # woke early, re-filed, did not fire
    await asyncio.sleep(0.06)
    assert [name for name, _ in fired] == ["a"] and fired[0][1] >= real["a"]
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

    heap._fire = fire  # type: ignore[assignment]
    heap.loop = loop
    heap.schedule(Item("stuck"), loop.time())
    ticks = 0
    for _ in range(20):
        await asyncio.sleep(0)  # each of these needs the loop back from the timer
        ticks += 1
    assert ticks == 20
    assert 1 <= fires <= 25  # once per loop pass, not without end
    heap.close()

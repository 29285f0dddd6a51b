"""The server's per-connection upkeep on deadlines (quantum_server/housekeeping.py): what is due
costs, quiet connections do not; the stall probe; the collector's freeze and its premise."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from quantum_server.housekeeping import DeadlineWheel, StallProbe
from server import GC_FREEZE_AFTER, Peer
from tests.test_server import KEEPALIVE, Echo, client_config, dial, eventually, running_server


class Item:
    def __init__(self, name: str) -> None:
        self.name = name
        self.check_at: float | None = None


def test_the_wheel_hands_out_only_what_came_due_and_skips_superseded_entries() -> None:
    wheel: DeadlineWheel[Item] = DeadlineWheel(0.25)
    a, b, c = Item("a"), Item("b"), Item("c")
    wheel.file(a, 10.1)
    wheel.file(b, 10.6)
    wheel.file(c, 30.0)
    wheel.file(b, 10.2)  # filed again, earlier: the 10.6 entry is skipped when taken
    assert wheel.take_due(10.0) == []
    assert [i.name for i in wheel.take_due(10.26)] == ["a", "b"]
    assert a.check_at is None and b.check_at is None and c.check_at == 30.0
    assert wheel.take_due(11.0) == []  # b's superseded entry is dropped, not handed out
    assert [i.name for i in wheel.take_due(1000.0)] == ["c"]  # a long gap: one pass
    assert len(wheel) == 0


def test_a_deadline_in_a_slot_already_taken_goes_to_the_next_one() -> None:
    wheel: DeadlineWheel[Item] = DeadlineWheel(1.0)
    wheel.take_due(5.0)
    late = Item("late")
    wheel.file(late, 4.0)  # in the past
    assert [i.name for i in wheel.take_due(6.0)] == ["late"]


@pytest.mark.parametrize("resolution", [0.0, -1.0, float("inf"), float("nan")])
def test_a_wheel_or_probe_with_a_bad_period_is_refused(resolution: float) -> None:
    with pytest.raises(ValueError, match="resolution"):
        DeadlineWheel(resolution)
    with pytest.raises(ValueError, match="interval"):
        StallProbe(resolution)


async def test_the_stall_probe_sees_a_blocked_loop() -> None:
    probe = StallProbe(0.001)
    probe.start(asyncio.get_running_loop())
    await asyncio.sleep(0.02)
    time.sleep(0.06)  # the loop is stuck for 60 ms
    await asyncio.sleep(0.02)
    probe.stop()
    assert probe.max_lag >= 0.04 and probe.stalls_over_20ms >= 1
    assert probe.take_max() >= 0.04 and probe.max_lag == 0.0
    assert probe.max_lag_ever >= 0.04  # the metric's figure is never reset


async def test_a_hibernated_connection_is_next_looked_at_when_its_session_would_go_idle() -> (
        None):
    async with running_server(app=Echo(), hibernate_after=0.3) as h:
        await dial(h.port, configuration=client_config(keepalive=None))
        peer: Peer = next(iter(h.server.peers.values()))

        async def hibernated() -> bool:
            return peer.conn.hibernating and h.server.hibernating == 1

        await eventually(hibernated, what="hibernation after 0.3 s of quiet")
        # not every stats_interval (0.1 s here), as a sweep over every connection would
        assert peer.check_at == pytest.approx(peer.last_keepalive + 3 * KEEPALIVE)
        assert h.server.snapshot()["connections_hibernating"] == 1


async def test_a_busy_connection_filed_for_a_far_deadline_is_looked_at_soon() -> None:
    async with running_server(app=Echo(), hibernate_after=0.3) as h:
        client = await dial(h.port, configuration=client_config(keepalive=None))
        peer: Peer = next(iter(h.server.peers.values()))
        await eventually(lambda: _true(h.server.hibernating == 1), what="hibernation")
        await client.send(b"wake up")
        assert await client.recv() == b"wake up"
        # its statistics reach the session, and it is counted awake, within a few looks
        await eventually(lambda: _true(h.server.hibernating == 0 or peer.conn.hibernating),
                         what="the hibernating count following the wake-up")
        await eventually(
            lambda: _stats_caught_up(h, peer.session_id or "", peer.conn.stats.packets_received),
            what="statistics recorded after the quiet spell")


async def _true(value: bool) -> bool:
    return value


async def _stats_caught_up(h: object, sid: str, received: int) -> bool:
    session = await h.manager.get_session(sid)  # type: ignore[attr-defined]
    return session is not None and session.stats.packets_received >= received - 2


async def test_survivors_of_a_burst_of_accepts_are_frozen_out_of_the_collector(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from quantum.auth import AnonymousAuthenticator
    from quantum.keys import ServerKeyFile
    from server import QuantumServer
    from session.manager import ManagerConfig, SessionManager
    from session.memory import MemoryStore

    server = QuantumServer(SessionManager(ManagerConfig(store=MemoryStore())),
                           ServerKeyFile.new(), AnonymousAuthenticator())
    # freezes counted as calls: the frozen count itself also falls whenever a frozen object
    # is freed (reference counting), so "no second freeze" cannot be read from it
    freezes: list[int] = []
    real_freeze = gc.freeze

    def counting_freeze() -> None:
        freezes.append(1)
        real_freeze()

    monkeypatch.setattr(gc, "freeze", counting_freeze)
    before = gc.get_freeze_count()
    try:
        server.counters.connections_opened = GC_FREEZE_AFTER - 1
        server._freeze_survivors()
        assert freezes == []  # not yet
        server.counters.connections_opened = GC_FREEZE_AFTER
        server._freeze_survivors()
        assert freezes == [1] and gc.get_freeze_count() > before
        server._freeze_survivors()  # nothing new opened: no second freeze
        assert freezes == [1]
    finally:
        gc.unfreeze()


def test_a_serving_process_freezes_its_setup_and_spaces_its_young_collections(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from quantum_server.system import GC_YOUNG_THRESHOLD, tune_collector

    calls: list[str] = []
    real_freeze = gc.freeze

    def counting_freeze() -> None:
        calls.append("freeze")
        real_freeze()

    monkeypatch.setattr(gc, "freeze", counting_freeze)
    thresholds = gc.get_threshold()
    try:
        tune_collector(0)  # 0: the collector left as it is
        assert calls == [] and gc.get_threshold() == thresholds
        tune_collector()
        assert calls == ["freeze"] and gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *thresholds[1:])
        with pytest.raises(ValueError, match="0 or more"):
            tune_collector(-1)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def test_closed_connections_leave_no_reference_cycles() -> None:
    """The premise of the freeze: what a connection held is freed by reference counting when
    it ends, so freezing it cannot keep it alive."""
    async with running_server(app=Echo()) as h:
        clients = [await dial(h.port, f"user-{i}") for i in range(3)]
        for client in clients:
            await client.heartbeat()
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for client in clients:
                await client.close()
            await eventually(lambda: _true(not h.server.peers), what="connections gone")
            await asyncio.sleep(0.3)  # the session updates of their ends run
            gc.collect()
            from quantum.connection import Connection

            leaked = [o for o in gc.garbage if isinstance(o, (Peer, Connection))]
            assert leaked == []
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()

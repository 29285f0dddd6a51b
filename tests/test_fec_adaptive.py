"""FEC that pays for itself (PROTOCOL.md 9 and 6.6), on the simulated network.

The sender's parity follows the loss it measures and what a group holds: nothing at 0 % loss
(not even a PSH-grouped packet), more as loss rises, within the negotiated m; and a game-like
exchange (both ends sending 30 updates a second) lets each owed ACK ride on the next update
instead of costing a packet of its own.
"""

from __future__ import annotations

from collections import Counter

import pytest

from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.events import MessageReceived
from quantum.fec import FAST_WEIGHT, SLOW_WEIGHT, LossMeter, parity_count
from quantum.frames import Delivery
from quantum.handshake import Credentials
from quantum.packet import FEC, PSH, decode_header
from quantum.reliability import MAX_HELD_ACK_DELAY, ReceiveTracker, SentPacket
from quantum.simulation import (
    CLIENT_ADDR,
    SERVER_ADDR,
    LinkProfile,
    SimulatedNetwork,
    SimulatedServer,
    Simulation,
)

Address = tuple[str, int]
TICK = 1 / 30
UPDATE = bytes(100)


class CountingNetwork(SimulatedNetwork):
    """Counts the datagrams each address sends, by header flags (before any loss)."""

    def __init__(self, profile: LinkProfile, seed: int) -> None:
        super().__init__(profile, seed)
        self.flags: dict[Address, Counter[int]] = {CLIENT_ADDR: Counter(), SERVER_ADDR: Counter()}

    def send(self, data: bytes, src: Address, dst: Address, now: float) -> None:
        self.flags[src][decode_header(data)[1]] += 1
        super().send(data, src, dst, now)

    def reset(self) -> None:
        for counter in self.flags.values():
            counter.clear()

    def parity(self, src: Address) -> int:
        return sum(n for f, n in self.flags[src].items() if f & FEC)

    def grouped(self, src: Address) -> int:
        return sum(n for f, n in self.flags[src].items() if f & PSH)

    def total(self, src: Address) -> int:
        return sum(self.flags[src].values())


def connect(loss: float, seed: int = 1,
            fec: tuple[int, int] | None = (10, 3)) -> tuple[Simulation, Connection, Connection,
                                                            CountingNetwork]:
    config = QuantumConfiguration(keepalive_interval=None, fec=fec, idle_timeout=600.0,
                                  handshake_tries=20)
    network = CountingNetwork(LinkProfile(delay=0.02, loss=loss), seed)
    sim = Simulation(network, SimulatedServer.create(config))
    client = sim.add_client(Credentials(user_id="player"), configuration=config)
    sim.run(until=20.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    assert client.state is ConnectionState.ESTABLISHED
    (server,) = sim.server.connections.values()
    assert server.params is not None and server.params.fec == fec
    return sim, client, server, network


def play(sim: Simulation, client: Connection, server: Connection | None, seconds: float,
         mode: Delivery = Delivery.UNRELIABLE_SEQUENCED) -> int:
    """The game tick: the client sends an update every 1/30 s; the server (unless None) sends
    one back at each of its own ticks, 16 ms out of phase (where, with a 20 ms one-way delay,
    each side receives the other's update more than 25 ms before its own next one). Returns
    the updates the client sent."""
    start = sim.now
    sent = 0
    for i in range(round(seconds / TICK)):
        at = start + i * TICK
        sim.run(until=at)
        client.send(UPDATE, 0, mode)
        sent += 1
        sim.flush()
        if server is not None:
            sim.run(until=at + 0.016)
            server.send(UPDATE, 0, mode)
            sim.flush()
    sim.run(until=sim.now + 1.0)
    return sent


def received(sim: Simulation) -> int:
    return sum(isinstance(e, MessageReceived) for _, e in sim.server.events)


@pytest.mark.parametrize("fec", [(10, 3), None])
def test_sparse_updates_at_zero_loss_cost_one_packet_each(fec: tuple[int, int] | None) -> None:
    """30 updates a second both ways at 0 % loss: no parity, no FEC group, and no pure ACK
    (before: two parity packets per update, and, FEC or not, a pure ACK for about a quarter
    of them: the 25 ms delay ran out before the next 33 ms update)."""
    sim, client, server, network = connect(loss=0.0, fec=fec)
    play(sim, client, server, 2.0)  # past the start (RTT estimate, the first held ACKs)
    network.reset()
    sent = play(sim, client, server, 10.0)
    for side in (CLIENT_ADDR, SERVER_ADDR):
        assert network.parity(side) == 0
        assert network.grouped(side) == 0  # the receiver caches nothing either
    assert fec is None or (client._fec is not None and client._fec.meter.loss == 0.0)
    # every datagram but two was an update: each side's ACKs rode on its own next update,
    # except at most the first (before its own sending had a rhythm again after the pause)
    # and the last (after the last update)
    assert network.total(CLIENT_ADDR) <= sent + 2
    assert network.total(SERVER_ADDR) <= sent + 2


def test_a_one_way_stream_is_still_acknowledged_within_max_ack_delay() -> None:
    """The receiver that sends nothing of its own has no packet to wait for: it acknowledges
    each lone update after 25 ms, as before."""
    sim, client, _server, network = connect(loss=0.0)
    play(sim, client, None, 1.0)
    network.reset()
    sent = play(sim, client, None, 5.0)
    assert network.total(SERVER_ADDR) == sent  # one pure ACK per update, none held
    assert client._flight.bytes_in_flight == 0
    assert client.stats.packets_lost == 0 and client._flight.timeout_retransmits == 0


@pytest.mark.parametrize("seed", [1, 2])
def test_parity_rises_with_the_loss_measured(seed: int) -> None:
    per_update: list[float] = []
    measured: list[float] = []
    for loss in (0.0, 0.02, 0.10):
        sim, client, server, network = connect(loss=loss, seed=seed)
        play(sim, client, server, 3.0)
        network.reset()
        sent = play(sim, client, server, 15.0)
        per_update.append(network.parity(CLIENT_ADDR) / sent)
        assert client._fec is not None
        measured.append(client._fec.meter.loss)
    assert per_update[0] == 0.0 and measured[0] == 0.0
    assert 0.0 < per_update[1] < per_update[2] <= 3.0  # never more than m per update
    # the meter reads the path's loss, not the lower loss left after FEC repaired it
    assert 0.005 < measured[1] < 0.06
    assert 0.04 < measured[2] < 0.2


def test_at_five_percent_loss_fec_recovers_reliable_updates_in_order() -> None:
    sim, client, server, network = connect(loss=0.05, seed=3)
    sent = play(sim, client, None, 20.0, Delivery.RELIABLE_ORDERED)
    sim.run(until=sim.now + 10.0)
    assert received(sim) == sent  # every update, once (ordered delivery checks the order)
    assert server.stats.fec_recovered > 0
    assert network.parity(CLIENT_ADDR) > 0
    # most losses were repaired without waiting for a retransmission
    assert client.stats.retransmissions < server.stats.fec_recovered


def test_fec_delivers_more_unreliable_updates_under_loss() -> None:
    delivered = {}
    for fec in ((10, 3), None):
        sim, client, _server, _network = connect(loss=0.05, seed=6, fec=fec)
        sent = play(sim, client, None, 20.0)
        delivered[fec is not None] = received(sim) / sent
    assert delivered[True] > delivered[False]
    assert delivered[True] > 0.985  # 5 % lost, most of it rebuilt
    assert delivered[False] < 0.97


def test_the_meter_ignores_data_packets_fec_could_have_hidden() -> None:
    meter = LossMeter()
    meter.protect(5, 9)  # a group of 5..9 went out with parity
    meter.on_fates([SentPacket(7, 0.0, 100, True, True, [])], True, 1)
    assert meter.loss == 0.0  # packet 7 may have been rebuilt: no sample
    meter.on_fates([SentPacket(10, 0.0, 100, True, True, [])], True, 1)  # its parity
    assert meter.loss == pytest.approx(FAST_WEIGHT)  # the fast average reacts first
    meter.on_fates([SentPacket(11, 0.0, 100, True, True, [])], False, 1)
    assert meter.loss == pytest.approx(FAST_WEIGHT * (1 - FAST_WEIGHT))
    # once everything up to 9 is settled the group is forgotten: 7 would count again
    meter.on_fates([], False, 10)
    meter.on_fates([SentPacket(7, 0.0, 100, True, True, [])], True, 10)
    assert meter.loss > FAST_WEIGHT


def test_the_meter_remembers_sparse_losses_with_its_slow_average() -> None:
    meter = LossMeter()
    packets = [SentPacket(pn, 0.0, 100, True, True, []) for pn in range(1, 201)]
    meter.on_fates(packets[:1], True, 1)
    meter.on_fates(packets[1:], False, 1)  # 199 acknowledged after one loss
    # the fast average has all but forgotten it; the slow one still reads about 0.14 %,
    # enough for a lone packet's parity shard
    assert meter.loss == pytest.approx(SLOW_WEIGHT * (1 - SLOW_WEIGHT) ** 199)
    assert parity_count(1, 3, meter.loss, 1e-3) == 1


def test_the_meter_remembers_a_bounded_number_of_groups() -> None:
    meter = LossMeter()
    for g in range(1000):
        meter.protect(2 * g, 2 * g)
    assert len(meter._starts) == len(meter._ends) <= 256


def test_an_owed_ack_waits_for_our_next_packet_but_never_over_100_ms() -> None:
    tracker = ReceiveTracker(max_ack_delay=0.025)
    for t in (0.0, 1 / 30, 2 / 30):  # we send every 33 ms
        tracker.on_eliciting_sent(t)
    tracker.on_eliciting_sent(2 / 30 + 0.0005)  # (its parity: the same burst)
    tracker.on_received(1, True, 2 / 30 + 0.005)
    # due at our next update plus a quarter interval, not 25 ms after the packet
    assert tracker.ack_deadline() == pytest.approx(2 / 30 + 1.25 / 30)
    tracker.on_ack_sent()
    slow = ReceiveTracker(max_ack_delay=0.025)
    for t in (0.0, 0.09, 0.18):
        slow.on_eliciting_sent(t)
    slow.on_received(1, True, 0.181)
    assert slow.ack_deadline() == pytest.approx(0.181 + MAX_HELD_ACK_DELAY)
    rare = ReceiveTracker(max_ack_delay=0.025)  # sending every 150 ms: nothing to wait for
    for t in (0.0, 0.15, 0.3):
        rare.on_eliciting_sent(t)
    rare.on_received(1, True, 0.301)
    assert rare.ack_deadline() == pytest.approx(0.326)


def test_our_sending_stopped_so_the_ack_is_not_held() -> None:
    tracker = ReceiveTracker(max_ack_delay=0.025)
    for t in (0.0, 1 / 30, 2 / 30):
        tracker.on_eliciting_sent(t)
    tracker.on_received(1, True, 1.0)  # long after our last update: the usual 25 ms
    assert tracker.ack_deadline() == pytest.approx(1.025)


def test_a_lone_packet_at_five_percent_loss_still_gets_two_parity_shards() -> None:
    # what the fixed rule gave every lone packet, now only where the loss calls for it
    assert parity_count(1, 3, 0.05, 1e-3) == 2
    assert parity_count(1, 3, 0.0, 1e-3) == 0

"""BBR: the model converges on a simulated bottleneck, states and gains follow BBR v1, the
pacer holds its rate, and cwnd never drops below the floor."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass, field

import pytest

from quantum.bbr import (
    BBR,
    DRAIN_GAIN,
    MAX_DATAGRAM,
    PACING_GAIN_CYCLE,
    STARTUP_GAIN,
    RateSnapshot,
)

SIZE = MAX_DATAGRAM
MIN_CWND = 4 * SIZE


@dataclass
class Step:
    now: float
    state: str
    pacing_gain: float
    pacing_rate: float
    btl_bw: float
    min_rtt: float | None
    cwnd: int
    inflight: int


@dataclass
class PathSim:
    """A sender with BBR behind one bottleneck: a FIFO link of `rate` bytes/s (unbounded
    buffer) and a fixed propagation RTT, one ACK per packet. Optional random loss (detected
    once three later packets are acknowledged), a path change at a given time, and an
    application that produces data at a limited rate."""

    bbr: BBR
    rate: float
    rtt: float
    loss: float = 0.0
    seed: int = 0
    path_change: tuple[float, float, float] | None = None  # (at, new rate, new rtt)
    now: float = 0.0
    inflight: int = 0
    steps: list[Step] = field(default_factory=list)
    acked_log: list[tuple[float, int]] = field(default_factory=list)
    rtt_samples: list[tuple[float, float]] = field(default_factory=list)
    _link_free: float = 0.0
    _pn: int = 0
    _acks: list[tuple[float, int]] = field(default_factory=list)
    _packets: dict[int, tuple[int, float, RateSnapshot]] = field(default_factory=dict)
    _app_rate: float | None = None
    _app_start: float = 0.0
    _app_sent: int = 0
    _random: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._random.seed(self.seed)

    def limit_app(self, rate: float | None) -> None:
        """From now on the application produces `rate` bytes/s (None: always has data)."""
        self._app_rate, self._app_start, self._app_sent = rate, self.now, 0

    def _path(self, t: float) -> tuple[float, float]:
        change = self.path_change
        if change is not None and t >= change[0]:
            return change[1], change[2]
        return self.rate, self.rtt

    def _send_time(self) -> float:
        bbr = self.bbr
        if not bbr.can_send(self.inflight):
            return math.inf
        t = self.now
        if self._app_rate is not None:
            t_data = self._app_start + (self._app_sent + SIZE) / self._app_rate
            if t_data > self.now:
                bbr.on_app_limited(self.inflight)
                t = t_data
        return max(t, bbr.next_send_time(self.now))

    def run(self, until: float) -> None:
        bbr = self.bbr
        while True:
            t_ack = self._acks[0][0] if self._acks else math.inf
            t_send = self._send_time()
            t = min(t_ack, t_send)
            if t > until:
                self.now = until
                return
            self.now = max(self.now, t)
            if t_ack <= t_send:
                self._ack(heapq.heappop(self._acks)[1])
            else:
                assert bbr.next_send_time(self.now) <= self.now
                self._send()
            assert bbr.cwnd >= MIN_CWND
            self.steps.append(Step(self.now, bbr.state, bbr.pacing_gain, bbr.pacing_rate,
                                   bbr.btl_bw, bbr.min_rtt, bbr.cwnd, self.inflight))

    def _send(self) -> None:
        snap = self.bbr.on_packet_sent(self.now, SIZE, self.inflight)
        self._pn += 1
        self.inflight += SIZE
        self._app_sent += SIZE
        self._packets[self._pn] = (SIZE, self.now, snap)
        if self.loss and self._random.random() < self.loss:
            return  # dropped before the bottleneck: no ACK will come
        rate, rtt = self._path(self.now)
        self._link_free = max(self.now, self._link_free) + SIZE / rate
        heapq.heappush(self._acks, (self._link_free + rtt, self._pn))

    def _ack(self, pn: int) -> None:
        entry = self._packets.pop(pn, None)
        if entry is None:
            return  # already declared lost
        size, sent, snap = entry
        self.inflight -= size
        sample = self.now - sent
        self.rtt_samples.append((self.now, sample))
        self.bbr.on_ack(self.now, [(size, sent, snap)], self.inflight, sample)
        self.acked_log.append((self.now, size))
        lost = [p for p in self._packets if p < pn - 3]
        if lost:
            lost_bytes = sum(self._packets.pop(p)[0] for p in lost)
            self.inflight -= lost_bytes
            self.bbr.on_loss(self.now, lost_bytes, self.inflight)

    def throughput(self, start: float, end: float) -> float:
        return sum(s for t, s in self.acked_log if start <= t < end) / (end - start)

    def first(self, state: str, after: float = 0.0) -> float:
        return next(s.now for s in self.steps if s.state == state and s.now >= after)


RATE = 1_250_000.0  # 10 Mbit/s
RTT = 0.04
BASE_RTT = RTT + SIZE / RATE  # propagation plus serialization of one packet


def _converged(seed: int = 1, until: float = 3.0) -> PathSim:
    sim = PathSim(BBR(rng=random.Random(seed)), RATE, RTT)
    sim.run(until)
    return sim


def _transitions(sim: PathSim) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    for s in sim.steps:
        if not out or out[-1][1] != s.state:
            out.append((s.now, s.state))
    return out


def test_initial_state() -> None:
    bbr = BBR()
    assert (bbr.state, bbr.cwnd, bbr.btl_bw, bbr.min_rtt) == ("STARTUP", 10 * SIZE, 0.0, None)
    assert bbr.pacing_gain == bbr.cwnd_gain == STARTUP_GAIN == 2.77
    assert bbr.pacing_rate == pytest.approx(2.77 * 10 * SIZE / 0.1)
    assert bbr.can_send(10 * SIZE - 1) and not bbr.can_send(10 * SIZE)
    assert bbr.next_send_time(5.0) == 5.0
    assert PACING_GAIN_CYCLE == (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [((63,), "at least 64 bytes"), ((1472, 10, 0), "min_cwnd_packets"),
     ((1472, 3, 4), "min_cwnd_packets <= initial_cwnd_packets")],
)
def test_bad_parameters(args: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BBR(*args)


def test_startup_drain_probe_bw_and_model_converges() -> None:
    sim = _converged()
    states = [s for _, s in _transitions(sim)]
    assert states == ["STARTUP", "DRAIN", "PROBE_BW"]
    bbr = sim.bbr
    assert bbr.filled_pipe
    assert bbr.btl_bw == pytest.approx(RATE, rel=0.03)
    assert bbr.min_rtt == pytest.approx(BASE_RTT, rel=0.01)
    # STARTUP ends some rounds after the pipe is full: bandwidth is found in ~log2(BDP) rounds
    startup_end = sim.first("DRAIN")
    assert 0.2 < startup_end < 1.0
    drain = [s for s in sim.steps if s.state == "DRAIN"]
    assert all(s.pacing_gain == pytest.approx(DRAIN_GAIN) for s in drain)
    # DRAIN lasts until the STARTUP queue is gone: inflight back to about one BDP
    bdp = RATE * BASE_RTT
    assert sim.steps[sim.steps.index(drain[-1]) + 1].inflight <= bdp + 3 * SIZE
    # steady state: the link is full and the queue stays short
    assert sim.throughput(1.5, 3.0) > 0.97 * RATE
    late = sorted(r for t, r in sim.rtt_samples if t > 1.5)
    assert late[len(late) // 2] < 1.15 * BASE_RTT


def test_model_follows_a_faster_and_a_slower_path() -> None:
    fast = PathSim(BBR(rng=random.Random(2)), 12_500_000.0, 0.01)
    fast.run(1.5)
    assert fast.bbr.state == "PROBE_BW"
    assert fast.bbr.btl_bw == pytest.approx(12_500_000.0, rel=0.03)
    assert fast.bbr.min_rtt == pytest.approx(0.01 + SIZE / 12_500_000.0, rel=0.01)
    slow = PathSim(BBR(rng=random.Random(3)), 125_000.0, 0.1)
    slow.run(8.0)
    assert slow.bbr.state == "PROBE_BW"
    assert slow.bbr.btl_bw == pytest.approx(125_000.0, rel=0.03)
    assert slow.throughput(4.0, 8.0) > 0.95 * 125_000.0


def test_bandwidth_drop_is_tracked_within_the_filter_window() -> None:
    # the control case for the app-limited test below: samples that are not app-limited
    # do lower the estimate once the old max ages out of its 10-round window
    sim = PathSim(BBR(rng=random.Random(4)), RATE, RTT, path_change=(2.0, RATE / 4, RTT))
    sim.run(2.0)
    assert sim.bbr.btl_bw == pytest.approx(RATE, rel=0.03)
    rounds_at_change = sim.bbr.round_count
    rounds: list[int] = []
    while sim.bbr.btl_bw > RATE / 2:
        sim.run(sim.now + 0.01)
        rounds.append(sim.bbr.round_count)
        assert sim.now < 10.0
    assert 10 <= rounds[-1] - rounds_at_change <= 12
    sim.run(sim.now + 1.5)
    assert sim.bbr.btl_bw == pytest.approx(RATE / 4, rel=0.03)
    assert sim.throughput(sim.now - 1.0, sim.now) > 0.95 * RATE / 4


def test_app_limited_samples_do_not_lower_the_estimate() -> None:
    sim = _converged(seed=5, until=2.0)
    assert sim.bbr.btl_bw == pytest.approx(RATE, rel=0.03)
    sim.limit_app(RATE / 5)
    sim.run(6.0)  # ~100 rounds at a fifth of the path's rate
    assert sim.throughput(3.0, 6.0) == pytest.approx(RATE / 5, rel=0.02)
    assert sim.bbr.btl_bw == pytest.approx(RATE, rel=0.03)
    # and once data is plentiful again the full rate is used at once
    sim.limit_app(None)
    sim.run(7.0)
    assert sim.throughput(6.2, 7.0) > 0.95 * RATE


def test_probe_bw_gain_cycle() -> None:
    sim = _converged(seed=6, until=4.0)
    min_rtt = sim.bbr.min_rtt
    assert min_rtt is not None
    probe = [s for s in sim.steps if s.state == "PROBE_BW"]
    assert all(s.pacing_rate == pytest.approx(s.pacing_gain * s.btl_bw) for s in probe)
    phases: list[tuple[float, float]] = []  # (start, gain) of each visible phase
    for s in probe:
        if not phases or phases[-1][1] != s.pacing_gain:
            phases.append((s.now, s.pacing_gain))
    gains = [g for _, g in phases]
    assert set(gains) == {1.25, 0.75, 1.0}
    for a, b in itertools.pairwise(gains):
        assert (a, b) in {(1.25, 0.75), (0.75, 1.0), (1.0, 1.25)}
    # each phase lasts at least one min RTT; the six 1.0 phases run back to back
    for (start, gain), (end, _) in itertools.pairwise(phases[1:]):
        length = end - start
        if gain == 1.25:
            assert min_rtt < length < 1.3 * min_rtt
        elif gain == 0.75:
            assert length < 1.3 * min_rtt
        else:
            assert 6 * min_rtt < length < 6 * 1.3 * min_rtt
    assert sim.bbr.cwnd_gain == 2.0


@pytest.mark.parametrize("seed", range(8))
def test_probe_bw_never_starts_by_draining(seed: int) -> None:
    sim = _converged(seed=seed, until=0.8)
    first = next(s for s in sim.steps if s.state == "PROBE_BW")
    assert first.pacing_gain in {1.25, 1.0}


def test_probe_bw_start_phase_is_randomised() -> None:
    starts = set()
    for seed in range(8):
        bbr = _converged(seed=seed, until=0.8).bbr
        starts.add(bbr._cycle_index)
    assert len(starts) > 2




def test_probe_rtt_after_10s_without_a_new_min_rtt() -> None:
    # the route gets 20 ms longer at t=1 s: no sample can match the old min RTT again, so
    # 10 s after the last one BBR drains to 4 packets for 200 ms to re-measure
    sim = PathSim(BBR(rng=random.Random(7)), RATE, RTT, path_change=(1.0, RATE, RTT + 0.02))
    sim.run(12.0)
    entry = sim.first("PROBE_RTT")
    old_min = next(s.min_rtt for s in sim.steps if s.now >= entry - 0.5)
    assert old_min is not None and old_min == pytest.approx(BASE_RTT)
    last_min_sample = max(t for t, r in sim.rtt_samples if r <= old_min)
    assert 10.0 < entry - last_min_sample < 10.0 + 2 * (RTT + 0.02)
    assert all(s.state == "PROBE_BW" for s in sim.steps if 1.0 < s.now < entry)
    during = [s for s in sim.steps if s.state == "PROBE_RTT"]
    assert all(s.cwnd == MIN_CWND for s in during)
    assert all(s.pacing_gain == 1.0 for s in during)
    low = next(s.now for s in during if s.inflight <= MIN_CWND)
    exit_at = sim.first("PROBE_BW", after=entry)
    # at least 200 ms at the low inflight, and at least one round trip of it
    assert 0.2 + (RTT + 0.02) * 0.5 < exit_at - low < 0.2 + 3 * (RTT + 0.02)
    # the new, longer path was measured and the old cwnd came back
    assert sim.bbr.min_rtt == pytest.approx(RTT + 0.02 + SIZE / RATE, rel=0.01)
    after = [s for s in sim.steps if s.now > exit_at]
    assert after[0].cwnd > 10 * MIN_CWND
    assert sim.throughput(exit_at + 0.5, 12.0) > 0.95 * RATE


def test_probe_rtt_not_entered_while_min_rtt_is_refreshed() -> None:
    # an application-limited flow keeps the queue empty, so every round re-measures the
    # min RTT and PROBE_RTT is never needed
    sim = _converged(seed=8, until=1.0)
    sim.limit_app(RATE / 2)
    sim.run(25.0)
    assert "PROBE_RTT" not in {s.state for s in sim.steps}


def test_probe_rtt_exits_to_startup_when_the_pipe_was_never_filled() -> None:
    # an application-limited flow never fills the pipe, so it is still in STARTUP when the
    # min RTT expires (the route got longer at 1 s); after PROBE_RTT it goes back to STARTUP
    sim = PathSim(BBR(rng=random.Random(9)), RATE, RTT, path_change=(1.0, RATE, RTT + 0.02))
    sim.limit_app(RATE / 10)
    sim.run(12.0)
    states = [s for _, s in _transitions(sim)]
    assert states == ["STARTUP", "PROBE_RTT", "STARTUP"]
    assert not sim.bbr.filled_pipe
    assert sim.bbr.pacing_gain == STARTUP_GAIN
    assert sim.bbr.min_rtt == pytest.approx(RTT + 0.02 + SIZE / RATE, rel=0.01)
    assert sim.throughput(2.0, 12.0) == pytest.approx(RATE / 10, rel=0.02)


def _pace(bbr: BBR, start: float, end: float, size: int = SIZE) -> list[float]:
    """Send as fast as the pacer allows from `start` to `end`; returns the send times."""
    times: list[float] = []
    t = start
    while True:
        t = max(t, bbr.next_send_time(t))
        if t >= end:
            return times
        bbr.on_packet_sent(t, size, SIZE)  # something in flight: no idle restart
        times.append(t)


@pytest.mark.parametrize("rate", [50_000.0, 400_000.0, 12_500_000.0, 125_000_000.0])
def test_pacer_holds_the_rate_with_a_bounded_burst(rate: float) -> None:
    bbr = BBR()
    bbr.pacing_rate = rate
    burst = max(2 * SIZE, rate * 0.001)
    times = _pace(bbr, 0.0, 1.0)
    sent = len(times) * SIZE
    # over the whole second: the rate, give or take the initial burst and one packet
    assert rate - SIZE <= sent <= rate + burst + SIZE
    # over every window: never more than the burst allowance plus the rate
    for i in range(0, len(times), max(1, len(times) // 200)):
        for j in (i + 1, i + 10, i + 100, len(times) - 1):
            if i < j < len(times):
                window = times[j] - times[i]
                assert (j - i + 1) * SIZE <= burst + rate * window + 1e-6 * rate


def test_pacer_refills_only_up_to_the_burst_after_idle() -> None:
    bbr = BBR()
    bbr.pacing_rate = 1_000_000.0  # 1 ms of bytes < 2 datagrams: burst is 2 packets
    _pace(bbr, 0.0, 0.5)
    times = _pace(bbr, 10.0, 10.0 + 1e-9)  # after 9.5 s idle, what may leave at once?
    assert len(times) == 2
    assert bbr.next_send_time(10.0) == pytest.approx(10.0 + SIZE / 1_000_000.0)


def test_small_packets_are_paced_by_bytes() -> None:
    bbr = BBR()
    bbr.pacing_rate = 100_000.0
    small = _pace(bbr, 0.0, 1.0, size=100)
    assert 100_000 - SIZE <= len(small) * 100 <= 100_000 + 2 * SIZE + SIZE


def _fill(bbr: BBR, now: float, packets: int,
          inflight: list[tuple[int, float, RateSnapshot]]) -> None:
    for _ in range(packets):
        inflight.append((SIZE, now, bbr.on_packet_sent(now, SIZE, SIZE * len(inflight))))


def test_loss_conserves_packets_then_restores_cwnd() -> None:
    sim = _converged(seed=10, until=2.0)
    bbr = sim.bbr
    prior = bbr.cwnd
    btl_bw = bbr.btl_bw
    now = sim.now
    flight: list[tuple[int, float, RateSnapshot]] = []
    _fill(bbr, now, 30, flight)
    bbr.on_ack(now + 0.05, flight[:5], 25 * SIZE, 0.05)
    # the same ACK reveals ten losses: cwnd falls to what is still in flight
    bbr.on_loss(now + 0.05, 10 * SIZE, 15 * SIZE)
    assert bbr.cwnd == 15 * SIZE
    # ACKs of packets sent before the loss: packet conservation, one out per one delivered
    # (without it cwnd would grow by the acked bytes)
    bbr.on_ack(now + 0.06, flight[5:7], 13 * SIZE, 0.06)
    assert bbr.cwnd == 15 * SIZE
    assert bbr.btl_bw == btl_bw  # loss is not a bandwidth signal
    # everything else lost in the same episode: no second cut (only the episode's first loss
    # cuts; cutting per loss spirals down under random loss)
    bbr.on_loss(now + 0.06, 13 * SIZE, 0)
    assert bbr.cwnd == 15 * SIZE
    bbr.on_loss(now + 0.06, 0, 0)  # nothing in flight was lost: no change
    assert bbr.cwnd == 15 * SIZE
    # the first ACK of a packet sent after the loss ends the episode: the old cwnd is back
    after: list[tuple[int, float, RateSnapshot]] = []
    _fill(bbr, now + 0.07, 1, after)
    bbr.on_ack(now + 0.12, after, 0, 0.05)
    assert bbr.cwnd >= prior


def test_random_loss_does_not_collapse_throughput() -> None:
    # BBR's point: 1 % random loss is not congestion; a loss-based controller would halve
    # its window every few round trips here
    sim = PathSim(BBR(rng=random.Random(11)), RATE, RTT, loss=0.01, seed=11)
    sim.run(6.0)
    assert sim.bbr.state in {"PROBE_BW", "PROBE_RTT"}
    assert sim.bbr.btl_bw == pytest.approx(RATE, rel=0.05)
    assert sim.throughput(2.0, 6.0) > 0.85 * RATE


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_heavy_random_loss_keeps_most_of_the_rate(seed: int) -> None:
    # 10 % random loss: one cwnd cut per loss episode keeps the sender near the bottleneck
    # rate; cutting for every loss inside an episode spiralled down to about 0.6 of it
    sim = PathSim(BBR(rng=random.Random(seed)), RATE, RTT, loss=0.10, seed=seed)
    sim.run(8.0)
    assert sim.throughput(3.0, 8.0) > 0.7 * RATE


def test_cwnd_floor_holds_under_any_feedback() -> None:
    rnd = random.Random(12)
    bbr = BBR(rng=rnd)
    flight: list[tuple[int, float, RateSnapshot]] = []
    now = 0.0
    for _ in range(3000):
        now += rnd.random() * 0.01
        action = rnd.random()
        if action < 0.5:
            _fill(bbr, now, rnd.randrange(1, 4), flight)
        elif action < 0.85 and flight:
            n = rnd.randrange(1, len(flight) + 1)
            acked, flight = flight[:n], flight[n:]
            bbr.on_ack(now, acked, SIZE * len(flight), now - acked[-1][1] + 0.001)
        elif flight:
            n = rnd.randrange(1, len(flight) + 1)
            flight = flight[n:]
            bbr.on_loss(now, n * SIZE, SIZE * len(flight))
        else:
            bbr.on_app_limited(0)
        assert bbr.cwnd >= MIN_CWND
        assert bbr.pacing_rate > 0.0
        assert bbr.state in {"STARTUP", "DRAIN", "PROBE_BW", "PROBE_RTT"}

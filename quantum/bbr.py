"""BBR (v1) congestion control with a token-bucket pacer, sans-I/O.

BBR models the path instead of reacting to loss: the bottleneck bandwidth (a windowed max of
delivery-rate samples over 10 round trips) and the round-trip propagation time (the min RTT
over 10 s). It paces at gain x bandwidth and caps what is in flight at gain x BDP. The state
machine (STARTUP, DRAIN, PROBE_BW, PROBE_RTT) and the delivery-rate sampling follow
draft-cardwell-iccrg-bbr-congestion-control-00 and draft-cheng-iccrg-delivery-rate-estimation,
with the Quantum protocol's constants (the original fixes the STARTUP gain at 2.77, a little
under the 2/ln 2 = 2.885 of the draft).

The connection calls `on_packet_sent` for every in-flight packet and keeps the returned
`RateSnapshot` with it; `on_ack`, `on_loss` and `on_app_limited` feed the model back. Nothing
here reads a clock: every call that needs the time takes `now` (float seconds).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

MAX_DATAGRAM: Final = 1472  # the "packet" of cwnd arithmetic

STARTUP_GAIN: Final = 2.77
DRAIN_GAIN: Final = 1 / STARTUP_GAIN
PROBE_BW_CWND_GAIN: Final = 2.0
PACING_GAIN_CYCLE = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
BTL_BW_WINDOW_ROUNDS: Final = 10
MIN_RTT_WINDOW: Final = 10.0
PROBE_RTT_DURATION: Final = 0.2
FULL_BW_GROWTH: Final = 1.25  # STARTUP ends when a round grows the bandwidth by less than this...
FULL_BW_ROUNDS: Final = 3  # ...this many rounds in a row
INITIAL_RTT: Final = 0.1  # assumed RTT for the first pacing rate, before any sample
PACING_BURST_TIME: Final = 0.001  # the pacer lets this much time's worth of bytes out back to back
PACING_BURST_PACKETS: Final = 2  # ...but never fewer than this many datagrams
QUANTA_PACKETS: Final = 3  # cwnd headroom so that ACK aggregation does not starve the pipe

STARTUP: Final = "STARTUP"
DRAIN: Final = "DRAIN"
PROBE_BW: Final = "PROBE_BW"
PROBE_RTT: Final = "PROBE_RTT"


@dataclass(slots=True, init=False)
class RateSnapshot:
    """Connection delivery state when a packet was sent; its ACK turns it into a rate sample."""

    delivered: int
    delivered_time: float
    first_sent_time: float
    is_app_limited: bool

    def __init__(
        self,
        delivered: int,
        delivered_time: float,
        first_sent_time: float,
        is_app_limited: bool,
    ) -> None:
        self.delivered = delivered
        self.delivered_time = delivered_time
        self.first_sent_time = first_sent_time
        self.is_app_limited = is_app_limited


class _WindowedMax:
    """Max of samples over a sliding window, in O(1) memory (Kathleen Nichols' algorithm,
    as in Linux's lib/win_minmax.c): the best, second-best and third-best samples of
    successive sub-windows, so the max does not drop abruptly when the best sample ages out.
    Six scalars rather than two lists: compiled, they are stored unboxed (64 bytes instead of
    ~370 per connection)."""

    __slots__ = ("_t0", "_t1", "_t2", "_v0", "_v1", "_v2", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._t0 = self._t1 = self._t2 = 0.0
        self._v0 = self._v1 = self._v2 = 0.0

    @property
    def value(self) -> float:
        return self._v0

    def _reset(self, t: float, v: float) -> float:
        self._t0 = self._t1 = self._t2 = t
        self._v0 = self._v1 = self._v2 = v
        return v

    def update(self, t: float, v: float) -> float:
        win = self.window
        if v >= self._v0 or t - self._t2 > win:
            return self._reset(t, v)
        if v >= self._v1:
            self._t1 = self._t2 = t
            self._v1 = self._v2 = v
        elif v >= self._v2:
            self._t2, self._v2 = t, v
        dt = t - self._t0
        if dt > win:
            # the best sample aged out: promote the runners-up
            self._t0, self._t1, self._t2 = self._t1, self._t2, t
            self._v0, self._v1, self._v2 = self._v1, self._v2, v
            if t - self._t0 > win:
                self._t0, self._t1 = self._t1, self._t2
                self._v0, self._v1 = self._v1, self._v2
        elif self._t1 == self._t0 and dt > win / 4:
            self._t1 = self._t2 = t
            self._v1 = self._v2 = v
        elif self._t2 == self._t1 and dt > win / 2:
            self._t2, self._v2 = t, v
        return self._v0


#: one generator for every connection: a Random() each would cost 2.5 KB per connection
_SHARED_RNG: Final = random.Random()


class BBR:
    """One connection's congestion controller and pacer. `cwnd` is in bytes, rates in bytes/s."""

    __slots__ = (
        "_app_limited",
        "_bw_filter",
        "_cycle_index",
        "_cycle_stamp",
        "_delivered",
        "_delivered_time",
        "_first_sent_time",
        "_full_bw",
        "_full_bw_count",
        "_idle_restart",
        "_in_recovery",
        "_loss_since_ack",
        "_min_rtt",
        "_min_rtt_stamp",
        "_next_round_delivered",
        "_pace_time",
        "_packet_conservation",
        "_prior_cwnd",
        "_probe_rtt_done_stamp",
        "_probe_rtt_round_done",
        "_recovery_start",
        "_rng",
        "_round_start",
        "_tokens",
        "btl_bw",
        "cwnd",
        "cwnd_gain",
        "filled_pipe",
        "initial_cwnd",
        "max_datagram",
        "min_cwnd",
        "pacing_gain",
        "pacing_rate",
        "round_count",
        "state",
    )

    def __init__(self, max_datagram: int = MAX_DATAGRAM, initial_cwnd_packets: int = 10,
                 min_cwnd_packets: int = 4, *, rng: random.Random | None = None) -> None:
        if max_datagram < 64:
            raise ValueError(f"max_datagram must be at least 64 bytes, got {max_datagram}")
        if min_cwnd_packets < 1 or initial_cwnd_packets < min_cwnd_packets:
            raise ValueError("need 1 <= min_cwnd_packets <= initial_cwnd_packets, got "
                             f"{min_cwnd_packets} and {initial_cwnd_packets}")
        self.max_datagram = max_datagram
        self.min_cwnd = min_cwnd_packets * max_datagram
        self.initial_cwnd = initial_cwnd_packets * max_datagram
        # the PROBE_BW starting phase is random so that competing flows do not probe in step
        self._rng = rng if rng is not None else _SHARED_RNG

        self.state = STARTUP
        self.pacing_gain = STARTUP_GAIN
        self.cwnd_gain = STARTUP_GAIN
        self.cwnd = self.initial_cwnd
        self.pacing_rate = STARTUP_GAIN * self.initial_cwnd / INITIAL_RTT
        self.btl_bw = 0.0
        # -1.0 until the first sample (plain floats are stored unboxed; see the min_rtt property)
        self._min_rtt = -1.0
        self._min_rtt_stamp = 0.0
        self._bw_filter = _WindowedMax(BTL_BW_WINDOW_ROUNDS)

        # delivery-rate estimation (connection-wide counters of the IETF draft)
        self._delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0
        self._app_limited = 0  # `delivered` mark until which samples are app-limited; 0: none

        self.round_count = 0
        self._next_round_delivered = 0
        self._round_start = False
        self.filled_pipe = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self._cycle_index = 0
        self._cycle_stamp = 0.0
        self._probe_rtt_done_stamp: float | None = None
        self._probe_rtt_round_done = False
        self._idle_restart = False
        self._prior_cwnd = 0
        self._in_recovery = False
        self._recovery_start = 0.0
        self._packet_conservation = False
        self._loss_since_ack = False

        self._tokens = float(self._burst())
        self._pace_time = -1.0  # when the token bucket was last filled; -1.0: never

    # ------------------------------------------------------------------ sender-side events

    def on_packet_sent(self, now: float, size: int, bytes_in_flight: int) -> RateSnapshot:
        """An in-flight packet leaves (`bytes_in_flight` excludes it); keep the snapshot with it."""
        self._refill(now)
        if bytes_in_flight == 0:
            # nothing in flight: a send rate measured from here must not include the idle time
            self._first_sent_time = self._delivered_time = now
            if self._app_limited:
                self._idle_restart = True
                if self.state == PROBE_BW:
                    self._set_pacing_rate_with_gain(1.0)
                elif self.state == PROBE_RTT:
                    self._check_probe_rtt_done(now)
        self._tokens -= size
        return RateSnapshot(self._delivered, self._delivered_time, self._first_sent_time,
                            self._app_limited != 0)

    def on_handshake_rtt(self, rtt: float) -> None:
        """An RTT measured before any data (the handshake): pace the initial window over it
        instead of over the 100 ms guess, as the BBR draft's InitPacingRate does with SRTT."""
        if self.btl_bw == 0.0 and rtt > 0.0:
            self.pacing_rate = STARTUP_GAIN * self.initial_cwnd / max(rtt, 0.001)

    def on_app_limited(self, bytes_in_flight: int) -> None:
        """The sender ran out of data with room left in cwnd: rate samples until everything
        in flight now is delivered measure the application, not the path."""
        if bytes_in_flight < self.cwnd:
            self._app_limited = max(self._delivered + bytes_in_flight, 1)

    def can_send(self, bytes_in_flight: int) -> bool:
        return bytes_in_flight < self.cwnd

    @property
    def min_rtt(self) -> float | None:
        """The windowed minimum RTT; None before the first sample."""
        return self._min_rtt if self._min_rtt >= 0.0 else None

    def next_send_time(self, now: float) -> float:
        """Earliest time the next packet may leave: at or before `now` when it may go at once.
        A token bucket holding max(2 datagrams, 1 ms of bytes) lets small bursts out without
        a timer per packet while the rate holds over any longer interval."""
        t = self._pace_time
        if t < 0.0:
            return now
        need = self.max_datagram - self._tokens
        if need <= 0.0:
            return t
        return t + need / self.pacing_rate

    # ------------------------------------------------------------------ feedback

    def on_ack(self, now: float, acked: Sequence[tuple[int, float, RateSnapshot]],
               bytes_in_flight: int, rtt_sample: float | None) -> None:
        """Newly acknowledged in-flight packets as (size, sent_time, snapshot);
        `bytes_in_flight` is what remains after removing them."""
        if not acked:
            if rtt_sample is not None:
                self._update_min_rtt(now, rtt_sample)
            return
        # Once per ACK: the min-RTT filter and the pacing-rate and cwnd updates are inlined,
        # and the rarely true state checks guard their calls.
        self._refill(now)  # bytes earned so far at the old rate, before the rate changes
        it = iter(acked)
        acked_bytes, best_sent, best = next(it)
        for size, sent_time, snap in it:
            acked_bytes += size
            # the sample comes from the most recently sent packet: the shortest, newest interval
            if snap.delivered > best.delivered or (
                    snap.delivered == best.delivered and sent_time > best_sent):
                best, best_sent = snap, sent_time
        best_delivered = best.delivered
        delivered = self._delivered + acked_bytes
        self._delivered = delivered
        self._delivered_time = now
        app_limited = self._app_limited
        if app_limited and delivered > app_limited:
            self._app_limited = 0

        # delivery-rate sample: the longer of the send and ACK intervals, so that neither ACK
        # compression nor a sender burst inflates the rate
        interval = best_sent - best.first_sent_time
        ack_interval = now - best.delivered_time
        if ack_interval > interval:
            interval = ack_interval
        self._first_sent_time = best_sent
        min_rtt = self._min_rtt  # < 0.0: no sample yet
        floor = min_rtt  # an interval shorter than any RTT is a bogus sample
        if rtt_sample is not None and (floor < 0.0 or rtt_sample < floor):
            floor = rtt_sample
        rate: float | None = None
        if interval > 0.0 and (floor < 0.0 or interval >= floor):
            rate = (delivered - best_delivered) / interval

        if best_delivered >= self._next_round_delivered:
            self._next_round_delivered = delivered
            self.round_count += 1
            round_start = True
            self._packet_conservation = False
        else:
            round_start = False
        self._round_start = round_start

        if self._in_recovery and best_sent > self._recovery_start:
            # a packet sent after the loss arrived: the loss episode is over
            self._in_recovery = False
            self._packet_conservation = False
            if self._prior_cwnd > self.cwnd:
                self.cwnd = self._prior_cwnd

        if rate is not None and (rate >= self.btl_bw or not best.is_app_limited):
            self.btl_bw = self._bw_filter.update(self.round_count, rate)

        if self.state == PROBE_BW and self._is_next_cycle_phase(now,
                                                                 bytes_in_flight + acked_bytes):
            self._advance_cycle_phase(now)
        self._loss_since_ack = False
        if round_start and not self.filled_pipe:
            self._check_full_pipe(best.is_app_limited)
        if self.state in (STARTUP, DRAIN):
            self._check_drain(now, bytes_in_flight)

        # the min RTT over MIN_RTT_WINDOW (_update_min_rtt)
        expired = min_rtt >= 0.0 and now > self._min_rtt_stamp + MIN_RTT_WINDOW
        if rtt_sample is not None and rtt_sample >= 0.0 and (
                min_rtt < 0.0 or rtt_sample <= min_rtt or expired):
            self._min_rtt = min_rtt = rtt_sample
            self._min_rtt_stamp = now
        if expired or self.state == PROBE_RTT:
            self._check_probe_rtt(now, bytes_in_flight, expired)
        else:
            self._idle_restart = False

        # pacing rate (_set_pacing_rate_with_gain with the current gain)
        bw = self.btl_bw
        if bw > 0.0:
            new_rate: float | None = self.pacing_gain * bw
        elif min_rtt > 0.0:  # (-1.0 before any sample)
            # no bandwidth sample yet, but an RTT: pace the initial window over it
            new_rate = self.pacing_gain * self.initial_cwnd / min_rtt
        else:
            new_rate = None
        # in STARTUP the rate only grows: one low early sample must not stall the ramp-up
        if new_rate is not None and (self.filled_pipe or new_rate > self.pacing_rate):
            self.pacing_rate = new_rate

        # cwnd: grow by what was acked towards cwnd_gain x BDP, never below the floor
        cwnd = self.cwnd
        if self._packet_conservation:
            if bytes_in_flight + acked_bytes > cwnd:
                cwnd = bytes_in_flight + acked_bytes
        else:
            if min_rtt < 0.0 or bw <= 0.0:
                target = self.initial_cwnd
            else:
                target = int(self.cwnd_gain * bw * min_rtt) + QUANTA_PACKETS * self.max_datagram
            if self.filled_pipe:
                cwnd += acked_bytes
                if target < cwnd:
                    cwnd = target
            elif cwnd < target or delivered < self.initial_cwnd:
                cwnd += acked_bytes
        min_cwnd = self.min_cwnd
        if cwnd < min_cwnd or (cwnd > min_cwnd and self.state == PROBE_RTT):
            cwnd = min_cwnd
        self.cwnd = cwnd

    def on_loss(self, now: float, lost_bytes: int, bytes_in_flight: int) -> None:
        """In-flight packets declared lost (`bytes_in_flight` already excludes them).
        BBR does not treat loss as congestion, but it conserves packets for a round so a
        burst of losses does not let it keep blasting into an overflowing queue. Only the first
        loss of an episode cuts cwnd (to what is in flight): cutting again for every further
        loss of the same episode spirals down under random loss (at 10 % the sender then falls
        below its application's rate), and conservation already bounds the round."""
        if lost_bytes <= 0:
            return
        self._loss_since_ack = True
        if not self._in_recovery:
            self._save_cwnd()
            self._in_recovery = True
            self._recovery_start = now
            self._packet_conservation = True
            self._next_round_delivered = self._delivered  # conservation lasts one round
            self.cwnd = max(bytes_in_flight, self.min_cwnd)
        if self.state == PROBE_RTT:
            self.cwnd = min(self.cwnd, self.min_cwnd)

    # ------------------------------------------------------------------ model and states

    def _bdp_inflight(self, gain: float) -> int:
        """gain x estimated BDP plus headroom; the initial cwnd until the model has samples."""
        if self._min_rtt < 0.0 or self.btl_bw <= 0.0:
            return self.initial_cwnd
        return int(gain * self.btl_bw * self._min_rtt) + QUANTA_PACKETS * self.max_datagram

    def _update_min_rtt(self, now: float, rtt_sample: float | None) -> bool:
        """Track the min RTT over 10 s; returns whether the old one had expired."""
        min_rtt = self._min_rtt
        expired = min_rtt >= 0.0 and now > self._min_rtt_stamp + MIN_RTT_WINDOW
        if rtt_sample is not None and rtt_sample >= 0.0 and (
                min_rtt < 0.0 or rtt_sample <= min_rtt or expired):
            self._min_rtt = rtt_sample
            self._min_rtt_stamp = now
        return expired

    def _check_full_pipe(self, app_limited_sample: bool) -> None:
        if self.filled_pipe or not self._round_start or app_limited_sample:
            return
        if self.btl_bw >= self._full_bw * FULL_BW_GROWTH:
            self._full_bw = self.btl_bw
            self._full_bw_count = 0
            return
        self._full_bw_count += 1
        if self._full_bw_count >= FULL_BW_ROUNDS:
            self.filled_pipe = True

    def _check_drain(self, now: float, bytes_in_flight: int) -> None:
        if self.state == STARTUP and self.filled_pipe:
            self.state = DRAIN
            self.pacing_gain = DRAIN_GAIN
            self.cwnd_gain = STARTUP_GAIN
        if self.state == DRAIN and bytes_in_flight <= self._bdp_inflight(1.0):
            self._enter_probe_bw(now)

    def _enter_probe_bw(self, now: float) -> None:
        self.state = PROBE_BW
        self.cwnd_gain = PROBE_BW_CWND_GAIN
        # any phase but the 0.75 one: starting by draining a queue that is not there wastes
        # bandwidth; the phase is advanced once right away
        n = len(PACING_GAIN_CYCLE)
        self._cycle_index = n - 1 - self._rng.randrange(n - 1)
        self._advance_cycle_phase(now)

    def _advance_cycle_phase(self, now: float) -> None:
        self._cycle_stamp = now
        self._cycle_index = (self._cycle_index + 1) % len(PACING_GAIN_CYCLE)
        self.pacing_gain = PACING_GAIN_CYCLE[self._cycle_index]

    def _is_next_cycle_phase(self, now: float, prior_inflight: int) -> bool:
        full_length = self._min_rtt >= 0.0 and now - self._cycle_stamp > self._min_rtt
        gain = self.pacing_gain
        if gain == 1.0:
            return full_length
        if gain > 1.0:
            # probe until the extra inflight is really out there (or the path pushed back)
            return full_length and (self._loss_since_ack
                                    or prior_inflight >= self._bdp_inflight(gain))
        # drain the probe's queue, and stop early once it is gone
        return full_length or prior_inflight <= self._bdp_inflight(1.0)

    def _check_probe_rtt(self, now: float, bytes_in_flight: int, expired: bool) -> None:
        if self.state != PROBE_RTT and expired and not self._idle_restart:
            self.state = PROBE_RTT
            self.pacing_gain = 1.0
            self.cwnd_gain = 1.0
            self._save_cwnd()
            self._probe_rtt_done_stamp = None
        if self.state == PROBE_RTT:
            self._handle_probe_rtt(now, bytes_in_flight)
        self._idle_restart = False

    def _handle_probe_rtt(self, now: float, bytes_in_flight: int) -> None:
        # samples taken while inflight is held down say nothing about the bandwidth
        self._app_limited = max(self._delivered + bytes_in_flight, 1)
        if self._probe_rtt_done_stamp is None and bytes_in_flight <= self.min_cwnd:
            self._probe_rtt_done_stamp = now + PROBE_RTT_DURATION
            self._probe_rtt_round_done = False
            self._next_round_delivered = self._delivered
        elif self._probe_rtt_done_stamp is not None:
            if self._round_start:
                self._probe_rtt_round_done = True
            if self._probe_rtt_round_done:
                self._check_probe_rtt_done(now)

    def _check_probe_rtt_done(self, now: float) -> None:
        done = self._probe_rtt_done_stamp
        if done is None or now <= done:
            return
        self._min_rtt_stamp = now
        self.cwnd = max(self.cwnd, self._prior_cwnd)
        if self.filled_pipe:
            self._enter_probe_bw(now)
        else:
            self.state = STARTUP
            self.pacing_gain = STARTUP_GAIN
            self.cwnd_gain = STARTUP_GAIN

    def _save_cwnd(self) -> None:
        if not self._in_recovery and self.state != PROBE_RTT:
            self._prior_cwnd = self.cwnd
        else:
            self._prior_cwnd = max(self._prior_cwnd, self.cwnd)

    # ------------------------------------------------------------------ control parameters

    def _set_pacing_rate_with_gain(self, gain: float) -> None:
        bw = self.btl_bw
        if bw <= 0.0:
            if self._min_rtt <= 0.0:  # no sample yet (-1.0), or a useless zero
                return
            # no bandwidth sample yet, but an RTT: pace the initial window over it
            rate = gain * self.initial_cwnd / self._min_rtt
        else:
            rate = gain * bw
        # in STARTUP the rate only grows: one low early sample must not stall the ramp-up
        if self.filled_pipe or rate > self.pacing_rate:
            self.pacing_rate = rate

    # ------------------------------------------------------------------ pacer

    def _burst(self) -> float:
        return max(PACING_BURST_PACKETS * self.max_datagram, self.pacing_rate * PACING_BURST_TIME)

    def _refill(self, now: float) -> None:
        # _burst() spelled out without max()/min(): this runs for every packet and every ACK
        t = self._pace_time
        if t < 0.0:
            self._pace_time = now
        elif now > t:
            rate = self.pacing_rate
            tokens = self._tokens + (now - t) * rate
            burst = float(PACING_BURST_PACKETS * self.max_datagram)
            if rate * PACING_BURST_TIME > burst:
                burst = rate * PACING_BURST_TIME
            self._tokens = tokens if tokens < burst else burst
            self._pace_time = now

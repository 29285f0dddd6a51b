"""The pieces of the reconnect, alone: the backoff schedule and the server's carry-over keeper
(quantum/reconnect.py, quantum_server/carry.py)."""

from __future__ import annotations

import itertools
import random

import pytest

from quantum import carryover as co
from quantum.carryover import Carryover
from quantum.frames import Delivery, MessageFrame
from quantum.reconnect import ReconnectPolicy
from quantum_server.carry import Carryovers
from quantum_server.retained import RetainedStore


def test_the_backoff_doubles_to_its_ceiling_with_jitter_below_each_nominal_delay() -> None:
    policy = ReconnectPolicy(initial_delay=0.1, max_delay=1.0, multiplier=2.0, jitter=0.5)
    delays = list(itertools.islice(policy.delays(random.Random(1)), 8))
    nominal = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    for delay, bound in zip(delays, nominal, strict=True):
        assert bound * 0.5 <= delay <= bound
    assert len(set(delays)) == len(delays)  # jittered: no two clients in lockstep
    still = ReconnectPolicy(initial_delay=0.1, max_delay=0.1, jitter=0.0)
    assert list(itertools.islice(still.delays(), 3)) == [0.1, 0.1, 0.1]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"initial_delay": 2.0, "max_delay": 1.0}, "initial_delay <= max_delay"),
    ({"initial_delay": -1.0}, "initial_delay <= max_delay"),
    ({"multiplier": 0.5}, "multiplier must be at least 1"),
    ({"jitter": 1.5}, "jitter must be within 0..1"),
    ({"give_up_after": 0.0}, "give_up_after must be positive"),
])
def test_a_bad_policy_is_refused_naming_the_field(kwargs: dict[str, float],
                                                  message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReconnectPolicy(**kwargs)


def _carryover(size: int) -> Carryover:
    return Carryover(((0, 0, 1),), (MessageFrame(0, Delivery.RELIABLE_ORDERED, 0,
                                                 bytes(size)),), ())


def test_the_keeper_keeps_takes_once_and_drops_what_is_over_its_caps() -> None:
    now = [1000.0]
    keeper = Carryovers(RetainedStore(max_session_bytes=500, max_total_bytes=800),
                        wall_clock=lambda: now[0])
    assert keeper.keep_carryover("a", _carryover(300), expires_at=1100.0)
    assert not keeper.keep_carryover("b", _carryover(600), expires_at=1100.0)  # over its own
    assert keeper.keep_carryover("c", _carryover(300), expires_at=1050.0)
    assert not keeper.keep_carryover("d", _carryover(300), expires_at=1100.0)  # over the total
    assert (keeper.kept, keeper.dropped) == (2, 2)
    assert keeper.take("a") == _carryover(300)
    assert keeper.take("a") is None  # taken once
    now[0] = 1060.0
    assert keeper.expire() == 1 and keeper.take("c") is None  # expired with its session
    keeper.keep_carryover("e", _carryover(10), expires_at=2000.0)
    keeper.discard("e")  # the session ended
    assert keeper.take("e") is None and len(keeper.retained) == 0


def test_a_blob_that_does_not_decode_is_dropped_not_restored() -> None:
    retained = RetainedStore(1 << 20, 1 << 20)
    keeper = Carryovers(retained, wall_clock=lambda: 0.0)
    blob = co.encode(_carryover(10))
    retained.put("a", blob[:-1], expires_at=10.0)  # a snapshot from another build, say
    assert keeper.take("a") is None and keeper.dropped == 1

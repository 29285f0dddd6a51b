"""quantum.migration.PathValidation alone: the 3x budget to the byte, the probe count and the
probe clock (PROTOCOL.md 10.5). tests/test_migration.py checks the same promises on the wire,
through a connection; here each is checked at its exact boundary.
"""

from __future__ import annotations

import pytest

from quantum.migration import AMPLIFICATION, MAX_CHALLENGES, MIN_PROBE_INTERVAL, PathValidation

ADDR = ("10.0.0.77", 51000)


def test_the_budget_is_three_times_what_arrived_to_the_byte() -> None:
    probe = PathValidation(ADDR, b"c" * 8, received=100)
    assert AMPLIFICATION == 3
    assert probe.allows(300) and not probe.allows(301)  # nothing sent yet: all 300 bytes
    probe.on_sent(120)
    assert probe.allows(180) and not probe.allows(181)
    probe.received += 10  # another datagram from the candidate adds its bytes
    assert probe.allows(210) and not probe.allows(211)


def test_queued_probes_are_counted_and_kept_in_order() -> None:
    probe = PathValidation(ADDR, b"c" * 8, received=1000)
    probe.queue(b"first")
    probe.queue(b"second")
    assert probe.out == [b"first", b"second"]
    assert probe.sent == len(b"first") + len(b"second")


def test_a_candidate_is_given_up_after_exactly_max_challenges_probes() -> None:
    probe = PathValidation(ADDR, b"c" * 8, received=100)
    for n in range(MAX_CHALLENGES):
        assert not probe.exhausted, f"after {n} probes"
        probe.on_probe(10.0 + n, 1.0)
    assert probe.exhausted and probe.tries == MAX_CHALLENGES


@pytest.mark.parametrize(("interval", "wait"), [
    (1.5, 1.5),  # the connection's retransmission timeout, when it is longer
    (0.05, MIN_PROBE_INTERVAL),  # never less than the minimum: a late honest answer counts
])
def test_a_probe_waits_for_its_answer_at_least_the_minimum(interval: float, wait: float) -> None:
    probe = PathValidation(ADDR, b"c" * 8, received=100)
    probe.on_probe(42.0, interval)
    assert probe.deadline == 42.0 + wait


def test_only_the_exact_challenge_matches() -> None:
    probe = PathValidation(ADDR, bytes(range(8)), received=100)
    assert probe.matches(bytes(range(8)))
    assert not probe.matches(bytes(range(1, 9)))

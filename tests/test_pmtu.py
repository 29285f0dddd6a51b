"""quantum.pmtu.PathMtu: the search for the path's datagram size, and black-hole fallback."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum.pmtu import (
    BASE_DATAGRAM,
    BLACK_HOLE_LOSSES,
    BLACK_HOLE_RETRY,
    MAX_DATAGRAM_V4,
    MAX_DATAGRAM_V6,
    MAX_PROBES,
    RAISE_INTERVAL,
    SEARCH_GRANULARITY,
    PathMtu,
    max_datagram_for,
)


def search(path_mtu: int, max_size: int = MAX_DATAGRAM_V4) -> tuple[PathMtu, list[int]]:
    """Run a whole search over a path that carries datagrams up to `path_mtu`."""
    pmtu = PathMtu(max_size, 0.0)
    now, pn, probed = 0.0, 0, []
    while (size := pmtu.probe_due(now)) or pmtu.searching:
        if not size:
            break
        probed.append(size)
        pn += 1
        pmtu.on_probe_sent(pn, now, 0.1)
        if size <= path_mtu:
            pmtu.on_probe_acked()
        else:
            now = pmtu.probe_deadline
            pmtu.on_probe_timeout(now)
        assert len(probed) < 100
    return pmtu, probed


def test_a_full_size_path_is_found_with_one_probe() -> None:
    pmtu, probed = search(MAX_DATAGRAM_V4)
    assert pmtu.size == MAX_DATAGRAM_V4 and probed[0] == MAX_DATAGRAM_V4
    assert not pmtu.searching  # done: the next search is RAISE_INTERVAL away
    assert pmtu.timer() == pytest.approx(RAISE_INTERVAL, abs=1.0)


@settings(max_examples=200)
@given(st.integers(BASE_DATAGRAM, MAX_DATAGRAM_V4))
def test_any_path_mtu_is_found_within_the_granularity_never_above_it(path_mtu: int) -> None:
    pmtu, probed = search(path_mtu)
    assert pmtu.size <= path_mtu
    assert path_mtu - pmtu.size < SEARCH_GRANULARITY or pmtu.size == MAX_DATAGRAM_V4
    # each size too large is tried MAX_PROBES times, no more
    too_large = [s for s in probed if s > path_mtu]
    assert all(too_large.count(s) == MAX_PROBES for s in set(too_large))
    assert len(probed) <= MAX_PROBES * 8  # a binary search over at most 272 bytes


def test_a_path_below_the_base_is_never_probed_below_the_base() -> None:
    pmtu, probed = search(BASE_DATAGRAM)
    assert pmtu.size == BASE_DATAGRAM and min(probed) > BASE_DATAGRAM


def test_ipv6_peers_search_up_to_1452() -> None:
    assert max_datagram_for("::1") == MAX_DATAGRAM_V6 == 1452
    assert max_datagram_for("192.0.2.7") == MAX_DATAGRAM_V4 == 1472
    pmtu, _ = search(1500, MAX_DATAGRAM_V6)
    assert pmtu.size == MAX_DATAGRAM_V6


def test_a_black_hole_falls_back_to_the_base_and_searches_again_later() -> None:
    pmtu, _ = search(MAX_DATAGRAM_V4)
    now = 5.0
    for _ in range(BLACK_HOLE_LOSSES - 1):
        assert not pmtu.on_lost(MAX_DATAGRAM_V4, now)
    assert pmtu.size == MAX_DATAGRAM_V4
    assert pmtu.on_lost(MAX_DATAGRAM_V4, now)
    assert pmtu.size == BASE_DATAGRAM and pmtu.black_holes == 1
    assert pmtu.probe_due(now) == 0 and pmtu.timer() == now + BLACK_HOLE_RETRY
    assert pmtu.probe_due(now + BLACK_HOLE_RETRY) == MAX_DATAGRAM_V4  # searching again


def test_losses_separated_by_an_acknowledged_large_packet_are_no_black_hole() -> None:
    pmtu, _ = search(MAX_DATAGRAM_V4)
    for _ in range(10):
        for _ in range(BLACK_HOLE_LOSSES - 1):
            assert not pmtu.on_lost(MAX_DATAGRAM_V4, 1.0)
        pmtu.on_acked(MAX_DATAGRAM_V4)
    assert pmtu.size == MAX_DATAGRAM_V4
    # and small packets never count: the path carries those by definition
    for _ in range(10):
        assert not pmtu.on_lost(BASE_DATAGRAM, 1.0)


def test_nothing_is_probed_while_a_probe_is_in_flight() -> None:
    pmtu = PathMtu(MAX_DATAGRAM_V4, 0.0)
    size = pmtu.probe_due(0.0)
    pmtu.on_probe_sent(7, 0.0, 0.5)
    assert pmtu.probe_due(0.1) == 0 and pmtu.timer() == 0.5
    assert size == MAX_DATAGRAM_V4 and pmtu.probe_pn == 7


def test_the_probe_timeout_has_a_floor() -> None:
    pmtu = PathMtu(MAX_DATAGRAM_V4, 0.0)
    pmtu.probe_due(0.0)
    pmtu.on_probe_sent(1, 0.0, 0.001)  # a loopback RTT
    assert pmtu.probe_deadline == pytest.approx(0.2)


def test_the_maximum_must_be_a_datagram_size_this_protocol_allows() -> None:
    with pytest.raises(ValueError):
        PathMtu(1100, 0.0)
    with pytest.raises(ValueError):
        PathMtu(9000, 0.0)

"""FEC: any k of k + m shards rebuild a group, in every loss pattern, with bounded memory."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum.errors import ProtocolError
from quantum.fec import FecDecoder, FecEncoder, FecError, ParityShard, parity_count
from tests.profiles import scaled


def _payloads(count: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(rnd.randrange(0, 1300)) for _ in range(count)]


def _encode_group(k: int, m: int, payloads: list[bytes], first_pn: int = 1,
                  flush: int = 0) -> tuple[list[int], list[ParityShard]]:
    """Full groups get m parity shards; a partial group left at the end `flush` shards."""
    enc = FecEncoder(k, m)
    pns = list(range(first_pn, first_pn + len(payloads)))
    parity: list[ParityShard] = []
    for pn, payload in zip(pns, payloads, strict=True):
        if enc.add(pn, payload):
            parity += enc.close(m)
    if flush:
        parity += enc.close(flush)
    assert enc.pending == 0
    return pns, parity


def _deliver(pns: list[int], payloads: list[bytes], parity: list[ParityShard],
             lost: set[int], parity_first: bool) -> tuple[dict[int, bytes], FecDecoder]:
    """Feed the shards not in `lost` (indices into data + parity); returns what was recovered."""
    dec = FecDecoder()
    k = len(pns)
    got: list[tuple[int, bytes]] = []
    data_steps = [(i, pns[i], payloads[i]) for i in range(k) if i not in lost]
    parity_steps = [s for s in parity if k + s.index not in lost]
    if parity_first:
        for shard in parity_steps:
            got += dec.on_parity(shard)
        for _, pn, payload in data_steps:
            got += dec.on_data(pn, payload)
    else:
        for _, pn, payload in data_steps:
            got += dec.on_data(pn, payload)
        for shard in parity_steps:
            got += dec.on_parity(shard)
    recovered = dict(got)
    assert len(recovered) == len(got), "a packet was recovered twice"
    return recovered, dec


def _check_recovery(pns: list[int], payloads: list[bytes], lost: tuple[int, ...] | set[int],
                    recovered: dict[int, bytes], parity_first: bool) -> None:
    """Data-first: exactly the lost packets come back. Parity-first: the decoder cannot know
    which data is merely late, so it rebuilds whatever is absent once it holds k shards; every
    lost packet must be among those, and every rebuilt payload must be the original."""
    expected = {pns[i]: payloads[i] for i in lost if i < len(pns)}
    if not parity_first:
        assert recovered == expected, lost
        return
    assert expected.items() <= recovered.items(), lost
    original = dict(zip(pns, payloads, strict=True))
    assert all(original[pn] == payload for pn, payload in recovered.items())


@pytest.mark.parametrize("parity_first", [False, True])
def test_full_group_every_loss_pattern_up_to_m(parity_first: bool) -> None:
    k, m = 10, 3
    payloads = _payloads(k)
    pns, parity = _encode_group(k, m, payloads, first_pn=1000)
    assert [s.index for s in parity] == [0, 1, 2]
    assert all(s.m == m and s.data_seqs == tuple(pns) for s in parity)
    for lost_count in range(m + 1):
        for lost in itertools.combinations(range(k + m), lost_count):
            recovered, dec = _deliver(pns, payloads, parity, set(lost), parity_first)
            _check_recovery(pns, payloads, lost, recovered, parity_first)
            assert dec.recovered == len(recovered)


def test_more_losses_than_parity_recover_nothing() -> None:
    k, m = 10, 3
    payloads = _payloads(k, seed=2)
    pns, parity = _encode_group(k, m, payloads)
    for lost in itertools.combinations(range(k + m), m + 1):
        recovered, dec = _deliver(pns, payloads, parity, set(lost), parity_first=False)
        assert recovered == {}
        assert dec.recovered == 0


@pytest.mark.parametrize("count", [1, 4, 7])
def test_flushed_partial_group_every_loss_pattern(count: int) -> None:
    k, m = 10, 3
    payloads = _payloads(count, seed=count)
    m_partial = parity_count(count, m, 0.05, 1e-3)  # what the policy gives it at 5 % loss
    assert m_partial >= 2
    pns, parity = _encode_group(k, m, payloads, flush=m_partial)
    assert len(parity) == m_partial
    assert all(s.m == m_partial and len(s.data_seqs) == count for s in parity)
    for lost_count in range(m_partial + 1):
        for lost in itertools.combinations(range(count + m_partial), lost_count):
            recovered, _ = _deliver(pns, payloads, parity, set(lost), parity_first=False)
            assert recovered == {pns[i]: payloads[i] for i in lost if i < count}


def test_variable_lengths_including_empty_are_trimmed_back() -> None:
    payloads = [b"", b"x", b"\x00\x00", b"y" * 1400, b"\x00" * 3]
    pns, parity = _encode_group(5, 3, payloads)
    assert all(len(s.shard) == 2 + 1400 for s in parity)
    recovered, _ = _deliver(pns, payloads, parity, {0, 2, 4}, parity_first=False)
    assert recovered == {1: b"", 3: b"\x00\x00", 5: b"\x00" * 3}


def test_encoder_groups_and_flush() -> None:
    enc = FecEncoder(3, 2)
    assert enc.close(2) == []  # nothing open: nothing to code, no group id taken
    assert enc.add(1, b"a") is False and enc.add(2, b"b") is False
    assert enc.pending == 2 and (enc.first_pn, enc.last_pn) == (1, 2)
    assert enc.add(3, b"c") is True  # k packets: the caller closes it
    with pytest.raises(ValueError, match="already holds k=3"):
        enc.add(4, b"x")
    first = enc.close(2)
    assert [(s.group_id, s.index) for s in first] == [(0, 0), (0, 1)]
    assert enc.pending == 0 and (enc.first_pn, enc.last_pn) == (-1, -1)
    enc.add(5, b"d")
    second = enc.close(1)
    assert [(s.group_id, s.m, s.data_seqs) for s in second] == [(1, 1, (5,))]
    assert enc.close(2) == []


def test_a_group_closed_without_parity_takes_no_group_id() -> None:
    enc = FecEncoder(3, 2)
    enc.add(1, b"a")
    assert enc.close(0) == [] and enc.pending == 0 and enc.next_group_id == 0
    enc.add(2, b"b")
    assert [s.group_id for s in enc.close(2)] == [0, 0]
    with pytest.raises(ValueError, match=r"0\.\.2 parity shards, got 3"):
        enc.close(3)


def test_duplicates_do_not_recover_twice() -> None:
    payloads = _payloads(4, seed=3)
    pns, parity = _encode_group(4, 2, payloads)
    dec = FecDecoder()
    for pn, payload in zip(pns[:3], payloads[:3], strict=True):
        assert dec.on_data(pn, payload) == []
        assert dec.on_data(pn, payload) == []
    assert dec.on_parity(parity[0]) == [(pns[3], payloads[3])]
    assert dec.on_parity(parity[0]) == []
    assert dec.on_parity(parity[1]) == []
    assert dec.on_data(pns[3], payloads[3]) == []  # the late original changes nothing
    assert dec.recovered == 1


def test_nothing_missing_means_nothing_recovered() -> None:
    payloads = _payloads(3, seed=4)
    pns, parity = _encode_group(3, 2, payloads)
    recovered, dec = _deliver(pns, payloads, parity, set(), parity_first=False)
    assert recovered == {} and dec.recovered == 0


def test_evicted_group_is_never_rebuilt() -> None:
    enc, dec = FecEncoder(4, 2), FecDecoder(max_groups=2)
    groups: list[tuple[list[int], list[bytes], list[ParityShard]]] = []
    for g in range(3):
        pns = list(range(1 + 4 * g, 5 + 4 * g))
        payloads = _payloads(4, seed=10 + g)
        assert [enc.add(pn, p) for pn, p in zip(pns, payloads, strict=True)][-1]
        parity = enc.close(2)
        assert {s.group_id for s in parity} == {g}
        groups.append((pns, payloads, parity))
    # one parity shard of each group: none can recover yet, and the third evicts the first
    for _, _, parity in groups:
        assert dec.on_parity(parity[0]) == []
    pns0, payloads0, parity0 = groups[0]
    for pn, payload in zip(pns0[:3], payloads0[:3], strict=True):
        assert dec.on_data(pn, payload) == []
    assert dec.on_parity(parity0[1]) == []  # forgotten: late parity is ignored
    pns2, payloads2, parity2 = groups[2]
    for pn, payload in zip(pns2[1:3], payloads2[1:3], strict=True):
        assert dec.on_data(pn, payload) == []
    assert dec.on_parity(parity2[1]) == [(pns2[0], payloads2[0]), (pns2[3], payloads2[3])]
    assert dec.recovered == 2


def test_payload_cache_is_bounded() -> None:
    # With room for only two payloads, eight of the ten data packets are forgotten before the
    # parity arrives, so three parity shards cannot rebuild the group: the cache did not grow.
    payloads = _payloads(10, seed=5)
    pns, parity = _encode_group(10, 3, payloads)
    dec = FecDecoder(max_cached=2)
    for pn, payload in zip(pns, payloads, strict=True):
        dec.on_data(pn, payload)
    assert [r for s in parity for r in dec.on_parity(s)] == []
    # with a big enough cache the same sequence recovers nothing too (nothing is missing)...
    recovered, _ = _deliver(pns, payloads, parity, set(), parity_first=False)
    assert recovered == {}
    # ...and one loss is rebuilt
    recovered, _ = _deliver(pns, payloads, parity, {9}, parity_first=False)
    assert recovered == {pns[9]: payloads[9]}


@pytest.mark.parametrize(("k", "m"), [(0, 3), (33, 3), (10, 0), (10, 17), (-1, -1)])
def test_bad_encoder_parameters(k: int, m: int) -> None:
    with pytest.raises(ValueError, match=r"FEC [km] must be between"):
        FecEncoder(k, m)


def test_bad_decoder_parameters() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        FecDecoder(max_cached=0)
    with pytest.raises(ValueError, match="must be positive"):
        FecDecoder(max_groups=0)


def test_encoder_rejects_bad_input() -> None:
    enc = FecEncoder(4, 2)
    enc.add(5, b"a")
    with pytest.raises(ValueError, match="must increase"):
        enc.add(5, b"b")
    with pytest.raises(ValueError, match="exceeds 65535"):
        enc.add(6, bytes(65536))


def _shard(**changes: object) -> ParityShard:
    base: dict[str, object] = dict(group_id=0, index=0, m=2, data_seqs=(1, 2, 3), shard=bytes(10))
    base.update(changes)
    return ParityShard(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        (_shard(index=2), "has k=3, m=2"),
        (_shard(index=-1), "has k=3, m=2"),
        (_shard(m=17, index=0), "m=17"),
        (_shard(data_seqs=()), "k=0"),
        (_shard(data_seqs=tuple(range(33))), "k=33"),
        (_shard(data_seqs=(1, 1, 2)), "names a packet twice"),
        (_shard(shard=b"\x00"), "shorter than a length prefix: 1 bytes"),
    ],
)
def test_malformed_parity_is_rejected(shard: ParityShard, message: str) -> None:
    with pytest.raises(FecError, match=message):
        FecDecoder().on_parity(shard)


def test_inconsistent_group_is_a_protocol_error() -> None:
    dec = FecDecoder()
    dec.on_parity(_shard())
    with pytest.raises(ProtocolError, match="contradicts"):
        dec.on_parity(_shard(index=1, data_seqs=(1, 2, 4)))
    with pytest.raises(FecError, match="contradicts"):
        dec.on_parity(_shard(index=1, shard=bytes(11)))
    with pytest.raises(FecError, match="more than its FEC group's shards hold"):
        dec.on_data(2, bytes(9))  # a 10-byte shard holds at most 8 payload bytes
    bad = FecDecoder()
    assert bad.on_data(1, bytes(20)) == []  # not yet named by a group: nothing to check
    with pytest.raises(FecError, match="more than its FEC group's shards hold"):
        bad.on_parity(_shard())


def test_corrupt_parity_length_prefix_is_rejected() -> None:
    # A peer that sends parity not produced by a real encoder yields a garbage length prefix.
    dec = FecDecoder()
    dec.on_data(2, b"")
    dec.on_data(3, b"")
    with pytest.raises(FecError, match="claims"):
        dec.on_parity(_shard(shard=b"\xff" * 10))


@settings(max_examples=scaled(60), deadline=None)
@given(
    k=st.integers(1, 12),
    m=st.integers(1, 5),
    data=st.data(),
)
def test_random_payloads_and_losses(k: int, m: int, data: st.DataObject) -> None:
    payloads = data.draw(st.lists(st.binary(max_size=200), min_size=k, max_size=k))
    pns, parity = _encode_group(k, m, payloads, first_pn=data.draw(st.integers(1, 2**63)))
    lost = data.draw(st.sets(st.integers(0, k + m - 1)))
    parity_first = data.draw(st.booleans())
    recovered, _ = _deliver(pns, payloads, parity, lost, parity_first)
    if len(lost) <= m:
        _check_recovery(pns, payloads, lost, recovered, parity_first)
    else:
        assert recovered == {}


def _unrecoverable(n: int, j: int, loss: float) -> float:
    """P(more than j of n + j independent shards lost), by enumeration."""
    total = n + j
    return sum(math.comb(total, i) * loss**i * (1 - loss)**(total - i)
               for i in range(j + 1, total + 1))


def test_no_parity_at_zero_loss_whatever_the_group_holds() -> None:
    assert [parity_count(n, 3, 0.0, 1e-3) for n in (1, 5, 10, 16)] == [0, 0, 0, 0]


def test_parity_rises_with_loss_and_with_what_the_group_holds() -> None:
    losses = (0.0005, 0.002, 0.01, 0.05, 0.1, 0.3)
    lone = [parity_count(1, 3, p, 1e-3) for p in losses]
    full = [parity_count(10, 3, p, 1e-3) for p in losses]
    assert lone == [0, 1, 1, 2, 2, 3]
    assert full == [1, 1, 2, 3, 3, 3]  # capped at the negotiated m
    assert all(a <= b for a, b in zip(lone, full, strict=True))
    assert parity_count(1, 16, 1.0, 1e-3) == 16  # everything lost: all it may send
    assert parity_count(4, 1, 0.2, 1e-3) == 1


@settings(max_examples=scaled(200), deadline=None)
@given(n=st.integers(1, 16), m=st.integers(1, 16), loss=st.floats(0.0, 0.6),
       target=st.sampled_from([1e-2, 1e-3, 1e-5]))
def test_parity_count_is_the_fewest_that_meet_the_target(n: int, m: int, loss: float,
                                                         target: float) -> None:
    j = parity_count(n, m, loss, target)
    assert 0 <= j <= m
    slack = 1e-9  # the closed form and the enumeration round differently
    if j < m:
        assert _unrecoverable(n, j, loss) <= target + slack
    if j > 0:
        assert _unrecoverable(n, j - 1, loss) > target - slack


def test_a_successor_encoder_continues_the_group_ids() -> None:
    first = FecEncoder(2, 1)
    first.add(1, b"a")
    first.add(2, b"b")
    assert [s.group_id for s in first.close(1)] == [0] and first.next_group_id == 1
    second = FecEncoder(2, 1, first_group_id=first.next_group_id)
    second.add(3, b"c")
    second.add(4, b"d")
    assert [s.group_id for s in second.close(1)] == [1]

"""The store of what lost connections leave for their resumes: caps, expiry, take-once."""

from __future__ import annotations

import pytest

from quantum_server.retained import RetainedStore


def test_a_blob_is_taken_once() -> None:
    store = RetainedStore(max_session_bytes=100, max_total_bytes=1000)
    assert store.put("s1", b"abc", expires_at=50.0)
    assert "s1" in store and store.total_bytes == 3
    assert store.take("s1", now=10.0) == b"abc"
    assert store.take("s1", now=10.0) is None
    assert len(store) == 0 and store.total_bytes == 0


def test_an_expired_blob_is_not_handed_out() -> None:
    store = RetainedStore(100, 1000)
    store.put("s1", b"abc", expires_at=50.0)
    assert store.take("s1", now=50.0) is None
    assert store.total_bytes == 0


def test_caps_refuse_rather_than_truncate() -> None:
    store = RetainedStore(max_session_bytes=4, max_total_bytes=6)
    assert not store.put("big", b"12345", 50.0)
    assert "big" not in store
    assert store.put("a", b"1234", 50.0)
    assert not store.put("b", b"123", 50.0)  # 4 + 3 > 6 in total
    assert store.put("b", b"12", 50.0)
    assert store.total_bytes == 6
    # replacing a session's blob frees its old bytes first
    assert store.put("a", b"9999", 60.0)
    assert store.total_bytes == 6
    assert not store.put("c", b"1", float("nan"))


def test_expire_drops_only_what_is_due_and_skips_superseded_deadlines() -> None:
    store = RetainedStore(100, 1000)
    store.put("s1", b"a", 10.0)
    store.put("s2", b"bb", 20.0)
    store.put("s1", b"ccc", 30.0)  # the deadline at 10 is superseded
    assert store.expire(15.0) == 0
    assert store.expire(25.0) == 1 and "s2" not in store
    assert sorted((sid, blob) for sid, blob, _ in store.items()) == [("s1", b"ccc")]
    assert store.expire(30.0) == 1 and store.total_bytes == 0


def test_superseded_deadlines_do_not_pile_up() -> None:
    store = RetainedStore(100, 10**6)
    for i in range(10_000):
        store.put("same", b"x", float(i + 1))
    store.expire(0.0)
    assert len(store._deadlines) <= 2 * len(store) + 64


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="retention limits"):
        RetainedStore(-1, 10)

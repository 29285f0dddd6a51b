"""CoarseClock: one datetime per tick, rebuilt when time moves on or steps back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from session.clock import CoarseClock


class Source:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_same_tick_same_object_and_aware_utc() -> None:
    source = Source(1_700_000_000.0)
    clock = CoarseClock(0.001, source)
    first = clock()
    assert first == datetime.fromtimestamp(1_700_000_000.0, UTC) and first.tzinfo is UTC
    source.t += 0.0009
    assert clock() is first


def test_new_tick_new_time() -> None:
    source = Source(1_700_000_000.0)
    clock = CoarseClock(0.001, source)
    first = clock()
    source.t += 0.001
    second = clock()
    assert second is not first
    assert (second - first).total_seconds() == pytest.approx(0.001, abs=1e-6)


def test_wall_clock_stepping_back_is_followed() -> None:
    source = Source(1_700_000_000.0)
    clock = CoarseClock(10.0, source)
    clock()
    source.t -= 5
    assert clock() == datetime.fromtimestamp(1_699_999_995.0, UTC)


def test_default_source_is_wall_time() -> None:
    now = CoarseClock()()
    assert abs((datetime.now(UTC) - now).total_seconds()) < 1.0


@pytest.mark.parametrize("resolution", [0.0, -1.0, float("nan")])
def test_bad_resolution(resolution: float) -> None:
    with pytest.raises(ValueError, match="resolution"):
        CoarseClock(resolution)

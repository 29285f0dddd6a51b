"""Events and frames are values: equal when their fields are, and `hash()` never lies.

The per-packet ones are mutable (slots, hand-written `__init__` for the compiler), so they are
not hashable at all: a hash that changed when a field did (what `unsafe_hash=True` gave them)
would lose them in any set or dict. The others are frozen: assignment raises, and equal values
hash alike (or `hash()` raises, when a field itself is unhashable).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from quantum.events import (
    AuthenticationRequested,
    CarryoverLost,
    ConnectionClosed,
    Event,
    HandshakeCompleted,
    HandshakeRejected,
    KeepaliveAcknowledged,
    KeepaliveReceived,
    MessageReceived,
    PathMigrated,
    SendBufferDrained,
    SessionConfirmed,
)
from quantum.frames import (
    AckFloorFrame,
    CloseFrame,
    DeliveredFrame,
    Delivery,
    KeepaliveAckFrame,
    KeepaliveFrame,
    MessageFrame,
    PaddingFrame,
    ParityFrame,
    PathChallengeFrame,
    PathResponseFrame,
    RejectFrame,
    SessionFrame,
)

MUTABLE: list[tuple[Any, str, object]] = [  # (value, a field, another value for it)
    (MessageReceived(b"hi", 3, Delivery.UNRELIABLE), "channel", 4),
    (KeepaliveReceived(7), "keepalive_id", 8),
    (KeepaliveAcknowledged(7, 12.5, 0.02), "remaining", None),
    (MessageFrame(0, Delivery.RELIABLE_ORDERED, 1, b"x"), "data", b"y"),
    (KeepaliveFrame(1), "keepalive_id", 2),
    (KeepaliveAckFrame(1, 2), "remaining_ms", 3),
    (AckFloorFrame(5), "floor", 6),
    (ParityFrame(1, 2, 0, (4, 5), b"s"), "shard", b"t"),
]

FROZEN: list[Any] = [
    HandshakeCompleted(bytes(16), "tok", 60.0, False),
    HandshakeRejected(24, "credentials: user id length 0 outside 1..256"),
    SendBufferDrained(4096),
    PathMigrated(("10.0.0.2", 1), ("10.0.0.3", 2)),
    ConnectionClosed(0, "bye", True),
    CloseFrame(0, "bye"),
    RejectFrame(19, "full"),
    PathChallengeFrame(bytes(8)),
    PathResponseFrame(bytes(8)),
    SessionFrame(bytes(16), "tok", 60000, True),
    SessionFrame(bytes(16), "tok", 60000, True, True),
    DeliveredFrame(((0, 0, 7),)),
    CarryoverLost(3, "the server kept nothing of the lost connection"),
    HandshakeCompleted(bytes(16), "tok", 60.0, True, True),
    PaddingFrame(3),
]


def _copy(value: Any) -> Any:
    return type(value)(*(getattr(value, f.name) for f in dataclasses.fields(value)))


@pytest.mark.parametrize(("value", "name", "other"), MUTABLE,
                         ids=[type(v).__name__ for v, _, _ in MUTABLE])
def test_per_packet_values_compare_by_value_and_are_not_hashable(
        value: Any, name: str, other: object) -> None:
    twin = _copy(value)
    assert twin == value
    with pytest.raises(TypeError, match="unhashable"):
        hash(value)
    setattr(twin, name, other)
    assert twin != value


@pytest.mark.parametrize("value", FROZEN, ids=[type(v).__name__ for v in FROZEN])
def test_other_values_are_frozen_and_hash_by_value(value: Any) -> None:
    twin = _copy(value)
    assert twin == value and twin is not value
    assert hash(twin) == hash(value)
    assert len({value, twin}) == 1
    name = dataclasses.fields(value)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, name, getattr(value, name))


def test_a_frozen_event_with_an_unhashable_field_refuses_to_hash() -> None:
    request = AuthenticationRequested("alice", None, None, False, {"room": "blue"})
    assert request == AuthenticationRequested("alice", None, None, False, {"room": "blue"})
    assert AuthenticationRequested("alice", None, None, False).metadata == {}
    with pytest.raises(TypeError, match="unhashable type: 'dict'"):
        hash(request)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.user_id = "mallory"  # type: ignore[misc]


def test_every_event_type_is_covered_here() -> None:
    import quantum.events

    kinds = {obj for obj in vars(quantum.events).values()
             if isinstance(obj, type) and issubclass(obj, Event) and obj is not Event}
    covered = {type(v) for v, _, _ in MUTABLE} | {type(v) for v in FROZEN}
    assert kinds == (covered & kinds) | {AuthenticationRequested, SessionConfirmed}


def test_the_fieldless_event_is_one_value() -> None:
    assert SessionConfirmed() == SessionConfirmed()
    assert len({SessionConfirmed(), SessionConfirmed()}) == 1

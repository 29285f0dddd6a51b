"""Between the session model and its protobuf messages, and checks of the request fields.

Every check raises `InvalidArgument` naming the field as the request spells it, so the service
can answer INVALID_ARGUMENT before it changes anything.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from session.api import session_pb2 as pb
from session.model import Session, State, Stats
from session.watch import EventKind, SessionEvent

__all__ = [
    "InvalidArgument",
    "event_to_pb",
    "require_uuid",
    "session_to_pb",
    "set_timestamp",
    "state_from_pb",
    "state_to_pb",
    "stats_from_pb",
    "timestamp",
]

_TO_PB: dict[State, pb.SessionState] = {
    State.CONNECTING: pb.SESSION_STATE_CONNECTING,
    State.ACTIVE: pb.SESSION_STATE_ACTIVE,
    State.IDLE: pb.SESSION_STATE_IDLE,
    State.DISCONNECTING: pb.SESSION_STATE_DISCONNECTING,
    State.CLOSED: pb.SESSION_STATE_CLOSED,
}
_FROM_PB: dict[int, State] = {int(number): state for state, number in _TO_PB.items()}
_EVENT_TYPES: dict[EventKind, pb.SessionEvent.Type] = {
    EventKind.CREATED: pb.SessionEvent.TYPE_CREATED,
    EventKind.STATE_CHANGED: pb.SessionEvent.TYPE_STATE_CHANGED,
    EventKind.DELETED: pb.SessionEvent.TYPE_DELETED,
    EventKind.EXPIRED: pb.SessionEvent.TYPE_EXPIRED,
}
#: uint32 fields cannot carry more
_UINT32_MAX = 2**32 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidArgument(ValueError):
    """A request field is malformed; the message names it."""


def set_timestamp(stamp: Timestamp, moment: datetime) -> None:
    """Write an aware datetime into a Timestamp field in place (no message built and copied:
    this runs three times per session sent)."""
    delta = moment - _EPOCH
    stamp.seconds = delta.days * 86400 + delta.seconds
    stamp.nanos = delta.microseconds * 1000


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    set_timestamp(stamp, moment)
    return stamp


def state_to_pb(state: State) -> pb.SessionState:
    return _TO_PB[state]


def state_from_pb(value: int, field: str) -> State | None:
    """The model state of an enum field; None for UNSPECIFIED (no state given)."""
    if value == pb.SESSION_STATE_UNSPECIFIED:
        return None
    state = _FROM_PB.get(value)
    if state is None:
        raise InvalidArgument(f"{field} {value} is not a SessionState")
    return state


def require_uuid(value: str, field: str) -> str:
    """Canonical UUID text; an empty or malformed id is bad input, not a missing session."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(f"{field} is not a UUID: {value[:80]!r}") from None


def stats_from_pb(stats: pb.SessionStats) -> Stats:
    return Stats(packets_sent=stats.packets_sent, packets_received=stats.packets_received,
                 bytes_sent=stats.bytes_sent, bytes_received=stats.bytes_received,
                 retransmissions=stats.retransmissions,
                 current_rtt_ms=float(stats.current_rtt_ms))


def session_to_pb(session: Session, default_timeout: float) -> pb.Session:
    timeout = session.timeout if session.timeout is not None else default_timeout
    message = pb.Session(
        session_id=session.session_id,
        user_id=session.user_id,
        connection_id=session.connection_id,
        client_ip=session.client_ip,
        client_port=session.client_port,
        server_addr=session.server_addr or "",
        state=_TO_PB[session.state],
        timeout_seconds=min(_UINT32_MAX, round(timeout)),
    )
    # sub-messages filled in place: building them apart and copying them in costs twice as much
    set_timestamp(message.created_at, session.created_at)
    set_timestamp(message.last_active_at, session.last_active_at)
    set_timestamp(message.expires_at, session.expires_at)
    if session.metadata:
        message.metadata.update(session.metadata)
    s, out = session.stats, message.stats
    out.packets_sent, out.packets_received = s.packets_sent, s.packets_received
    out.bytes_sent, out.bytes_received = s.bytes_sent, s.bytes_received
    out.retransmissions = s.retransmissions
    out.current_rtt_ms = min(_UINT32_MAX, round(s.current_rtt_ms))
    return message


def event_to_pb(event: SessionEvent, default_timeout: float) -> pb.SessionEvent:
    previous = event.previous_state
    return pb.SessionEvent(
        type=_EVENT_TYPES[event.kind],
        session=session_to_pb(event.session, default_timeout),
        previous_state=_TO_PB[previous] if previous is not None
        else pb.SESSION_STATE_UNSPECIFIED,
        reason=event.reason,
        time=timestamp(event.at),
    )

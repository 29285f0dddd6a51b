"""What the high-level client does when its connection is lost: when to try again, and what
it tells the application.

`ReconnectPolicy` is the schedule: exponential backoff with full jitter (each wait drawn
uniformly from [(1 - jitter) x d, d] for the nominal delay d, which doubles from
`initial_delay` up to `max_delay`), and a bound on the whole outage (`give_up_after`
seconds from the loss, attempts included). The client (`quantum.client`) reports each stage
as one of the small events below, to the `on_event` callback given to `quantum.connect`.

Which losses are worth a reconnect (`RESUMABLE`): the connection timed out (the path went
dark), the peer stalled, the keys ran out, or the server stopped with SERVER_SHUTDOWN (its
session is kept, 12.2). A resume the server refuses for good (BAD_RESUME: the session is
gone, e.g. a server killed without its snapshot) ends the attempts at once; refusals that
may pass (the server is full, rate-limited, restarting) are tried again.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from quantum.errors import CloseCode

__all__ = [
    "RESUMABLE",
    "RETRYABLE",
    "ConnectionEvent",
    "DataLost",
    "Disconnected",
    "GaveUp",
    "ReconnectPolicy",
    "Reconnected",
]

#: losses after which the client reconnects and resumes
RESUMABLE = frozenset({CloseCode.IDLE_TIMEOUT, CloseCode.STALLED, CloseCode.KEYS_EXHAUSTED,
                       CloseCode.SERVER_SHUTDOWN})
#: refusals of a resume that are tried again (anything else ends the attempts)
RETRYABLE = frozenset({CloseCode.HANDSHAKE_TIMEOUT, CloseCode.IDLE_TIMEOUT,
                       CloseCode.SERVER_SHUTDOWN, CloseCode.SERVER_FULL,
                       CloseCode.RATE_LIMITED, CloseCode.ADDRESS_FULL,
                       CloseCode.STORE_UNAVAILABLE, CloseCode.TOO_MANY_CONNECTIONS,
                       CloseCode.INTERNAL_ERROR})


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """When to try again after a loss. All durations in seconds."""

    initial_delay: float = 0.05
    max_delay: float = 5.0
    multiplier: float = 2.0
    #: the fraction of each delay that is random (0: none; 1: anywhere in [0, d])
    jitter: float = 0.5
    #: the whole outage's bound: no attempt starts later than this after the loss
    give_up_after: float = 60.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.initial_delay <= self.max_delay:
            raise ValueError(f"need 0 <= initial_delay <= max_delay, got {self.initial_delay} "
                             f"and {self.max_delay}")
        if self.multiplier < 1.0:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be within 0..1, got {self.jitter}")
        if not self.give_up_after > 0.0:
            raise ValueError(f"give_up_after must be positive, got {self.give_up_after}")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits before each attempt, without end (the caller stops at the bound)."""
        draw = (rng or random.Random()).random
        nominal = self.initial_delay
        while True:
            yield nominal * (1.0 - self.jitter * draw())
            nominal = min(self.max_delay, nominal * self.multiplier)


class ConnectionEvent:
    """Base class of what the client reports about its connection's life."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Disconnected(ConnectionEvent):
    """The connection was lost (`code`, `reason`); reconnecting starts."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Reconnected(ConnectionEvent):
    """The session continues on a new connection after `attempts` tries and `outage`
    seconds; `carried`: nothing in flight was lost (else a `DataLost` came first)."""

    attempts: int
    outage: float
    carried: bool


@dataclass(frozen=True, slots=True)
class DataLost(ConnectionEvent):
    """The session was resumed but the server had nothing of the lost connection (another
    node, a restart without snapshot, over its cap): `unacknowledged` reliable messages we
    had sent may or may not have arrived, and what it had begun to send us is gone."""

    unacknowledged: int
    reason: str


@dataclass(frozen=True, slots=True)
class GaveUp(ConnectionEvent):
    """No reconnect: the session is gone or the outage outlasted the policy's bound. The
    client is closed with this code and reason."""

    code: int
    reason: str

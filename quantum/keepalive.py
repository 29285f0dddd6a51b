"""The keepalives a connection sends, and the round trip of each answer.

A client sends a KEEPALIVE every `keepalive_interval` (docs/PROTOCOL.md 10.3); the answer
(KEEPALIVE_ACK) carries the session's remaining time and gives an RTT sample. Keepalives are
not retransmitted: an unanswered one is simply forgotten once 64 newer ones are out.
"""

from __future__ import annotations

from typing import Final

#: unanswered keepalives remembered for the RTT of a late answer
MAX_PENDING: Final = 64


class KeepaliveClock:
    """When the last keepalive left (the interval runs from there), and when each unanswered
    one left. A connection has one once it sends keepalives (a server connection never)."""

    __slots__ = ("last_sent", "next_id", "pending")

    def __init__(self, now: float) -> None:
        self.last_sent = now
        self.next_id = 0
        self.pending: dict[int, float] = {}

    def new(self, now: float | None) -> int:
        """The id of a new keepalive; `now` when the interval sent it (None: the
        application asked, which does not move the interval)."""
        self.next_id = kid = (self.next_id + 1) & 0xFFFFFFFF
        if now is not None:
            self.last_sent = now
        pending = self.pending
        pending[kid] = now if now is not None else self.last_sent
        if len(pending) > MAX_PENDING:  # unanswered ones: forget the oldest
            del pending[next(iter(pending))]
        return kid

    def left(self, keepalive_id: int, now: float) -> None:
        """Its frame really left now (it may have waited for pacing): the RTT runs from here."""
        if keepalive_id in self.pending:
            self.pending[keepalive_id] = now

    def answered(self, keepalive_id: int) -> float | None:
        """When the answered keepalive left (None for an unknown or forgotten id)."""
        return self.pending.pop(keepalive_id, None)

"""Path validation: what a connection does when an authenticated packet comes from a new address.

Sans-I/O, and it exists only while a migration is being checked. The connection keeps sending
everything to its validated path; the candidate path gets PATH_CHALLENGE probes and nothing
else, and never more than `AMPLIFICATION` times the bytes that arrived from it (RFC 9000
section 8.1: an unvalidated address must not be able to use us to flood a victim). A
PATH_RESPONSE echoing a challenge moves the connection there; a candidate that never answers
is forgotten after `MAX_CHALLENGES` probes, and since the connection never left its old path,
a failed migration loses nothing. See docs/PROTOCOL.md section 10.5.
"""

from __future__ import annotations

from typing import Any, Final

#: bytes we may send to an unvalidated address, per byte received from it
AMPLIFICATION: Final = 3
#: PATH_CHALLENGE probes sent to one candidate address before it is given up
MAX_CHALLENGES: Final = 3
#: shortest wait for an answer to a probe (an honest client may answer from its new port late)
MIN_PROBE_INTERVAL: Final = 0.2


class PathValidation:
    """One candidate address and its anti-amplification account.

    `received` counts every byte of every datagram that arrived from `addr` since the probe
    began (the one that started it included); `sent` every byte we sent there. The owner asks
    `allows(n)` before sending n bytes and reports them with `on_sent`.
    """

    __slots__ = ("addr", "challenge", "deadline", "out", "received", "sent", "tries")

    def __init__(self, addr: Any, challenge: bytes, received: int) -> None:
        self.addr: Any = addr  # kept as the caller's tuple object: it is paired with datagrams
        self.challenge = challenge
        self.received = received
        self.sent = 0
        self.tries = 0  # challenges sent (or skipped for want of budget)
        self.deadline = 0.0  # when the current probe is given up on
        self.out: list[bytes] | None = None  # probe datagrams not yet collected, for `addr`

    def allows(self, size: int) -> bool:
        return self.sent + size <= AMPLIFICATION * self.received

    def on_sent(self, size: int) -> None:
        self.sent += size

    def queue(self, datagram: bytes) -> None:
        """A sealed probe for the candidate address, to be collected with the owner's output."""
        self.on_sent(len(datagram))
        if self.out is None:
            self.out = [datagram]
        else:
            self.out.append(datagram)

    def on_probe(self, now: float, interval: float) -> None:
        """A probe went out (or was due and could not): wait `interval` for its answer."""
        self.tries += 1
        self.deadline = now + (interval if interval > MIN_PROBE_INTERVAL else MIN_PROBE_INTERVAL)

    @property
    def exhausted(self) -> bool:
        return self.tries >= MAX_CHALLENGES

    def matches(self, data: bytes) -> bool:
        return data == self.challenge

"""Tunable protocol parameters, with the defaults of the original Quantum protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from quantum.fec import check_shape

#: packets left under the key limit when the graceful close starts: room to drain what is
#: queued, send the FIN and retransmit it
KEY_LIMIT_HEADROOM: Final = 1024
#: the smallest send buffer: one largest message (1 MiB) must fit
MIN_SEND_BUFFER: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class QuantumConfiguration:
    """Settings shared by both ends of a connection. Durations are float seconds."""

    #: a keepalive goes out when this long has passed since the last one (None: never)
    keepalive_interval: float | None = 10.0
    #: nothing received for this long -> closed with reason "idle timeout"
    idle_timeout: float = 60.0
    #: the whole handshake must finish within this time
    handshake_timeout: float = 5.0
    #: SYN (and handshake ACK) transmissions before giving up
    handshake_tries: int = 5
    #: Reed-Solomon (k data, m parity) packets per group (`quantum.limits`: each 1..16); None
    #: turns FEC off
    fec: tuple[int, int] | None = (10, 3)
    #: send and receive windows, in packets
    window: int = 256
    #: longest an acknowledgement may be delayed
    max_ack_delay: float = 0.025
    #: how long a closing endpoint waits for its FIN to be acknowledged
    close_timeout: float = 3.0
    #: packets one key may seal (the AES-GCM confidentiality bound RFC 9001 section 6.6 uses);
    #: an endpoint closes gracefully, code KEYS_EXHAUSTED, KEY_LIMIT_HEADROOM packets before it
    #: and never seals past it. v2 has no key update: the client resumes on a new connection.
    packets_per_key: int = 1 << 23
    #: bytes of application messages one connection may hold queued or sent and not yet
    #: acknowledged; past it `send` raises `SendBufferFull` for reliable messages and drops
    #: unreliable ones (counted as drops["send_buffer_full"])
    max_send_buffer: int = 4 << 20
    #: a peer that acknowledges nothing for this long while data is outstanding is closed
    #: (code STALLED): a peer that keeps sending but never acknowledges never goes idle
    stall_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.keepalive_interval is not None and self.keepalive_interval <= 0:
            raise ValueError(f"keepalive_interval must be positive, got {self.keepalive_interval}")
        if self.idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive, got {self.idle_timeout}")
        if self.handshake_timeout <= 0 or self.handshake_tries < 1:
            raise ValueError("handshake_timeout must be positive and handshake_tries at least 1")
        if self.fec is not None:
            check_shape(*self.fec)
        if not 16 <= self.window <= 4096:
            raise ValueError(f"window must be between 16 and 4096 packets, got {self.window}")
        if not 2 * KEY_LIMIT_HEADROOM <= self.packets_per_key <= 1 << 62:
            raise ValueError(f"packets_per_key must be between {2 * KEY_LIMIT_HEADROOM} and "
                             f"2**62, got {self.packets_per_key}")
        if not (type(self.max_send_buffer) is int
                and MIN_SEND_BUFFER <= self.max_send_buffer <= 1 << 40):
            raise ValueError(f"max_send_buffer must be an int between {MIN_SEND_BUFFER} and "
                             f"2**40 bytes, got {self.max_send_buffer!r}")
        if not 0 < self.stall_timeout < float("inf"):
            raise ValueError(f"stall_timeout must be a positive number of seconds, "
                             f"got {self.stall_timeout}")
        if not 0 < self.max_ack_delay <= 0.5:
            raise ValueError(f"max_ack_delay must be in (0, 0.5], got {self.max_ack_delay}")

"""Tunable protocol parameters, with the defaults of the original Quantum protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from quantum.crypto import CIPHER_IDS, DEFAULT_CIPHERS
from quantum.fec import DEFAULT_TARGET_LOSS, check_shape

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
    #: the chance of an FEC group losing a data packet for good that the sender's parity aims
    #: to stay under, at the loss it measures (docs/PROTOCOL.md 9): the lower, the more parity
    fec_target_loss: float = DEFAULT_TARGET_LOSS
    #: send and receive windows, in packets
    window: int = 256
    #: longest an acknowledgement may be delayed
    max_ack_delay: float = 0.025
    #: how long a closing endpoint waits for its FIN to be acknowledged
    close_timeout: float = 3.0
    #: packets one key generation may seal (the AES-GCM confidentiality bound RFC 9001
    #: section 6.6 uses); an endpoint that cannot update its key in time closes gracefully,
    #: code KEYS_EXHAUSTED, KEY_LIMIT_HEADROOM packets before it and never seals past it
    packets_per_key: int = 1 << 23
    #: whether a sender moves to the next key generation before the limit (the key update,
    #: docs/PROTOCOL.md 5.6); off, a connection ends at packets_per_key (KEYS_EXHAUSTED)
    key_update: bool = True
    #: packets sealed under one key generation before the update; None: half of what the key
    #: may seal before the graceful close, (packets_per_key - KEY_LIMIT_HEADROOM) // 2
    key_update_packets: int | None = None
    #: AEAD ciphers in order of preference: a client offers them in this order, a server
    #: picks the first of the client's offer that it has here
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
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
        if not 1e-9 <= self.fec_target_loss <= 0.5:
            raise ValueError(f"fec_target_loss must be between 1e-9 and 0.5, "
                             f"got {self.fec_target_loss}")
        if not 16 <= self.window <= 4096:
            raise ValueError(f"window must be between 16 and 4096 packets, got {self.window}")
        if not 2 * KEY_LIMIT_HEADROOM <= self.packets_per_key <= 1 << 62:
            raise ValueError(f"packets_per_key must be between {2 * KEY_LIMIT_HEADROOM} and "
                             f"2**62, got {self.packets_per_key}")
        update = self.key_update_packets
        most = self.packets_per_key - KEY_LIMIT_HEADROOM - 1
        if update is not None and not (type(update) is int and 1 <= update <= most):
            raise ValueError(f"key_update_packets must be None or an int between 1 and "
                             f"packets_per_key - {KEY_LIMIT_HEADROOM + 1} ({most}), "
                             f"got {update!r}")
        ciphers = self.ciphers
        if (not isinstance(ciphers, tuple) or not 1 <= len(ciphers) <= 8
                or len(set(ciphers)) != len(ciphers)
                or any(c not in CIPHER_IDS for c in ciphers)):
            raise ValueError(f"ciphers must be 1-8 distinct names among "
                             f"{', '.join(CIPHER_IDS)}, got {ciphers!r}")
        if not (type(self.max_send_buffer) is int
                and MIN_SEND_BUFFER <= self.max_send_buffer <= 1 << 40):
            raise ValueError(f"max_send_buffer must be an int between {MIN_SEND_BUFFER} and "
                             f"2**40 bytes, got {self.max_send_buffer!r}")
        if not 0 < self.stall_timeout < float("inf"):
            raise ValueError(f"stall_timeout must be a positive number of seconds, "
                             f"got {self.stall_timeout}")
        if not 0 < self.max_ack_delay <= 0.5:
            raise ValueError(f"max_ack_delay must be in (0, 0.5], got {self.max_ack_delay}")

    @property
    def key_update_interval(self) -> int | None:
        """Packets per key generation before the key update, or None without updates."""
        if not self.key_update:
            return None
        update = self.key_update_packets
        if update is None:  # halfway to where the graceful close would start
            return (self.packets_per_key - KEY_LIMIT_HEADROOM) // 2
        return update

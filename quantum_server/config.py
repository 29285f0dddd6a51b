"""The server's configuration, validated.

Not compiled (the server is): a compiled class would answer a value of the wrong type with a
bare TypeError before `__post_init__` could name the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

from quantum.config import MIN_SEND_BUFFER
from quantum.crypto import CIPHER_IDS, DEFAULT_CIPHERS


@dataclass
class ServerConfig:
    """How a `QuantumServer` runs: where it listens, its timers and every limit it enforces.
    Refuses, naming the field, any value the server could not run with."""

    host: str = "0.0.0.0"
    port: int = 9090
    keepalive_interval: float = 10.0
    idle_timeout: float = 60.0
    fec: bool = True
    max_connections: int = 10_000
    #: connections one user may hold at once (counted from authentication to close)
    max_connections_per_user: int = 8
    #: connections one source address (IPv4, or IPv6 /64) may hold at once: generous, since a
    #: NAT puts many users behind one address
    max_connections_per_address: int = 64
    #: handshakes per second one source may start (bursts of `handshake_burst`) before it is
    #: asked to prove its address with a retry cookie; also the ClientFinish rate per source
    handshake_rate: float = 20.0
    handshake_burst: float = 40.0
    #: above this many handshakes per second in all, every new source must first echo a retry
    #: cookie (one HMAC to check) before the server does any Diffie-Hellman for it
    retry_above_rate: float = 500.0
    stats_interval: float = 2.0
    report_interval: float = 60.0
    #: seconds without a packet from the client after which a connection releases its cipher
    #: objects (checked every `stats_interval`): well below the 10 s keepalive interval, so an
    #: idle client's connection spends most of its time hibernated, while one with real-time
    #: traffic never is; waking costs ~1.4 us, once per quiet spell
    hibernate_after: float = 2.0
    #: bytes one client may have queued or unacknowledged (`QuantumConfiguration.
    #: max_send_buffer`): past it `Peer.send` raises `SendBufferFull`
    max_send_buffer: int = 4 << 20
    #: a client that acknowledges nothing for this long while data is outstanding is closed
    stall_timeout: float = 30.0
    #: AEAD ciphers the server accepts; it picks the first of a client's offer found here
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    #: how often the event-loop stall probe runs (seconds; 0 turns it off): the longest lag
    #: of its `call_later` chain is `snapshot()["loop_stall_max_s"]` and the metric
    #: quantum_event_loop_stall_seconds_max, which can miss up to one interval of a stall.
    #: One timer callback per interval: benchmarks/scale.py runs it every 1 ms
    stall_probe_interval: float = 0.01
    #: what a lost connection leaves for its session's resume (`quantum_server.retained`):
    #: unacknowledged reliable data and delivery state, at most this many bytes per session
    #: and in all (over either, the data is declared lost when the session resumes)
    retain_session_bytes: int = 1 << 20
    retain_total_bytes: int = 256 << 20

    def __post_init__(self) -> None:
        """Refuse a configuration the server could not run with, naming the field."""
        # the fields as plain objects: they may hold anything the caller passed
        given: dict[str, object] = vars(self)
        ciphers = given["ciphers"]
        if (not isinstance(ciphers, tuple) or not ciphers or len(set(ciphers)) != len(ciphers)
                or any(c not in CIPHER_IDS for c in ciphers)):
            raise ValueError(f"ciphers must be distinct names among {', '.join(CIPHER_IDS)}, "
                             f"got {ciphers!r}")
        host, port = given["host"], given["port"]
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        if type(port) is not int or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
        for name in ("max_connections", "max_connections_per_user",
                     "max_connections_per_address"):
            value = given[name]
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("handshake_rate", "retry_above_rate"):
            rate = given[name]
            if not (_is_number(rate) and 0 < rate < float("inf")):
                raise ValueError(f"{name} must be a positive number per second, got {rate!r}")
        burst = given["handshake_burst"]
        if not (_is_number(burst) and 1 <= burst < float("inf")):
            raise ValueError(f"handshake_burst must be a number of at least 1, got {burst!r}")
        max_send_buffer = given["max_send_buffer"]
        if type(max_send_buffer) is not int or not MIN_SEND_BUFFER <= max_send_buffer <= 1 << 40:
            raise ValueError(f"max_send_buffer must be an integer of {MIN_SEND_BUFFER} to "
                             f"2**40 bytes, got {max_send_buffer!r}")
        for name in ("keepalive_interval", "idle_timeout", "stats_interval", "report_interval",
                     "hibernate_after", "stall_timeout"):
            value = given[name]
            if not (_is_number(value) and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        for name in ("retain_session_bytes", "retain_total_bytes"):
            value = given[name]
            if type(value) is not int or not 0 <= value <= 1 << 40:
                raise ValueError(f"{name} must be an integer of 0 to 2**40 bytes, got {value!r}")
        probe = given["stall_probe_interval"]
        if not (_is_number(probe) and 0 <= probe < float("inf")):
            raise ValueError(f"stall_probe_interval must be 0 (off) or a positive number of "
                             f"seconds, got {probe!r}")


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

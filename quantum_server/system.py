"""What the server asks of its process and operating system: a dual-stack UDP socket, big
socket buffers, giving freed memory back (glibc's malloc_trim), and a cyclic collector tuned
for serving."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

#: a burst from many clients at once must not overflow the kernel's default UDP buffer
SOCKET_BUFFER_BYTES: Final = 4 * 1024 * 1024

#: the collector's young-generation threshold in a serving process (CPython's default: 700)
GC_YOUNG_THRESHOLD: Final = 20_000


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: the allocator keeps what it keeps
        return None
    return trim


_MALLOC_TRIM: Final = _load_malloc_trim()


def return_free_memory() -> None:
    """Give the pages freed by hibernation back to the OS. glibc keeps freed chunks for reuse,
    so without this the resident size stays at its high-water mark; malloc_trim(0) releases
    every whole free page (in the middle of the heap too) in a few milliseconds."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def tune_collector(young_threshold: int = GC_YOUNG_THRESHOLD) -> None:
    """Once the server is set up: what the process holds by then (the interpreter's modules,
    classes and functions, some 45,000 objects) goes to the collector's permanent generation,
    and the young generation is collected after `young_threshold` net allocations instead of
    700. 0 leaves the collector as it is (no freeze either: a test serving in its own process).

    Why: a game tick sends hundreds of packets at once, and each stays in flight (its
    `SentPacket`, frame and retransmission list) until the client's ACK, a round trip later.
    At 700 every tick ran several young collections that found them alive and promoted them,
    and every few seconds a full collection walked the whole interpreter besides: about 7 %
    of the server's CPU at 400 clients, 24 % once it fell behind (benchmarks.gametick). The
    server's per-packet objects hold no reference cycles (tests/test_server_upkeep.py), so
    reference counting frees them either way; the collector only looks at them later."""
    if young_threshold < 0:
        raise ValueError(f"the young-generation threshold must be 0 or more, not {young_threshold}")
    if not young_threshold:
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


def bind_udp(addresses: Sequence[tuple[Any, ...]]) -> socket.socket:
    """A bound UDP socket for the first of `addresses` (getaddrinfo results, in their order)
    that binds; the `OSError` of the last one if none does.

    An IPv6 socket is dual stack (IPV6_V6ONLY off, whatever the system default): bound to `::`
    it serves IPv4 clients too, which then appear as `::ffff:a.b.c.d` (`quantum.addresses`
    shows and counts them as their IPv4 address)."""
    error: OSError = OSError(f"no address to bind among {len(addresses)}")
    for family, kind, proto, _, sockaddr in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            if family == socket.AF_INET6:
                # a system without dual stack (OpenBSD) refuses: the socket stays IPv6 only
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setblocking(False)
        return sock
    raise error


def enlarge_socket_buffers(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        # capped by the OS (net.core.rmem_max): keep what it allows
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)

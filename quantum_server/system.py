"""What the server asks of its process and operating system: a dual-stack UDP socket, big
socket buffers, and giving freed memory back (glibc's malloc_trim)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

#: a burst from many clients at once must not overflow the kernel's default UDP buffer
SOCKET_BUFFER_BYTES: Final = 4 * 1024 * 1024


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

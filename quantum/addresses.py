"""Network addresses: the socket's form, and the one form the product shows and compares.

A UDP socket names a peer `(host, port)` over IPv4 and `(host, port, flowinfo, scope_id)` over
IPv6; on a dual-stack IPv6 socket (`--host ::`) an IPv4 client appears as `::ffff:a.b.c.d`.
A connection keeps that tuple exactly as the socket gave it: it is where the replies go, and
it is compared per packet (`Connection._on_authenticated`), so it is never rebuilt. Everything
that shows an address, stores it or counts by it goes through here instead, once per handshake
or session change, so that one client is one address whichever socket it came through:

* `ip_text`: the canonical text of an IP (an IPv4-mapped IPv6 address as its IPv4 address,
  IPv6 compressed in lower case as RFC 5952 writes it, a zone kept as `%zone`);
* `address_text`: `ip:port`, with IPv6 in brackets (`[::1]:9097`);
* `packed_ip`: the 4 or 16 bytes of the address, what handshake cookies bind to;
* `unbracketed`: `[::1]` typed on a command line, as the address `::1`.

The normative text is docs/PROTOCOL.md 2.4 (addresses) and 5.2.4 (the address binding).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

#: a peer as the socket reports it: `(host, port)` over IPv4, `(host, port, flowinfo,
#: scope_id)` over IPv6. Kept whole: the transport sends to it as it is.
Address = tuple[Any, ...]

#: the first 12 bytes of an IPv4-mapped IPv6 address (::ffff:0:0/96)
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def ip_text(host: str) -> str:
    """The canonical text of an IP address; `ValueError` if `host` is not one.

    `::ffff:192.0.2.1` -> `192.0.2.1`; `2001:DB8:0::1` -> `2001:db8::1`; `fe80::1%eth0` keeps
    its zone. Text that is already canonical comes back as the same object."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address: {host[:80]!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        text = str(address.ipv4_mapped)
    else:
        text = str(address)
    return host if text == host else text


def address_text(addr: Address) -> str:
    """`ip:port` as people and logs read it: `192.0.2.1:4433`, `[2001:db8::1]:4433`."""
    return host_port_text(ip_text(addr[0]), addr[1])


def host_port_text(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets (the `host` is used as given)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unbracketed(host: str) -> str:
    """`[::1]` (an IPv6 address as URLs and `host:port` texts write it) as `::1`; any other
    text as it is."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def packed_ip(host: str) -> bytes:
    """The address as bytes: 4 for IPv4 and IPv4-mapped IPv6, 16 for IPv6 (a zone is not
    part of it); `ValueError` if `host` is not an IP address. Every text form of one address
    packs the same (`::1` and `0:0:0:0:0:0:0:1`, `::ffff:192.0.2.1` and `192.0.2.1`)."""
    try:
        if ":" not in host:
            return socket.inet_pton(socket.AF_INET, host)
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except OSError:
        raise ValueError(f"not an IP address: {host[:80]!r}") from None
    return packed[12:] if packed[:12] == _MAPPED_PREFIX else packed

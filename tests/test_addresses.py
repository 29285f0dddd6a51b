"""Addresses without a network: canonical text, packed bytes, cookies bound to the packed
address, per-source limits with real IPv6 and IPv4-mapped addresses, and the compiled core
taking the socket's IPv6 4-tuples (docs/PROTOCOL.md 2.4)."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from quantum.addresses import Address, address_text, host_port_text, ip_text, packed_ip
from quantum.config import QuantumConfiguration
from quantum.connection import ConnectionState
from quantum.errors import CloseCode
from quantum.events import HandshakeRejected, MessageReceived, PathMigrated
from quantum.handshake import ClientHandshake, Credentials, HandshakeError, ServerHandshake
from quantum.listener import source_key
from quantum.simulation import (
    SERVER_ADDR,
    LinkProfile,
    SimulatedNetwork,
    SimulatedServer,
    Simulation,
)
from session.errors import InvalidSession
from session.model import normalize_client_ip
from tests.test_handshake import CID, NOW, PARAMS, STATIC, VECTOR_CREDENTIALS

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------- text and bytes


@pytest.mark.parametrize(("given", "canonical"), [
    ("192.0.2.1", "192.0.2.1"),
    ("::ffff:192.0.2.1", "192.0.2.1"),
    ("::FFFF:c000:201", "192.0.2.1"),
    ("::1", "::1"),
    ("0:0:0:0:0:0:0:1", "::1"),
    ("2001:DB8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
    ("fe80::1%eth0", "fe80::1%eth0"),
])
def test_ip_text_is_canonical(given: str, canonical: str) -> None:
    assert ip_text(given) == canonical


def test_canonical_text_comes_back_as_the_same_object() -> None:
    text = "".join(["2001:db8", "::1"])  # built at run time: not an interned constant
    assert ip_text(text) is text


@pytest.mark.parametrize("bad", ["", "localhost", "192.0.2", "1.2.3.4.5", "::g", "01.2.3.4",
                                 "[::1]", "x" * 500])
def test_what_is_not_an_ip_address_is_refused_with_one_error(bad: str) -> None:
    with pytest.raises(ValueError, match="not an IP address") as info:
        ip_text(bad)
    assert len(str(info.value)) < 120  # the input is quoted truncated
    with pytest.raises(ValueError, match="not an IP address"):
        packed_ip(bad)


def test_address_text_brackets_ipv6_and_unmaps_ipv4() -> None:
    assert address_text(("192.0.2.1", 4433)) == "192.0.2.1:4433"
    assert address_text(("::ffff:192.0.2.1", 4433, 0, 0)) == "192.0.2.1:4433"
    assert address_text(("2001:db8::1", 4433, 0, 0)) == "[2001:db8::1]:4433"
    assert host_port_text("::", 9090) == "[::]:9090"
    assert host_port_text("example.net", 1) == "example.net:1"


def test_packed_ip_is_4_or_16_bytes_whatever_the_text() -> None:
    assert packed_ip("192.0.2.1") == packed_ip("::ffff:192.0.2.1") == bytes([192, 0, 2, 1])
    assert packed_ip("::1") == packed_ip("0:0:0:0:0:0:0:1") == bytes(15) + b"\x01"
    assert packed_ip("fe80::1%eth0") == packed_ip("fe80::1")  # the zone is not bound
    assert len(packed_ip("2001:db8::1")) == 16


def test_session_client_ip_is_normalised_and_validated() -> None:
    assert normalize_client_ip("::ffff:203.0.113.7") == "203.0.113.7"
    assert normalize_client_ip("2001:DB8::7") == "2001:db8::7"
    with pytest.raises(InvalidSession, match="not an IP address"):
        normalize_client_ip("203.0.113")


# ---------------------------------------------------------- cookies bound to the packed address


def _spec_vectors() -> str:
    """The address vectors as printed in the spec (docs/PROTOCOL.md 2.4)."""
    return re.sub(r"\s+", " ", (ROOT / "docs" / "PROTOCOL.md").read_text())


@pytest.mark.parametrize(("addr", "address_bytes", "tag"), [
    (("192.0.2.1", 4433), "1151c0000201", "bd4138b332d8d60ce1723380da5055cf"),
    (("::ffff:192.0.2.1", 4433, 0, 0), "1151c0000201", "bd4138b332d8d60ce1723380da5055cf"),
    (("2001:db8::1", 4433, 0, 0), "115120010db8000000000000000000000001",
     "62a8e41e780cfc5f9aededa61044a954"),
])
def test_address_tag_vectors(addr: Address, address_bytes: str, tag: str) -> None:
    # computed from the spec's formula, independently of the handshake module
    packed = struct.pack(">H", addr[1]) + packed_ip(str(addr[0]))
    assert packed.hex() == address_bytes
    assert hashlib.sha256(packed).digest()[:16].hex() == tag
    spec = _spec_vectors()
    assert address_bytes in spec and tag in spec


def _finish(server: ServerHandshake, addr: Address) -> bytes:
    client = ClientHandshake(CID, VECTOR_CREDENTIALS)
    client.on_server_hello(server.on_client_hello(CID, client.client_hello(), addr, NOW))
    return client.client_finish()


@pytest.mark.parametrize(("issued_to", "finished_from"), [
    (("::ffff:192.0.2.1", 4433, 0, 0), ("192.0.2.1", 4433)),
    (("192.0.2.1", 4433), ("::ffff:192.0.2.1", 4433, 0, 0)),
    (("2001:db8::1", 4433, 0, 0), ("2001:0DB8:0:0:0:0:0:1", 4433)),
    (("fe80::1", 4433, 0, 2), ("fe80::1%2", 4433, 0, 0)),
])
def test_a_cookie_opens_from_every_text_form_of_its_address(
        issued_to: Address, finished_from: Address) -> None:
    server = ServerHandshake(STATIC, PARAMS)
    payload = _finish(server, issued_to)
    assert server.finish_cookie_valid(CID, payload, finished_from, NOW + 1)
    _, credentials, _ = server.on_client_finish(CID, payload, finished_from, NOW + 1)
    assert credentials == VECTOR_CREDENTIALS
    # and a retry cookie likewise
    retry = server.make_retry(CID, issued_to, NOW)
    hello = ClientHandshake(CID, VECTOR_CREDENTIALS)
    hello.on_retry(retry)
    assert not server.needs_retry(hello.client_hello(), CID, finished_from, NOW + 1)


@pytest.mark.parametrize(("issued_to", "elsewhere"), [
    (("2001:db8::1", 4433, 0, 0), ("2001:db8::2", 4433, 0, 0)),  # the same /64, not the address
    (("2001:db8::1", 4433, 0, 0), ("2001:db8::1", 4434, 0, 0)),  # another port
    (("::ffff:192.0.2.1", 4433, 0, 0), ("192.0.2.2", 4433)),  # another IPv4 address
    # IPv4-compatible (deprecated, 16 bytes) is not IPv4-mapped: not 192.0.2.1
    (("192.0.2.1", 4433), ("::192.0.2.1", 4433, 0, 0)),
])
def test_a_cookie_is_refused_from_any_other_address(issued_to: Address,
                                                    elsewhere: Address) -> None:
    server = ServerHandshake(STATIC, PARAMS)
    payload = _finish(server, issued_to)
    assert not server.finish_cookie_valid(CID, payload, elsewhere, NOW + 1)
    with pytest.raises(HandshakeError, match="another address"):
        server.on_client_finish(CID, payload, elsewhere, NOW + 1)
    hello = ClientHandshake(CID, VECTOR_CREDENTIALS)
    hello.on_retry(server.make_retry(CID, issued_to, NOW))
    assert server.needs_retry(hello.client_hello(), CID, elsewhere, NOW + 1)


# ------------------------------------------------------------------------- per-source limits


def test_sources_with_real_addresses() -> None:
    # a dual-stack socket's IPv4 client is its IPv4 address
    assert source_key("::ffff:198.51.100.7") == source_key("198.51.100.7") == "198.51.100.7"
    # every address of one /64 is one source, whatever its spelling; the next /64 is another
    same = {source_key(a) for a in ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff",
                                    "2001:DB8:1:2:0:0:0:9", "2001:db8:1:2::7%eth0")}
    assert same == {"2001:db8:1:2::/64"}
    assert source_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert source_key("::1") == "::/64"


# ------------------------------------------ the compiled core on IPv6 (simulated network)


def _simulation(**listener_args: Any) -> Simulation:
    config = QuantumConfiguration(keepalive_interval=None, idle_timeout=600.0, fec=None)
    return Simulation(SimulatedNetwork(LinkProfile(delay=0.01)),
                      SimulatedServer.create(config, **listener_args))


V6_CLIENT = ("2001:db8:5::2", 40000, 0, 0)  # as an IPv6 socket reports it
V4_CLIENT = ("::ffff:192.0.2.7", 40001, 0, 0)  # an IPv4 client on a dual-stack socket


def test_connections_from_ipv6_socket_addresses_work_and_migrate_across_families() -> None:
    """The socket's 4-tuples go through the listener, the cookies and the (compiled)
    connection unchanged: the TypeError of issue 13 was the compiled core refusing them."""
    sim = _simulation()
    client = sim.add_client(Credentials(user_id="alice", fec=None), addr=V6_CLIENT)
    sim.run(until=2.0)
    (server_conn,) = sim.server.connections.values()
    assert server_conn.peer_addr == V6_CLIENT  # as the socket gave it: where replies go
    assert client.state is ConnectionState.ESTABLISHED

    # the client moves to an IPv4 network: a migration like any other, validated
    sim.clients[V4_CLIENT] = sim.clients.pop(V6_CLIENT)
    sim.client_events[V4_CLIENT] = sim.client_events.pop(V6_CLIENT)
    client.send(b"from IPv4 now")
    sim.flush()
    sim.run(until=5.0)
    migrated = [e for _, e in sim.server.events if isinstance(e, PathMigrated)]
    assert migrated == [PathMigrated(V6_CLIENT, V4_CLIENT)]
    assert server_conn.peer_addr == V4_CLIENT
    assert b"from IPv4 now" in [e.data for _, e in sim.server.events
                                if isinstance(e, MessageReceived)]
    server_conn.send(b"to IPv4")
    sim.flush()
    sim.run(until=7.0)
    assert b"to IPv4" in [e.data for e in sim.client_events[V4_CLIENT]
                          if isinstance(e, MessageReceived)]
    assert SERVER_ADDR not in sim.clients


def test_the_per_address_limit_counts_an_ipv4_client_the_same_on_either_socket() -> None:
    """max_connections_per_address=1: a client at 192.0.2.7 seen as IPv4-mapped, then as
    plain IPv4, is one source; an IPv6 client of another /64 is another."""
    sim = _simulation(max_connections_per_address=1)
    first = sim.add_client(Credentials(user_id="a", fec=None), addr=V4_CLIENT)
    sim.run(until=2.0)
    assert first.state is not ConnectionState.CLOSED
    assert sim.server.listener.per_address.count("192.0.2.7") == 1
    second = sim.add_client(Credentials(user_id="b", fec=None), addr=("192.0.2.7", 40002))
    other = sim.add_client(Credentials(user_id="c", fec=None), addr=V6_CLIENT)
    sim.run(until=4.0)
    rejected = [e for e in sim.client_events[("192.0.2.7", 40002)]
                if isinstance(e, HandshakeRejected)]
    assert [e.code for e in rejected] == [CloseCode.ADDRESS_FULL]
    assert second.state is ConnectionState.CLOSED
    assert other.state is not ConnectionState.CLOSED
    assert sim.server.listener.per_address.count("2001:db8:5::/64") == 1


def test_the_command_lines_take_ipv6_hosts_with_or_without_brackets() -> None:
    from quantum.client_cli import build_parser as client_parser
    from quantum_server.cli import build_parser as server_parser

    for given, host in (("[::1]", "::1"), ("::", "::"), ("2001:db8::1", "2001:db8::1"),
                        ("0.0.0.0", "0.0.0.0"), ("example.net", "example.net")):
        assert server_parser().parse_args(["--host", given]).host == host
        assert client_parser().parse_args([given, "9097", "--user", "ada"]).host == host

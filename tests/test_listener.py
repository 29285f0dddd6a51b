"""The front door, sans-I/O: what `Listener` answers, charges and refuses (PROTOCOL.md 10.4).

Clients are real `Connection.client`s; their datagrams go to the listener from chosen source
addresses (a spoofer is just a caller that picks the victim's address) and the replies go back
to the client, so every handshake here is the real protocol, on a clock the test sets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum.config import QuantumConfiguration
from quantum.connection import Address, Connection, ConnectionState
from quantum.errors import CloseCode
from quantum.events import HandshakeRejected
from quantum.frames import RejectFrame, decode_frames
from quantum.handshake import Credentials, ServerHandshake, ServerParams
from quantum.listener import ConnectionQuota, Listener, SourceLimiter, source_key
from quantum.packet import VERSION, Flags, Packet, decode_header, decode_packet, encode_packet
from tests.profiles import scaled

SERVER: Address = ("192.0.2.1", 9090)
VICTIM: Address = ("198.51.100.7", 40000)
ALICE = Credentials(user_id="alice", fec=None)
PARAMS = ServerParams(fec=None, keepalive_interval=10.0, idle_timeout=60.0)


def make_listener(**limits: Any) -> Listener:
    handshake = ServerHandshake(bytes(range(1, 33)), PARAMS)
    return Listener(handshake, QuantumConfiguration(keepalive_interval=None, fec=None), **limits)


def kind(reply: bytes) -> str:
    """What a reply is: server_hello, retry, reject:<code name> (plaintext) or sealed_reject."""
    flags = decode_header(reply)[1]
    if flags == Flags.ACK | Flags.RST:
        return "sealed_reject"  # protected: only the client can read it
    packet = decode_packet(reply)
    if flags == Flags.SYN | Flags.ACK:
        return "server_hello"
    if flags == Flags.SYN | Flags.URG:
        return "retry"
    assert flags == Flags.RST
    frame = decode_frames(packet.payload)[0]
    assert isinstance(frame, RejectFrame)
    return f"reject:{CloseCode(frame.code).name}"


class Door:
    """A listener plus the bookkeeping a server does around it."""

    def __init__(self, listener: Listener, now: float = 100.0) -> None:
        self.listener = listener
        self.now = now
        self.connections: dict[bytes, Connection] = {}

    def send(self, data: bytes, addr: Address) -> list[bytes]:
        """One datagram to the listener: its replies (checked never to amplify)."""
        replies, conn = self.listener.receive_datagram(data, addr, self.now,
                                                       len(self.connections))
        for reply, to in replies:
            assert to == addr
            assert len(reply) <= len(data), "a reply larger than the datagram it answers"
        if conn is not None:
            self.connections[conn.connection_id] = conn
        return [reply for reply, _ in replies]

    def handshake(self, addr: Address, client: Connection | None = None,
                  rounds: int = 4) -> tuple[Connection, list[str]]:
        """Run a client's handshake through the door: the client and what it was answered."""
        client = client or Connection.client(SERVER, ALICE, self.now)
        seen: list[str] = []
        for _ in range(rounds):
            out = client.datagrams_to_send(self.now)
            if not out:
                break
            for data, _ in out:
                for reply in self.send(data, addr):
                    seen.append(kind(reply))
                    client.receive_datagram(reply, SERVER, self.now)
        return client, seen

    def close(self, conn: Connection) -> None:
        del self.connections[conn.connection_id]
        self.listener.forget(conn.connection_id, self.now)


def syn(payload_edit: Callable[[bytearray], None] | None = None) -> bytes:
    """A real client's SYN, optionally with its hello payload edited."""
    data = Connection.client(SERVER, ALICE, 0.0).datagrams_to_send(0.0)[0][0]
    if payload_edit is None:
        return data
    packet = decode_packet(data)
    payload = bytearray(packet.payload)
    payload_edit(payload)
    return encode_packet(Packet(packet.flags, packet.connection_id, 0, 0, (), bytes(payload)))


def spoofed_hellos(door: Door, ip: str, count: int) -> None:
    """Well-formed hellos claiming to come from `ip` (the spoofer never sees the answers)."""
    for i in range(count):
        door.send(syn(), (ip, 1024 + i))


# ------------------------------------------------------------------ what charges the rate limit


MALFORMED: dict[str, bytes] = {
    "header_only": encode_packet(Packet(Flags.SYN, os.urandom(16), 0, 0, (), b"")),
    "tiny": encode_packet(Packet(Flags.SYN, os.urandom(16), 0, 0, (), b"\x00" * 8)),
    "short": syn(lambda p: p.__delitem__(slice(600, None))),
    "nonzero_padding": syn(lambda p: p.__setitem__(len(p) - 1, 1)),
    # e_c (32) || offer (count 2, two ids) || the retry cookie length at offset 35
    "bad_cookie_length": syn(lambda p: p.__setitem__(35, 5)),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_hellos_cost_nothing_and_never_drain_a_source(name: str) -> None:
    door = Door(make_listener(per_source_rate=1e-6, per_source_burst=2))
    for port in range(1000, 1100):
        assert door.send(MALFORMED[name], (VICTIM[0], port)) == []
    assert door.listener.stats.drops == {"bad_hello": 100}
    assert door.listener.stats.rejected == {} and door.listener.stats.retries_sent == 0
    # the victim's own two handshakes are still served at once: nothing was charged
    for _ in range(2):
        client, seen = door.handshake(VICTIM)
        assert seen == ["server_hello"]
        assert client.state is ConnectionState.AWAIT_ACCEPT


def test_a_source_over_its_rate_gets_a_retry_cookie_not_a_reject() -> None:
    door = Door(make_listener(per_source_rate=1e-6, per_source_burst=2))
    spoofed_hellos(door, VICTIM[0], 2)  # the burst, used up by someone else
    assert door.listener.stats.handshakes_started == 2
    client, seen = door.handshake(VICTIM)
    # a RETRY (which the spoofer cannot answer for the victim), then served as proven
    assert seen == ["retry", "server_hello"]
    assert client.state is ConnectionState.AWAIT_ACCEPT
    stats = door.listener.stats
    assert (stats.retries_sent, stats.retries_rate_limited) == (1, 1)
    assert stats.rejected == {}


def test_a_spoofed_flood_of_well_formed_hellos_delays_the_victim_by_one_round_trip() -> None:
    door = Door(make_listener(per_source_rate=20.0, per_source_burst=40.0))
    for second in range(5):  # 100 spoofed hellos a second, from the victim's address
        door.now = 100.0 + second
        spoofed_hellos(door, VICTIM[0], 100)
        client, seen = door.handshake(VICTIM)
        assert seen == ["retry", "server_hello"], seen
        assert client.state is ConnectionState.AWAIT_ACCEPT
    assert len(door.connections) == 5
    assert door.listener.stats.rejected == {}


def test_retry_mode_charges_each_handshake_exactly_once() -> None:
    # overloaded from the start (the total rate's bucket holds one token): every new source
    # is asked for a cookie first; a source may complete exactly `burst` handshakes
    door = Door(make_listener(per_source_rate=1e-6, per_source_burst=3, retry_above_rate=1.0))
    door.handshake(("203.0.113.99", 1))  # takes the one token of the total rate
    outcomes = []
    for port in range(5):
        _, seen = door.handshake(("203.0.113.5", 2000 + port))
        outcomes.append(seen[:2])
    assert outcomes == [["retry", "server_hello"]] * 3 + [["retry", "reject:RATE_LIMITED"]] * 2
    assert door.listener.stats.rejected == {"rate_limited": 2}


def test_a_nat_of_many_clients_completes_every_handshake_its_rate_allows() -> None:
    # 2,000 handshakes through one address in retry mode, at 19 a second against a rate of
    # 20: charged once each, none is refused (charged twice, most were)
    door = Door(make_listener(per_source_rate=20.0, per_source_burst=40.0, retry_above_rate=1.0))
    nat = "203.0.113.50"
    refused = 0
    for i in range(2000):
        door.now = 100.0 + i / 19
        client, _ = door.handshake((nat, 1024 + i % 60000))
        if client.state is not ConnectionState.AWAIT_ACCEPT:
            refused += 1
        for conn in list(door.connections.values()):
            door.close(conn)  # keep under the per-address cap: short-lived clients
    assert refused == 0
    assert door.listener.stats.handshakes_started == 2000


def test_a_proven_source_over_its_rate_is_told_rate_limited() -> None:
    door = Door(make_listener(per_source_rate=1e-6, per_source_burst=1))
    spoofed_hellos(door, VICTIM[0], 1)
    _, seen = door.handshake(VICTIM)
    assert seen[:2] == ["retry", "server_hello"]  # the proven bucket's one token
    second, seen = door.handshake((VICTIM[0], VICTIM[1] + 1))
    assert seen == ["retry", "reject:RATE_LIMITED"]
    # the client keeps trying (an unauthenticated REJECT with tries left): still SYN_SENT
    assert second.state is ConnectionState.SYN_SENT
    assert second.handshake_reject is not None
    assert second.handshake_reject[0] == CloseCode.RATE_LIMITED


def test_an_invalid_retry_cookie_is_no_proof() -> None:
    door = Door(make_listener(per_source_rate=1e-6, per_source_burst=1))
    spoofed_hellos(door, VICTIM[0], 1)
    forged = syn(lambda p: p.__setitem__(slice(35, 72), bytes([36]) + bytes(range(36))))
    assert [kind(r) for r in door.send(forged, VICTIM)] == ["retry"]
    # a cookie issued to another port of the same host proves nothing either
    client = Connection.client(SERVER, ALICE, door.now)
    (retry,) = door.send(client.datagrams_to_send(door.now)[0][0], VICTIM)
    client.receive_datagram(retry, SERVER, door.now)
    (hello_with_cookie, _), = client.datagrams_to_send(door.now)
    other_port = (VICTIM[0], VICTIM[1] + 1)
    assert [kind(r) for r in door.send(hello_with_cookie, other_port)] == ["retry"]
    assert [kind(r) for r in door.send(hello_with_cookie, VICTIM)] == ["server_hello"]
    assert door.listener.stats.retries_rate_limited == 3


def test_server_full_is_told_only_to_well_formed_hellos() -> None:
    door = Door(make_listener(max_connections=1))
    door.handshake(VICTIM)
    assert len(door.connections) == 1
    assert door.send(MALFORMED["short"], VICTIM) == []
    assert [kind(r) for r in door.send(syn(), VICTIM)] == ["reject:SERVER_FULL"]


# ------------------------------------------------------------------ connections per address


def test_connections_per_address_refused_past_the_limit_exactly() -> None:
    door = Door(make_listener(max_connections_per_address=3))
    clients = []
    for port in range(3):
        client, seen = door.handshake(("203.0.113.8", 5000 + port))
        assert seen == ["server_hello"]
        clients.append(client)
    assert len(door.connections) == 3
    assert door.listener.per_address.count("203.0.113.8") == 3
    fourth, seen = door.handshake(("203.0.113.8", 5003))
    assert seen == ["server_hello", "sealed_reject"]  # sealed: the client acts on it at once
    assert fourth.state is ConnectionState.CLOSED
    rejected = [e for e in iter(fourth.next_event, None) if isinstance(e, HandshakeRejected)]
    assert [r.code for r in rejected] == [CloseCode.ADDRESS_FULL]
    assert "at most 3" in rejected[0].reason
    assert len(door.connections) == 3 and door.listener.stats.rejected == {"address_full": 1}
    # another address is not affected; a closed connection frees its address's slot
    _, seen = door.handshake(("203.0.113.9", 5000))
    assert seen == ["server_hello"]
    door.close(next(iter(door.connections.values())))
    _, seen = door.handshake(("203.0.113.8", 5004))
    assert seen == ["server_hello"]
    assert door.listener.per_address.count("203.0.113.8") == 3


def test_ipv6_sources_are_counted_by_their_64() -> None:
    door = Door(make_listener(max_connections_per_address=2))
    for host in ("2001:db8:1:2::a", "2001:db8:1:2:ffff::b"):
        _, seen = door.handshake((host, 4000))
        assert seen == ["server_hello"]
    _, seen = door.handshake(("2001:db8:1:2::c", 4000))
    assert seen == ["server_hello", "sealed_reject"]
    _, seen = door.handshake(("2001:db8:1:3::a", 4000))
    assert seen == ["server_hello"]


def test_source_key() -> None:
    assert source_key("198.51.100.7") == "198.51.100.7"
    assert source_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert source_key("not:an:address") == "not:an:address"


# ------------------------------------------------------------------ ClientFinish


def finish_of(door: Door, addr: Address) -> tuple[Connection, bytes]:
    """A client that got its server hello: it and its ClientFinish datagram (not yet sent)."""
    client = Connection.client(SERVER, ALICE, door.now)
    (reply,) = door.send(client.datagrams_to_send(door.now)[0][0], addr)
    client.receive_datagram(reply, SERVER, door.now)
    (finish, _), = client.datagrams_to_send(door.now)
    return client, finish


def count_finishes(listener: Listener) -> list[int]:
    """Wrap the Diffie-Hellman half of the finish: how often it ran."""
    calls = [0]
    real = listener.handshake.on_client_finish

    def counting(*args: Any) -> Any:
        calls[0] += 1
        return real(*args)

    listener.handshake.on_client_finish = counting  # type: ignore[method-assign]
    return calls


def test_finishes_are_rate_limited_per_source_before_any_diffie_hellman() -> None:
    door = Door(make_listener(finish_rate=1e-6, finish_burst=2))
    dh = count_finishes(door.listener)
    addrs = [("203.0.113.20", 7000 + i) for i in range(3)]
    finishes = [finish_of(door, addr)[1] for addr in addrs]
    for finish, addr in zip(finishes[:2], addrs[:2], strict=True):
        assert door.send(finish, addr) == []
    assert len(door.connections) == 2 and dh == [2]
    assert door.send(finishes[2], addrs[2]) == []
    assert len(door.connections) == 2 and dh == [2]  # dropped before the expensive part
    assert door.listener.stats.drops["finish_rate_limited"] == 1
    # another source has its own bucket
    _, finish = finish_of(door, ("203.0.113.21", 7000))
    door.send(finish, ("203.0.113.21", 7000))
    assert len(door.connections) == 3 and dh == [3]


def test_a_finish_opens_its_cookie_once() -> None:
    """The front door opens the finish's cookie before it charges the finish limit and hands
    what it opened to the handshake: one AES-GCM open per finish, not two."""
    door = Door(make_listener())
    handshake = door.listener.handshake
    opens = [0]
    real = handshake._open_cookie

    def counting(*args: Any) -> Any:
        opens[0] += 1
        return real(*args)

    handshake._open_cookie = counting  # type: ignore[method-assign]
    addr = ("203.0.113.30", 7000)
    _, finish = finish_of(door, addr)
    assert door.send(finish, addr) == []
    assert len(door.connections) == 1 and opens == [1]


def test_garbage_finishes_do_not_drain_a_victims_finish_budget() -> None:
    door = Door(make_listener(finish_rate=1e-6, finish_burst=1))
    dh = count_finishes(door.listener)
    _, real_finish = finish_of(door, VICTIM)
    # well-sized finishes with cookies that do not open for the victim's address
    for i in range(50):
        garbage = bytearray(real_finish)
        garbage[-1] ^= 1 + i % 200  # a credentials byte: the cookie still opens...
        garbage[40] ^= 0xFF  # ...but not once the cookie itself is tampered with
        assert door.send(bytes(garbage), VICTIM) == []
    _, other_finish = finish_of(door, ("203.0.113.66", 1))
    assert door.send(other_finish, VICTIM) == []  # a cookie issued to another address
    assert door.listener.stats.drops["bad_finish"] == 51 and dh == [0]
    door.send(real_finish, VICTIM)
    assert len(door.connections) == 1 and dh == [1]


def test_a_refused_finish_replayed_costs_no_diffie_hellman() -> None:
    door = Door(make_listener(max_connections=1))
    addr = ("203.0.113.30", 9999)
    _, finish = finish_of(door, addr)
    door.handshake(VICTIM)  # the last connection slot goes to someone else meanwhile
    assert len(door.connections) == 1
    dh = count_finishes(door.listener)
    assert [kind(r) for r in door.send(finish, addr)] == ["sealed_reject"]
    assert door.listener.stats.rejected == {"server_full": 1}
    for _ in range(1000):
        assert door.send(finish, addr) == []
    assert dh == [1]
    assert door.listener.stats.drops["replayed_handshake"] == 1000
    # until the cookie could no longer be valid anyway
    door.now += door.listener.handshake.cookie_lifetime + 1
    assert door.send(finish, addr) == []
    assert door.listener.stats.drops["bad_finish"] == 1


# ------------------------------------------------------------------ amplification


def test_a_tiny_syn_of_another_version_is_not_answered() -> None:
    door = Door(make_listener())
    tiny = encode_packet(Packet(Flags.SYN, os.urandom(16), 0, 0, (), b"", version=VERSION + 1))
    assert len(tiny) == 32
    assert door.send(tiny, VICTIM) == []  # the REJECT would be larger than the SYN
    assert door.listener.stats.drops == {"amplification_limit": 1}
    padded = encode_packet(Packet(Flags.SYN, os.urandom(16), 0, 0, (), bytes(1168),
                                  version=VERSION + 1))
    assert [kind(r) for r in door.send(padded, VICTIM)] == ["reject:VERSION_NOT_SUPPORTED"]


@settings(max_examples=scaled(300), deadline=None)
@given(flags=st.sampled_from([Flags.SYN, Flags.SYN | Flags.URG, Flags.ACK, Flags.SYN | Flags.RST]),
       version=st.sampled_from([VERSION, VERSION + 1, 0]),
       size=st.integers(0, 1400), cut=st.integers(0, 1432), full=st.booleans())
def test_no_reply_is_ever_larger_than_the_datagram(flags: int, version: int, size: int,
                                                    cut: int, full: bool) -> None:
    door = Door(make_listener(max_connections=1, per_source_rate=1e-6, per_source_burst=1))
    door.handshake(("203.0.113.1", 1))  # full, and that source's bucket is spent
    payload = syn()[32:] if flags == Flags.SYN and size >= 1168 else bytes(size)
    datagram = encode_packet(Packet(flags, os.urandom(16), 0, 0, (), payload, version=version))
    datagram = datagram if full else datagram[:max(32, cut)]
    for addr in (("203.0.113.1", 2), VICTIM):
        door.send(datagram, addr)  # Door.send asserts the bound


# ------------------------------------------------------------------ the building blocks


def test_connection_quota() -> None:
    quota = ConnectionQuota(2)
    assert quota.acquire("a", b"1") and quota.acquire("a", b"2")
    assert not quota.acquire("a", b"3")
    assert quota.acquire("a", b"1")  # already counted: idempotent
    assert quota.acquire("a", b"3", replacing=b"2")  # 2 is on its way out
    assert quota.count("a") == 3
    quota.release(b"2")
    quota.release(b"2")  # twice is harmless
    assert quota.count("a") == 2 and len(quota) == 2
    assert not quota.acquire("a", b"4", replacing=b"elsewhere")
    quota.release(b"1")
    quota.release(b"3")
    assert quota.count("a") == 0 and len(quota) == 0
    with pytest.raises(ValueError):
        ConnectionQuota(0)


def test_source_limiter_memory_is_bounded() -> None:
    limiter = SourceLimiter(rate=1.0, burst=1.0, max_sources=100)
    for i in range(10_000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(limiter) == 100
    assert not limiter.allow("10.0.39.15", 0.0)  # the newest are remembered, spent
    assert limiter.allow("10.0.0.0", 0.0)  # the oldest were forgotten: a full bucket again

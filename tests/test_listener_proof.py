"""The front door's promises at their boundaries (PROTOCOL.md 10.4), beside test_listener.py:
the connection cap exactly at the limit, replayed finishes of connections that completed and
closed, the amplification guard on datagrams small enough for it to matter, the per-source
rate at its burst and refill, and refusals while the server stops.

Same harness as test_listener.py: real client connections, a listener on a clock the test sets.
"""

from __future__ import annotations

import os

import pytest

from quantum.connection import ConnectionState
from quantum.errors import CloseCode
from quantum.events import HandshakeRejected
from quantum.packet import VERSION, Flags, Packet, encode_packet
from tests.test_listener import (
    VICTIM,
    Door,
    count_finishes,
    finish_of,
    kind,
    make_listener,
    spoofed_hellos,
    syn,
)

# ------------------------------------------------------------------ the connection cap


@pytest.mark.parametrize("cap", [1, 3])
def test_the_connection_cap_admits_exactly_cap_connections(cap: int) -> None:
    door = Door(make_listener(max_connections=cap))
    for port in range(cap):
        client, seen = door.handshake(("203.0.113.40", 6000 + port))
        assert seen == ["server_hello"], f"connection {port + 1} of {cap}"
        assert client.state is ConnectionState.AWAIT_ACCEPT
    assert len(door.connections) == cap
    refused, seen = door.handshake(("203.0.113.41", 6000))
    assert seen[0] == "reject:SERVER_FULL"
    assert refused.state is ConnectionState.SYN_SENT  # unauthenticated: it keeps trying
    assert door.listener.stats.rejected == {"server_full": 1}


def test_a_finish_arriving_when_the_last_slot_went_meanwhile_is_refused_sealed() -> None:
    door = Door(make_listener(max_connections=2))
    door.handshake(("203.0.113.42", 1))
    first, first_finish = finish_of(door, ("203.0.113.43", 2))  # hellos served at 1 of 2
    late, late_finish = finish_of(door, ("203.0.113.44", 3))
    assert door.send(first_finish, ("203.0.113.43", 2)) == []  # one below the cap: accepted
    assert len(door.connections) == 2
    (reply,) = door.send(late_finish, ("203.0.113.44", 3))  # at the cap: refused, sealed
    assert kind(reply) == "sealed_reject"
    late.receive_datagram(reply, ("192.0.2.1", 9090), door.now)
    assert late.state is ConnectionState.CLOSED
    rejected = [e for e in iter(late.next_event, None) if isinstance(e, HandshakeRejected)]
    assert [(r.code, r.reason) for r in rejected] == [(CloseCode.SERVER_FULL, "server full")]
    assert len(door.connections) == 2 and door.listener.stats.rejected == {"server_full": 1}
    assert first.state is ConnectionState.AWAIT_ACCEPT


# ------------------------------------------------------------------ replayed finishes


def test_the_finish_of_a_connection_that_closed_is_refused_while_its_cookie_lives() -> None:
    door = Door(make_listener())
    addr = ("203.0.113.50", 4242)
    _, finish = finish_of(door, addr)
    assert door.send(finish, addr) == []
    (conn,) = door.connections.values()
    door.close(conn)  # the server forgets it (Listener.forget)
    dh = count_finishes(door.listener)
    for _ in range(20):
        assert door.send(finish, addr) == []  # a replay does not open it again
    assert door.connections == {}
    assert dh == [0]  # and costs no Diffie-Hellman
    assert door.listener.stats.drops["replayed_handshake"] == 20
    assert door.listener.stats.handshakes_completed == 1
    # once the cookie could no longer be valid, the finish fails on its cookie instead
    door.now += door.listener.handshake.cookie_lifetime + 1
    assert door.send(finish, addr) == []
    assert door.listener.stats.drops["bad_finish"] == 1 and door.connections == {}


# ------------------------------------------------------------------ amplification


@pytest.mark.parametrize("size", [32, 40, 60, 64])
def test_small_syns_of_another_version_are_never_answered_with_more_bytes(size: int) -> None:
    """The REJECT naming the versions is about 100 bytes: a SYN smaller than that would be
    amplified, so it gets nothing (Door.send also checks every reply's size)."""
    door = Door(make_listener())
    datagram = encode_packet(Packet(Flags.SYN, os.urandom(16), 0, 0, (), bytes(size - 32),
                                    version=VERSION + 1))
    assert len(datagram) == size
    assert door.send(datagram, VICTIM) == []
    assert door.listener.stats.drops == {"amplification_limit": 1}


def test_the_version_reject_is_sent_exactly_when_it_fits() -> None:
    door = Door(make_listener())
    cid = os.urandom(16)
    # find the REJECT's size by asking with a large SYN, then probe at it and one byte below
    big = encode_packet(Packet(Flags.SYN, cid, 0, 0, (), bytes(1000), version=VERSION + 1))
    (reject,) = door.send(big, VICTIM)
    fitting = encode_packet(Packet(Flags.SYN, cid, 0, 0, (), bytes(len(reject) - 32),
                                   version=VERSION + 1))
    assert len(fitting) == len(reject)
    assert [kind(r) for r in door.send(fitting, VICTIM)] == ["reject:VERSION_NOT_SUPPORTED"]
    short = encode_packet(Packet(Flags.SYN, cid, 0, 0, (), bytes(len(reject) - 33),
                                 version=VERSION + 1))
    assert door.send(short, VICTIM) == []


# ------------------------------------------------------------------ the per-source rate


def test_a_source_is_served_exactly_its_burst_then_its_rate() -> None:
    door = Door(make_listener(per_source_rate=2.0, per_source_burst=5))
    ip = "203.0.113.60"
    answers = [kind(door.send(syn(), (ip, 1000 + i))[0]) for i in range(6)]
    assert answers == ["server_hello"] * 5 + ["retry"]
    # half a second later one token is back (2 per second), not two
    door.now += 0.5
    answers = [kind(door.send(syn(), (ip, 2000 + i))[0]) for i in range(2)]
    assert answers == ["server_hello", "retry"]
    # a long pause refills the bucket to its burst, never beyond
    door.now += 3600
    answers = [kind(door.send(syn(), (ip, 3000 + i))[0]) for i in range(6)]
    assert answers == ["server_hello"] * 5 + ["retry"]
    assert door.listener.stats.retries_rate_limited == 3


def test_sources_have_separate_buckets() -> None:
    door = Door(make_listener(per_source_rate=1e-6, per_source_burst=1))
    spoofed_hellos(door, "203.0.113.61", 1)
    assert kind(door.send(syn(), ("203.0.113.61", 9))[0]) == "retry"
    assert kind(door.send(syn(), ("203.0.113.62", 9))[0]) == "server_hello"


def test_the_total_rate_asks_every_new_source_for_a_cookie_beyond_it() -> None:
    door = Door(make_listener(retry_above_rate=3.0))
    answers = [kind(door.send(syn(), (f"203.0.113.{70 + i}", 1))[0]) for i in range(4)]
    assert answers == ["server_hello"] * 3 + ["retry"]
    stats = door.listener.stats
    assert (stats.retries_sent, stats.retries_rate_limited) == (1, 0)


# ------------------------------------------------------------------ stopping


def test_while_stopping_every_handshake_is_refused_with_the_reason() -> None:
    door = Door(make_listener())
    addr = ("203.0.113.80", 5555)
    midway, finish = finish_of(door, addr)  # got its hello before the server began to stop
    door.listener.stop_accepting("server shutdown: not accepting connections")
    # a new client is told why, in plaintext (its tries go on: it cannot be sure)
    newcomer, seen = door.handshake(("203.0.113.81", 5555), rounds=1)
    assert seen == ["reject:SERVER_SHUTDOWN"]
    assert newcomer.handshake_reject == (CloseCode.SERVER_SHUTDOWN,
                                         "server shutdown: not accepting connections")
    # a client mid-handshake gets a sealed refusal, which ends its handshake at once
    (reply,) = door.send(finish, addr)
    assert kind(reply) == "sealed_reject"
    midway.receive_datagram(reply, ("192.0.2.1", 9090), door.now)
    rejected = [e for e in iter(midway.next_event, None) if isinstance(e, HandshakeRejected)]
    assert [(r.code, r.reason) for r in rejected] == [
        (CloseCode.SERVER_SHUTDOWN, "server shutdown: not accepting connections")]
    assert door.connections == {}
    assert door.listener.stats.rejected == {"server_shutdown": 2}
    # garbage is still dropped unanswered, and the guard still holds
    assert door.send(syn(lambda p: p.__delitem__(slice(600, None))), VICTIM) == []

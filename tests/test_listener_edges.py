"""The front door at the edges mutation testing found unchecked (docs/TESTING.md): the replay
refusal at the exact instant a cookie stops being valid, a sealed refusal exactly as large as
the finish it answers, what the listener counts and names, the connection it hands over, and
the per-address quota across two resumes in a row.

Same harness as test_listener.py: real client connections, a listener on a clock the test sets.
"""

from __future__ import annotations

import pytest

from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.errors import CloseCode
from quantum.events import HandshakeRejected
from quantum.frames import RejectFrame, decode_frames
from quantum.handshake import PUBLIC_KEY_SIZE, ServerHandshake, ServerParams
from quantum.listener import ConnectionQuota, Listener, TokenBucket, source_key
from quantum.packet import Flags, Packet, decode_packet, encode_packet
from quantum_server.config import ServerConfig
from tests.test_listener import (
    ALICE,
    PARAMS,
    SERVER,
    VICTIM,
    Door,
    count_finishes,
    finish_of,
    kind,
    make_listener,
    syn,
)

HANDSHAKE = ServerHandshake(bytes(range(1, 33)), PARAMS)
CONFIG = QuantumConfiguration(keepalive_interval=None, fec=None)

# ------------------------------------------------------------------ replays, to the instant


def test_a_finish_replayed_at_the_last_instant_its_cookie_is_valid_is_still_refused() -> None:
    """A cookie opens while now <= issued + lifetime; a connection that closed at the instant
    its cookie was issued must be remembered up to and including that last instant."""
    door = Door(make_listener())
    addr = ("203.0.113.90", 4242)
    _, finish = finish_of(door, addr)  # the cookie is issued at door.now
    assert door.send(finish, addr) == []
    (conn,) = door.connections.values()
    door.close(conn)  # closed in the same instant
    door.now += door.listener.handshake.cookie_lifetime  # the cookie's last valid instant
    assert door.send(finish, addr) == []
    assert door.connections == {}
    assert door.listener.stats.drops == {"replayed_handshake": 1}
    assert door.listener.stats.handshakes_completed == 1


def test_each_completed_handshake_and_each_retry_is_counted() -> None:
    door = Door(make_listener(retry_above_rate=2.0))
    for i in range(3):
        door.handshake((f"203.0.113.{100 + i}", 1))
    stats = door.listener.stats
    assert stats.handshakes_completed == 3
    retries = stats.retries_sent  # (the third went beyond the rate: a retry first)
    # beyond the total rate every new hello gets a retry cookie first
    for i in range(3):
        client = Connection.client(SERVER, ALICE, door.now)
        (reply,) = door.send(client.datagrams_to_send(door.now)[0][0], (f"203.0.113.{110 + i}",
                                                                        1))
        assert kind(reply) == "retry"
    assert stats.retries_sent == retries + 3


def test_a_finish_whose_cookie_opens_but_whose_credentials_do_not_is_a_bad_finish() -> None:
    door = Door(make_listener())
    addr = ("203.0.113.91", 4243)
    _, finish = finish_of(door, addr)
    tampered = bytearray(finish)
    tampered[-1] ^= 1  # the sealed credentials' tag, after the (intact) cookie
    diffie_hellman = count_finishes(door.listener)
    assert door.send(bytes(tampered), addr) == []
    assert diffie_hellman == [1]  # the cookie opened: refused by the handshake itself
    assert door.listener.stats.drops == {"bad_finish": 1}
    assert door.connections == {}


# ------------------------------------------------------------------ the connection handed over


def test_the_connection_is_made_with_the_listeners_configuration_and_clock() -> None:
    config = QuantumConfiguration(keepalive_interval=None, fec=None, idle_timeout=7.0)
    door = Door(Listener(ServerHandshake(bytes(range(1, 33)), PARAMS), config), now=500.0)
    door.handshake(("203.0.113.92", 1))
    (conn,) = door.connections.values()
    assert conn.config is config
    assert conn.state is ConnectionState.AUTHENTICATING
    # its idle clock starts now, at the finish: nothing fires before now + idle_timeout
    at = conn.get_timer()
    assert at is not None and door.now < at <= door.now + 7.0


def test_connections_with_the_same_negotiated_parameters_share_one_object() -> None:
    # the server offers FEC, the clients decline it: each negotiation makes new parameters,
    # which the listener keeps one copy of
    offered = ServerParams((10, 3), 10.0, 60.0)
    door = Door(Listener(ServerHandshake(bytes(range(1, 33)), offered), CONFIG))
    for i in range(3):
        client = Connection.client(SERVER, ALICE, door.now,
                                   configuration=QuantumConfiguration(fec=None))
        door.handshake((f"203.0.113.{120 + i}", 1), client)
    first, *others = door.connections.values()
    assert first.params == ServerParams(None, 10.0, 60.0)
    assert len(others) == 2 and all(other.params is first.params for other in others)


# ------------------------------------------------------------------ sealed refusals, by size


def refusal_size(reason: str) -> int:
    """The size of the sealed SERVER_SHUTDOWN refusal carrying `reason` (asked with a finish
    far larger than it)."""
    door = Door(make_listener())
    _, finish = finish_of(door, ("203.0.113.93", 1))
    door.listener.stop_accepting(reason)
    (reply,) = door.send(finish, ("203.0.113.93", 1))
    return len(reply)


@pytest.mark.parametrize("extra", [0, 1])
def test_a_sealed_refusal_is_sent_exactly_when_it_fits_the_finish(extra: int) -> None:
    door = Door(make_listener())
    addr = ("203.0.113.94", 1)
    _, finish = finish_of(door, addr)
    # a reason long enough that the refusal is as large as the finish (extra=0) or one byte
    # larger (extra=1): the first is sent, the second would amplify and is not
    # (the refusal grows by a byte per character of the reason; measured where it fits)
    reason = "x" * (1 + len(finish) - refusal_size("x") + extra)
    assert refusal_size(reason[extra:]) == len(finish)
    door.listener.stop_accepting(reason)
    replies = door.send(finish, addr)
    if extra:
        assert replies == []
        assert door.listener.stats.drops == {"amplification_limit": 1}
    else:
        assert [kind(r) for r in replies] == ["sealed_reject"]
        assert door.listener.stats.drops == {}
    assert door.listener.stats.rejected == {"server_shutdown": 1}


def test_stop_accepting_says_the_server_is_shutting_down_by_default() -> None:
    door = Door(make_listener())
    door.listener.stop_accepting()
    client, seen = door.handshake(("203.0.113.95", 1), rounds=1)
    assert seen == ["reject:SERVER_SHUTDOWN"]
    assert client.handshake_reject == (CloseCode.SERVER_SHUTDOWN, "server shutting down")


def test_a_sealed_refusal_ends_the_clients_handshake_with_its_reason() -> None:
    door = Door(make_listener(max_connections_per_address=1))
    door.handshake(("203.0.113.96", 1))
    late, finish = finish_of(door, ("203.0.113.96", 2))
    (reply,) = door.send(finish, ("203.0.113.96", 2))
    late.receive_datagram(reply, SERVER, door.now)
    rejected = [e for e in iter(late.next_event, None) if isinstance(e, HandshakeRejected)]
    assert [(r.code, r.reason) for r in rejected] == [
        (CloseCode.ADDRESS_FULL, "too many connections from this address (at most 1)")]


# ------------------------------------------------------------------ the building blocks


def test_a_quota_spares_one_slot_per_replacement_not_two() -> None:
    quota = ConnectionQuota(2)
    assert quota.acquire("a", b"1") and quota.acquire("a", b"2")
    assert quota.acquire("a", b"3", replacing=b"1")  # a resume: 1 is on its way out
    assert quota.count("a") == 3
    # a second resume before 1 has gone: replacing 2 spares one slot, and 3 of 2 are taken
    assert not quota.acquire("a", b"4", replacing=b"2")
    quota.release(b"1")
    assert quota.acquire("a", b"4", replacing=b"2")


@pytest.mark.parametrize("scoped", ["fe80::1%", "fe80::1%eth0", "fe80::1%a/b"])
def test_an_ipv6_scope_never_makes_a_separate_source(scoped: str) -> None:
    assert source_key(scoped) == "fe80::/64"


def test_a_new_token_bucket_is_full_at_any_clock_even_the_simulations_zero() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0)
    assert [bucket.allow(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.allow(1.0) and not bucket.allow(1.0)  # one a second after that


# ------------------------------------------------------------------ construction


COUNTS = "max_connections, max_connections_per_address and max_tracked_sources must be at least 1"
RATES = "rates must be positive and bursts at least 1"


@pytest.mark.parametrize(("limits", "message"), [
    ({"max_connections": 0}, COUNTS),
    ({"max_connections_per_address": 0}, COUNTS),
    ({"max_tracked_sources": 0}, COUNTS),
    ({"per_source_rate": 0.0}, RATES),
    ({"per_source_rate": 0.0, "finish_rate": 1.0}, RATES),  # not only through the default
    ({"finish_rate": 0.0}, RATES),
    ({"retry_above_rate": 0.0}, RATES),
    ({"per_source_burst": 0.5}, RATES),
    ({"per_source_burst": 0.5, "finish_burst": 1}, RATES),
    ({"finish_burst": 0.5}, RATES),
])
def test_a_limit_it_cannot_run_with_is_refused_naming_it(limits: dict[str, float],
                                                         message: str) -> None:
    with pytest.raises(ValueError) as refused:
        Listener(HANDSHAKE, CONFIG, **limits)  # type: ignore[arg-type]
    assert str(refused.value) == message


def test_the_smallest_limits_it_can_run_with_are_accepted_and_kept() -> None:
    listener = Listener(HANDSHAKE, CONFIG, max_connections=1, max_connections_per_address=1,
                        max_tracked_sources=1, per_source_rate=1e-9, per_source_burst=1,
                        finish_rate=1e-9, finish_burst=1, retry_above_rate=1e-9)
    assert listener.config is CONFIG
    assert (listener.max_connections, listener.per_address.limit) == (1, 1)
    assert (listener.per_source_rate, listener.per_source_burst) == (1e-9, 1)


def test_the_library_defaults_are_the_servers_documented_ones() -> None:
    """A library user gets the limits the README documents for quantum-server."""
    listener, documented = Listener(HANDSHAKE, CONFIG), ServerConfig()
    assert listener.max_connections == documented.max_connections
    assert listener.per_address.limit == documented.max_connections_per_address
    assert listener.per_source_rate == documented.handshake_rate
    assert listener.per_source_burst == documented.handshake_burst
    door = Door(listener)
    # the burst, then a retry (the rate refills nothing within one instant)
    burst = int(documented.handshake_burst)
    answers = [kind(door.send(syn(), ("203.0.113.130", 1000 + i))[0]) for i in range(burst + 1)]
    assert answers == ["server_hello"] * burst + ["retry"]
    # the finish limit defaults to the hello limit
    assert door.listener._finishes.rate == documented.handshake_rate
    assert door.listener._finishes.burst == documented.handshake_burst
    assert door.listener._global.rate == documented.retry_above_rate


@pytest.mark.parametrize("proven", [False, True])
def test_each_hello_limiter_remembers_only_max_tracked_sources(proven: bool) -> None:
    # proven: the total rate is spent from the start, so every hello is first asked to echo a
    # retry cookie and only the proven sources' limiter is charged
    door = Door(make_listener(per_source_rate=1e-9, per_source_burst=1, max_tracked_sources=2,
                              retry_above_rate=1e-9 if proven else 500.0))
    first = "203.0.113.140"

    def hello(ip: str, port: int) -> str:
        if not proven:
            return kind(door.send(syn(), (ip, port))[0])
        _, seen = door.handshake((ip, port))
        assert seen[0] == "retry"
        return seen[1]

    refused = "reject:RATE_LIMITED" if proven else "retry"
    assert [hello(first, 1), hello(first, 2)] == ["server_hello", refused]
    # two newer sources: the first is forgotten, and has a full bucket again
    assert [hello("203.0.113.141", 1), hello("203.0.113.142", 1)] == ["server_hello"] * 2
    assert hello(first, 3) == "server_hello"


# ------------------------------------------------------------------ what is not a handshake


#: a connection id the listener has never issued (fixed, so that the parameters below, and
#: the test ids pytest-xdist's workers compare, are the same in every process)
UNKNOWN_CID = bytes.fromhex("5ac1d0e1f2a3b4c5d6e7f8091a2b3c4d")


def packet_of(flags: int, seq: int = 0, payload: bytes = b"") -> bytes:
    return encode_packet(Packet(flags, UNKNOWN_CID, seq, 0, (), payload))


@pytest.mark.parametrize(("datagram", "reason"), [
    (b"QUNT" + bytes(20), "not_quantum"),  # shorter than a header
    (b"HTTP" + packet_of(Flags.SYN, payload=bytes(1200))[4:], "not_quantum"),  # not our magic
    (packet_of(Flags.SYN, payload=bytes(1200))[:-1], "malformed"),  # a byte short
    (packet_of(0), "unknown_connection"),  # no flag: data for a connection we do not have
    (packet_of(Flags.FIN), "unknown_connection"),
    (packet_of(Flags.ACK, seq=5), "unknown_connection"),  # data, not a finish (seq 0)
    (packet_of(Flags.SYN | Flags.ACK, payload=bytes(1200)), "unknown_connection"),  # reflected
], ids=["short", "not-our-magic", "a-byte-short", "no-flag", "fin", "data-not-finish",
        "reflected-syn-ack"])
def test_what_is_not_a_handshake_is_dropped_unanswered_by_reason(datagram: bytes,
                                                                  reason: str) -> None:
    door = Door(make_listener())
    assert door.send(datagram, VICTIM) == []
    assert door.listener.stats.drops == {reason: 1}
    stats = door.listener.stats
    assert (stats.handshakes_started, stats.retries_sent, stats.rejected) == (0, 0, {})


def test_plaintext_refusals_say_why_in_words() -> None:
    full = Door(make_listener(max_connections=1))
    full.handshake(("203.0.113.150", 1))
    client, seen = full.handshake(("203.0.113.151", 1), rounds=1)
    assert seen == ["reject:SERVER_FULL"]
    assert client.handshake_reject == (CloseCode.SERVER_FULL, "server full")

    limited = Door(make_listener(per_source_rate=1e-9, per_source_burst=1,
                                 retry_above_rate=1e-9))
    limited.handshake(("203.0.113.152", 1))  # the proven bucket's one token
    client, seen = limited.handshake(("203.0.113.152", 2))
    assert seen == ["retry", "reject:RATE_LIMITED"]
    assert client.handshake_reject == (CloseCode.RATE_LIMITED,
                                       "too many handshakes from this address")


def test_a_hello_whose_key_yields_no_shared_secret_is_a_bad_hello() -> None:
    """Well formed, so it passes the free checks, but its ephemeral key is a low-order point:
    the Diffie-Hellman fails, and the hello is dropped like any malformed one."""
    door = Door(make_listener())
    low_order = syn(lambda p: p.__setitem__(slice(0, 32), bytes(32)))
    assert door.send(low_order, VICTIM) == []
    stats = door.listener.stats
    assert stats.drops == {"bad_hello": 1} and stats.handshakes_started == 0


def test_plaintext_replies_are_handshake_packets_seq_0_ack_0() -> None:
    """PROTOCOL.md 7: handshake packets carry seq 0, ack 0 and no SACK."""
    door = Door(make_listener(retry_above_rate=1.0))
    _, seen = door.handshake(("203.0.113.160", 1), rounds=1)
    client = Connection.client(SERVER, ALICE, door.now)
    replies = door.send(client.datagrams_to_send(door.now)[0][0], ("203.0.113.161", 1))
    door.listener.stop_accepting()
    replies += door.send(syn(), ("203.0.113.162", 1))
    assert seen == ["server_hello"] and [kind(r) for r in replies] == [
        "retry", "reject:SERVER_SHUTDOWN"]
    for reply in [*replies, *door.send(syn(), ("203.0.113.163", 1))]:
        packet = decode_packet(reply)
        assert (packet.seq, packet.ack, packet.sack) == (0, 0, ())


def test_the_finish_limiter_remembers_only_max_tracked_sources() -> None:
    door = Door(make_listener(finish_rate=1e-9, finish_burst=1, max_tracked_sources=2))
    first = "203.0.113.170"

    def finish(ip: str, port: int) -> bool:
        """Whether a complete handshake from (ip, port) is admitted."""
        _, data = finish_of(door, (ip, port))
        before = len(door.connections)
        door.send(data, (ip, port))
        return len(door.connections) == before + 1

    assert [finish(first, 1), finish(first, 2)] == [True, False]
    assert door.listener.stats.drops == {"finish_rate_limited": 1}
    assert [finish("203.0.113.171", 1), finish("203.0.113.172", 1)] == [True, True]
    assert finish(first, 3)  # forgotten by the limiter: a full bucket again


def test_a_connection_quota_of_one_is_the_smallest() -> None:
    quota = ConnectionQuota(1)
    assert quota.acquire("a", b"1") and not quota.acquire("a", b"2")
    with pytest.raises(ValueError, match=r"^a connection quota must be at least 1, got 0$"):
        ConnectionQuota(0)


# ------------------------------------------------------------------ the cipher refusal


def test_a_hello_offering_no_enabled_cipher_is_told_which_ciphers_this_server_has() -> None:
    """A well-formed hello whose offer holds only ids this server does not enable gets a
    plaintext REJECT, to its sender, naming every cipher the server has, in its order."""
    listener = make_listener()
    door = Door(listener)

    def unknown_ciphers(payload: bytearray) -> None:
        count = payload[PUBLIC_KEY_SIZE]
        assert count == 2  # the client's default offer: both ciphers
        payload[PUBLIC_KEY_SIZE + 1:PUBLIC_KEY_SIZE + 1 + count] = bytes((0x7E, 0x7F))

    (reply,) = door.send(syn(unknown_ciphers), VICTIM)  # Door checks it goes to VICTIM
    assert kind(reply) == "reject:CIPHER_NOT_SUPPORTED"
    (frame,) = decode_frames(decode_packet(reply).payload)
    assert isinstance(frame, RejectFrame)
    assert frame.reason == ("no offered cipher is enabled here; this server has "
                            "aes-256-gcm, chacha20-poly1305")
    assert listener.stats.rejected == {"cipher_not_supported": 1}
    assert listener.stats.handshakes_started == 0

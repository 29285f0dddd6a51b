"""The receive path of a connection at the boundaries its counters, timers and wire promise
(sans-I/O, on the simulated network; where a test needs a packet no honest peer sends at that
moment, it forges one under the peer's own keys, so that it authenticates).

What it proves:

* what is dropped before decryption, and what after, is counted under its own name
  (`stats.drops`: too_old, duplicate, beyond_window, wrong_connection, malformed,
  unexpected_handshake, before_accept for every frame of a peer not accepted yet), and only
  accepted datagrams count in `packets_received`/`bytes_received`;
* an authenticated violation closes with the reason it gave ("malformed frames: ..." from the
  frame decoder, FEC's own words, in the compiled build too: it once raised TypeError there);
  the ack fields of a packet without the ACK flag mean nothing;
* a packet rebuilt by FEC counts as a received packet: once in `stats.fec_recovered`, toward
  the ACK that is owed (two ack-eliciting packets are acknowledged at once), with its frames
  processed as any packet's (a CLOSE ends the connection, a KEEPALIVE_ACK measures its round
  trip); a rebuilt payload that is not frames is dropped as "malformed"; only PSH packets are
  FEC data;
* lost packets are counted exactly (`packets_lost`, `fast_retransmits`, one per packet and
  cumulative); a lost path MTU probe is counted in neither, is known lost from the same
  acknowledgement that says so (not at its timeout), is not congestion, is not a loss FEC
  measures, and leaves no hole at the receiver (ACK_FLOOR); a lost data packet is congestion
  (BBR cuts its window); a lost FIN is sent again and the close completes before its deadline;
* the anti-amplification account of a candidate address counts every byte that arrived from it
  (PROTOCOL.md 10.5), so a second datagram from it buys the third challenge; a PATH_CHALLENGE
  carries the ACK flag and the cumulative acknowledgement, is counted once in `packets_sent`
  and `bytes_sent`, and is sealed under the next key generation at the key update point;
* a graceful CLOSE is acknowledged, an abortive one is not; an established client ignores a
  second SESSION or a late REJECT; each message delivered is counted once;
* the stall clock: a peer owing nothing is never stalled, and a stall is measured from the
  last acknowledgement that made progress.
"""

from __future__ import annotations

import os

import pytest

from quantum.bbr import BBR
from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState, _same_address
from quantum.errors import CloseCode
from quantum.events import (
    ConnectionClosed,
    HandshakeCompleted,
    KeepaliveAcknowledged,
    KeepaliveReceived,
    MessageReceived,
)
from quantum.fec import FecDecoder, FecEncoder, FecError, ParityShard
from quantum.frames import (
    CloseFrame,
    Delivery,
    KeepaliveAckFrame,
    KeepaliveFrame,
    MessageFrame,
    ParityFrame,
    PathChallengeFrame,
    PingFrame,
    RejectFrame,
    SessionFrame,
    decode_frames,
    encode_frames,
)
from quantum.handshake import Credentials, ServerHandshake, ServerParams
from quantum.listener import Listener
from quantum.migration import MAX_CHALLENGES
from quantum.packet import (
    ACK,
    BASE_DATAGRAM,
    FEC,
    FIN,
    HEADER_SIZE,
    KEY_PHASE,
    MAX_DATAGRAM,
    PSH,
    RST,
    SYN,
    URG,
    Packet,
    PacketError,
    build_header,
    decode_header,
    decode_packet,
    encode_packet,
)
from quantum.simulation import (
    CLIENT_ADDR,
    SERVER_ADDR,
    LinkProfile,
    SimulatedNetwork,
    SimulatedServer,
    Simulation,
)
from tests.test_migration import Wire, frames_for_client

ALICE = Credentials(user_id="alice")
NEW_ADDR = ("10.0.0.77", 51000)
MASK = 0xFFFFFFFF
Address = tuple[str, int]


def config(fec: tuple[int, int] | None = None, **overrides: object) -> QuantumConfiguration:
    values: dict[str, object] = {"keepalive_interval": None, "idle_timeout": 600.0, "fec": fec}
    values.update(overrides)
    return QuantumConfiguration(**values)  # type: ignore[arg-type]


def connect(cfg: QuantumConfiguration, mtu: int = MAX_DATAGRAM
            ) -> tuple[Simulation, Connection, Connection, Wire]:
    """An established connection on a lossless 20 ms path carrying datagrams up to `mtu`."""
    sim = Simulation(SimulatedNetwork(LinkProfile(delay=0.02, mtu=mtu), 5),
                     SimulatedServer.create(cfg))
    wire = Wire(sim)
    client = sim.add_client(ALICE, configuration=cfg)
    sim.run(until=2.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    assert client.state is ConnectionState.ESTABLISHED
    server = next(iter(sim.server.connections.values()))
    sim.run(until=sim.now + 0.2)  # the SESSION frame's acknowledgement and what follows
    return sim, client, server, wire


def sealed_by(sender: Connection, frames: list[object] | bytes, flags: int = ACK,
              pn: int | None = None, ack32: int | None = None) -> tuple[int, bytes]:
    """An authenticated datagram from `sender` carrying `frames` (or that payload), with its
    packet number (the next one, unless `pn` names another; the ack field is the sender's
    cumulative point unless `ack32` says otherwise).

    The test seals with the sender's own keys and packet numbers (private state: no public
    call makes a connection send a frame of the test's choosing, such as a crafted PARITY)."""
    seal = sender._seal
    assert seal is not None
    if pn is None:
        pn = sender._flight.allocate_pn()
    if ack32 is None:
        ack32, _ = sender._acks.ack_fields()
    payload = frames if isinstance(frames, bytes) else encode_frames(frames)
    header = build_header(flags | seal.phase_flag, sender.connection_id, pn & MASK, ack32,
                          len(payload))
    return pn, header + seal.seal(pn, header, payload)


def parity_rebuilding(pn: int, payload: bytes, group_id: int = 7) -> ParityFrame:
    """The one parity shard of a one-packet group: it rebuilds packet `pn` alone."""
    encoder = FecEncoder(k=1, m=1, first_group_id=group_id)
    encoder.add(pn, payload)
    (shard,) = encoder.close(1)
    return ParityFrame(shard.group_id, shard.m, shard.index,
                       tuple(s & MASK for s in shard.data_seqs), shard.shard)


def state_of(conn: Connection) -> ConnectionState:
    """The state, read through a call (so a type checker does not narrow it across steps)."""
    return conn.state


def drain(conn: Connection) -> list[object]:
    """The events `conn` queued since they were last pulled."""
    out: list[object] = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


# ----------------------------------------------------------------------- FEC recovery


def rebuilt_by_parity(sim: Simulation, sender: Connection, receiver: Connection,
                      frames: list[object], carrier_first: bool = False) -> int:
    """`sender`'s packet holding `frames` never arrives, only the parity that rebuilds it
    (in a packet numbered after it, or, `carrier_first`, before it); returns its pn."""
    first, second = sender._flight.allocate_pn(), sender._flight.allocate_pn()
    carrier, missing = (first, second) if carrier_first else (second, first)
    payload = encode_frames(frames)
    _, datagram = sealed_by(sender, [parity_rebuilding(missing, payload)], ACK | FEC,
                            pn=carrier)
    src = SERVER_ADDR if receiver.is_client else CLIENT_ADDR
    receiver.receive_datagram(datagram, src, sim.now)
    return missing


def test_a_rebuilt_packet_is_counted_once_and_its_message_delivered() -> None:
    sim, client, server, _ = connect(config(fec=(10, 3)))
    drain(server)
    received = (server.stats.packets_received, server.stats.bytes_received)
    rebuilt_by_parity(sim, client, server,
                      [MessageFrame(0, Delivery.RELIABLE_ORDERED, 0, b"rebuilt")])
    assert server.stats.fec_recovered == 1
    # the datagram that arrived is counted, once and whole; what it rebuilt is not a datagram
    assert server.stats.packets_received == received[0] + 1
    assert server.stats.bytes_received > received[1]
    assert [e.data for e in drain(server) if isinstance(e, MessageReceived)] == [b"rebuilt"]
    assert server.state is ConnectionState.ESTABLISHED


def test_a_rebuilt_payload_that_is_not_frames_is_dropped_as_malformed() -> None:
    sim, client, server, _ = connect(config(fec=(10, 3)))
    assert "malformed" not in server.stats.drops
    missing = client._flight.allocate_pn()
    # 0x0C is no frame type: the parity authenticates, what it rebuilds does not parse
    encoder = FecEncoder(k=1, m=1, first_group_id=7)
    encoder.add(missing, b"\x0c")
    (shard,) = encoder.close(1)
    parity = ParityFrame(shard.group_id, 1, 0, (missing & MASK,), shard.shard)
    _, datagram = sealed_by(client, [parity], ACK | FEC)
    server.receive_datagram(datagram, CLIENT_ADDR, sim.now)
    assert dict(server.stats.drops) == {"malformed": 1}
    assert server.stats.fec_recovered == 0
    assert server.state is ConnectionState.ESTABLISHED


def test_a_rebuilt_packet_counts_toward_the_ack_owed_like_any_packet() -> None:
    # the parity arrives in order (its ACK may wait max_ack_delay), then rebuilds the packet
    # after it: two ack-eliciting packets, so the ACK is owed at once (6.6) and covers both
    sim, client, server, _ = connect(config(fec=(10, 3)))
    now = sim.now
    timer = server.get_timer()
    assert timer is not None and timer > now
    missing = rebuilt_by_parity(sim, client, server, [PingFrame()], carrier_first=True)
    assert server.stats.fec_recovered == 1
    assert server.get_timer() == now
    out = server.datagrams_to_send(now)
    assert len(out) == 1 and out[0][1] == CLIENT_ADDR
    _, flags, _, _, ack32, _ = decode_header(out[0][0])
    assert flags & ACK and ack32 == (missing + 1) & MASK


def test_a_rebuilt_close_ends_the_connection_as_the_peers_close() -> None:
    sim, client, server, _ = connect(config(fec=(10, 3)))
    drain(server)
    rebuilt_by_parity(sim, client, server, [CloseFrame(CloseCode.NORMAL, "rebuilt bye")])
    assert server.state is ConnectionState.CLOSED
    closed = [e for e in drain(server) if isinstance(e, ConnectionClosed)]
    assert [(e.code, e.reason, e.by_peer) for e in closed] == [
        (CloseCode.NORMAL, "rebuilt bye", True)]


def test_a_rebuilt_keepalive_answer_measures_its_round_trip() -> None:
    sim, client, server, _ = connect(config(fec=(10, 3)))
    kid = client.send_keepalive()
    sent_at = sim.now
    sim.flush()  # the keepalive leaves now; its answer is lost, only the parity arrives
    sim.now = sent_at + 0.05
    drain(client)
    rebuilt_by_parity(sim, server, client, [KeepaliveAckFrame(kid, 60_000)])
    acks = [e for e in drain(client) if isinstance(e, KeepaliveAcknowledged)]
    assert [(a.keepalive_id, a.remaining) for a in acks] == [(kid, 60.0)]
    assert acks[0].rtt == sim.now - sent_at


# ----------------------------------------------------------------------- losses


class Burst:
    """On a 1200-byte path (every path MTU probe is lost) during the search: the probe due
    next leaves first, then one packet per message; the data packets at `drop` (1: the one
    right after the probe) are lost too. The client's acknowledgements of the rest then tell
    the server, in one ACK, what was lost."""

    def __init__(self, sim: Simulation, server: Connection, wire: Wire,
                 messages: int, drop: tuple[int, ...]) -> None:
        sim.run(until=sim.now + 0.15)  # everything but the probe in flight acknowledged
        stats = server.refresh_stats()
        assert stats.pmtu_probes_sent == stats.pmtu_probes_lost + 1  # a probe in flight
        # its timeout: the next probe is due (the search goes on), with the messages queued
        t = server.get_timer()
        assert t is not None
        server.handle_timer(t)
        sim.now = t
        stats = server.refresh_stats()
        assert stats.pmtu_probes_sent == stats.pmtu_probes_lost  # none in flight
        self.probes_before = stats.pmtu_probes_lost
        self.lost_before = stats.packets_lost
        self.cwnd_before = stats.cwnd
        self.payloads = [os.urandom(1000) for _ in range(messages)]
        for p in self.payloads:
            server.send(p)
        self.probe_seq = -1
        self.seqs: list[int] = []
        dropped = set(drop)

        def hook(data: bytes, src: Address, dst: Address, now: float) -> bool:
            if src != SERVER_ADDR or dst != CLIENT_ADDR:
                return False
            seq = decode_header(data)[3]
            if len(data) > BASE_DATAGRAM and self.probe_seq < 0:
                self.probe_seq = seq
                return False
            self.seqs.append(seq)
            return self.probe_seq >= 0 and seq - self.probe_seq in dropped

        wire.hook = hook
        self.sent_at = sim.now
        sim.flush()
        assert self.probe_seq >= 0, "the probe left first"
        wire.hook = None


def test_a_probe_and_a_data_packet_lost_together_are_told_apart() -> None:
    sim, _client, server, wire = connect(config(), mtu=BASE_DATAGRAM)
    burst = Burst(sim, server, wire, messages=5, drop=(1,))
    sim.run(until=sim.now + 0.15, condition=lambda: server.stats.packets_lost > 0)
    stats = server.refresh_stats()
    assert sim.now < burst.sent_at + 0.1  # an ACK said so, long before the probe's timeout
    # the data packet: lost once, retransmitted once; the probe: lost, in neither counter
    assert (stats.packets_lost, stats.fast_retransmits, stats.timeout_retransmits) == (1, 1, 0)
    assert stats.pmtu_probes_lost == burst.probes_before + 1
    # the data packet's loss is congestion: nothing is left in flight, so BBR's window falls
    # to its minimum for the round (the probe's loss alone would not: see below)
    assert stats.cwnd == BBR().min_cwnd < burst.cwnd_before
    sim.run(until=sim.now + 2.0)
    assert [e.data for e in sim.client_events[CLIENT_ADDR]
            if isinstance(e, MessageReceived)] == burst.payloads
    assert server.refresh_stats().packets_lost == 1


def test_every_lost_data_packet_is_counted_and_retransmitted_once() -> None:
    sim, _client, server, wire = connect(config(), mtu=BASE_DATAGRAM)
    Burst(sim, server, wire, messages=6, drop=(1, 2))
    sim.run(until=sim.now + 0.15, condition=lambda: server.stats.packets_lost > 0)
    stats = server.stats
    assert (stats.packets_lost, stats.fast_retransmits, stats.timeout_retransmits) == (2, 2, 0)
    sim.run(until=sim.now + 0.5)
    # a second loss adds to the counts
    Burst(sim, server, wire, messages=5, drop=(3,))
    sim.run(until=sim.now + 0.15, condition=lambda: server.stats.packets_lost > 2)
    assert (stats.packets_lost, stats.fast_retransmits, stats.timeout_retransmits) == (3, 3, 0)
    sim.run(until=sim.now + 2.0)
    assert len([e for e in sim.client_events[CLIENT_ADDR]
                if isinstance(e, MessageReceived)]) == 11
    assert (stats.packets_lost, stats.retransmissions) == (3, 3)


def test_a_probe_lost_alone_is_not_congestion_and_leaves_no_hole() -> None:
    sim, client, server, wire = connect(config(), mtu=BASE_DATAGRAM)
    burst = Burst(sim, server, wire, messages=5, drop=())
    sim.run(until=sim.now + 0.15,
            condition=lambda: server.refresh_stats().pmtu_probes_lost > burst.probes_before)
    assert sim.now < burst.sent_at + 0.1  # the ACK of the packets after it said so
    stats = server.refresh_stats()
    assert (stats.packets_lost, stats.retransmissions) == (0, 0)
    # BBR in STARTUP only grows its window while nothing but a probe is lost
    assert stats.cwnd >= burst.cwnd_before
    # the probe never arrives: ACK_FLOOR tells the client, whose cumulative point then
    # moves past the hole the probe left
    sim.run(until=sim.now + 0.1)
    client.send(b"x")
    (datagram, _), *_ = client.datagrams_to_send(sim.now)
    ack32 = decode_header(datagram)[4]
    assert ack32 > burst.probe_seq


def test_a_lost_probe_is_no_loss_fec_measures() -> None:
    # a lone retransmission after one loss measured (1/32: a 3.1 % rate) gets one parity
    # shard; were the probe lost with it counted too (6.2 %), it would get two
    sim, _client, server, wire = connect(config(fec=(10, 3)), mtu=BASE_DATAGRAM)
    Burst(sim, server, wire, messages=5, drop=(1,))
    sim.run(until=sim.now + 2.0)
    stats = server.refresh_stats()
    assert (stats.packets_lost, stats.fast_retransmits) == (1, 1)
    assert stats.fec_parity_sent == 1


# ----------------------------------------------------------------------- path validation


def test_a_path_challenge_carries_the_ack_and_is_counted_once() -> None:
    sim, client, server, _ = connect(config())
    before = (server.stats.packets_sent, server.stats.bytes_sent)
    pn, datagram = sealed_by(client, [])
    server.receive_datagram(datagram, NEW_ADDR, sim.now)
    after = (server.stats.packets_sent, server.stats.bytes_sent)
    out = server.datagrams_to_send(sim.now)
    probes = [d for d, addr in out if addr == NEW_ADDR]
    assert len(probes) == 1
    probe = probes[0]
    assert after == (before[0] + 1, before[1] + len(probe))
    _, flags, cid, _, ack32, _ = decode_header(probe)
    # the only flag is ACK (generation 0's phase bit is clear), the acknowledgement the
    # cumulative point, which the forged packet moved to just above itself
    assert flags == ACK and cid == server.connection_id
    assert ack32 == (pn + 1) & MASK
    challenges = frames_for_client(client, probe)
    assert len(challenges) == 1 and isinstance(challenges[0], PathChallengeFrame)


def test_a_challenge_at_the_key_update_point_is_sealed_under_the_next_keys() -> None:
    update = 40
    sim, client, server, _ = connect(config(key_update_packets=update))
    # the server's packet numbers (no public view of them) up to the update point
    while server._flight.next_pn < update + 1:
        server.send(b"x")
        sim.flush()
        sim.run(until=sim.now + 0.01)
    sim.run(until=sim.now + 0.1)
    assert server._flight.next_pn == update + 1 and server.key_generations == (0, 0)
    _, datagram = sealed_by(client, [])
    server.receive_datagram(datagram, NEW_ADDR, sim.now)
    (probe,) = [d for d, addr in server.datagrams_to_send(sim.now) if addr == NEW_ADDR]
    _, flags, _, seq, _, _ = decode_header(probe)
    assert seq == update + 1
    assert flags & KEY_PHASE and server.key_generations == (1, 0)


def test_every_byte_from_the_candidate_address_buys_challenge_budget() -> None:
    # a challenge is 57 bytes, an empty packet 48: one such datagram buys 3 x 48 = 144
    # bytes, two challenges; a second one from the same address buys the third
    for datagrams, challenges in ((1, 2), (2, MAX_CHALLENGES)):
        sim, client, server, wire = connect(config())
        sizes = 0
        for i in range(datagrams):
            _, datagram = sealed_by(client, [])
            sizes += len(datagram)
            wire.inject(datagram, NEW_ADDR, SERVER_ADDR, sim.now + 0.001 * (i + 1))
        sim.run(until=sim.now + 10.0)
        sent = wire.received_by.get(NEW_ADDR, [])
        assert len(sent) == challenges
        assert all(len(d) == HEADER_SIZE + 9 + 16 for d in sent)
        assert sum(map(len, sent)) <= 3 * sizes
        assert server.stats.drops.get("path_validation_failed") == 1
        assert server.peer_addr == CLIENT_ADDR


def test_a_lost_fin_is_sent_again_and_the_close_completes_before_its_deadline() -> None:
    sim, client, server, wire = connect(config())
    fins: list[float] = []

    def lose_the_first_fin(data: bytes, src: Address, dst: Address, now: float) -> bool:
        if src == CLIENT_ADDR and decode_header(data)[1] & FIN:
            fins.append(now)
            return len(fins) == 1
        return False

    wire.hook = lose_the_first_fin
    client.close("bye")
    sim.flush()
    sim.run(until=sim.now + client.config.close_timeout,
            condition=lambda: client.state is ConnectionState.CLOSED)
    # the retransmission timer declared the FIN lost and a new one went out; the server's
    # acknowledgement of it ended the close, well before the close timeout would have
    assert len(fins) == 2
    assert client.stats.timeout_retransmits == 1
    assert client.state is ConnectionState.CLOSED
    assert sim.now < fins[0] + client.config.close_timeout
    closed = [e for e in sim.client_events[CLIENT_ADDR] if isinstance(e, ConnectionClosed)]
    assert [(e.code, e.reason, e.by_peer) for e in closed] == [(CloseCode.NORMAL, "bye", False)]
    by_peer = [e for c, e in sim.server.events if c is server and isinstance(e, ConnectionClosed)]
    assert [(e.code, e.reason, e.by_peer) for e in by_peer] == [(CloseCode.NORMAL, "bye", True)]



def test_only_the_fins_acknowledgement_ends_the_close() -> None:
    """A close ends when the FIN is acknowledged, not at the first acknowledgement after it:
    a PATH_RESPONSE the closing client sends (to a challenge the server sent meanwhile) is
    tracked, and an ACK that takes it while the FIN is still missing leaves the client
    CLOSING; the FIN's own acknowledgement ends it."""
    sim, client, server, _ = connect(config())
    now = sim.now
    client.close("bye")
    (fin,) = client.datagrams_to_send(now)  # never delivered: the FIN is missing at the server
    fin_header = decode_header(fin[0])
    assert fin_header[1] & FIN
    fin_pn = fin_header[3]
    _, challenge = sealed_by(server, [PathChallengeFrame(b"8 bytes!")])
    client.receive_datagram(challenge, SERVER_ADDR, now + 0.01)
    (response,) = client.datagrams_to_send(now + 0.01)
    response_pn = decode_header(response[0])[3]
    assert response_pn == fin_pn + 1

    def ack(cumulative: int, sack: tuple[tuple[int, int], ...]) -> bytes:
        seal = server._seal
        assert seal is not None
        pn = server._flight.allocate_pn()
        body = b"".join(start.to_bytes(4, "big") + end.to_bytes(4, "big")
                        for start, end in sack)
        header = build_header(ACK | seal.phase_flag, server.connection_id, pn & MASK,
                              cumulative & MASK, 0)
        return header + seal.seal(pn, header, body)

    # everything before the FIN arrived, and the response after it: the FIN did not
    client.receive_datagram(ack(fin_pn, ((response_pn, response_pn),)), SERVER_ADDR,
                            now + 0.05)
    assert state_of(client) is ConnectionState.CLOSING
    assert not [e for e in sim.client_events[CLIENT_ADDR] if isinstance(e, ConnectionClosed)]
    assert not any(isinstance(e, ConnectionClosed) for e in iter(client.next_event, None))
    client.receive_datagram(ack(response_pn + 1, ()), SERVER_ADDR, now + 0.06)
    assert state_of(client) is ConnectionState.CLOSED


# ----------------------------------------------------------------------- drops and violations


def dropped_by(conn: Connection, datagram: bytes, src: Address, now: float) -> dict[str, int]:
    """What `conn` counted as dropped for this one datagram."""
    before = dict(conn.stats.drops)
    conn.receive_datagram(datagram, src, now)
    return {k: v - before.get(k, 0) for k, v in conn.stats.drops.items()
            if v != before.get(k, 0)}


def test_protected_datagrams_refused_before_decryption_are_dropped_by_name() -> None:
    sim, client, server, _ = connect(config())
    now = sim.now
    first, datagram = sealed_by(client, [PingFrame()])
    received = (server.stats.packets_received, server.stats.bytes_received)
    server.receive_datagram(datagram, CLIENT_ADDR, now)
    # accepted: one datagram, all its bytes
    assert (server.stats.packets_received, server.stats.bytes_received) == (
        received[0] + 1, received[1] + len(datagram))
    assert dropped_by(server, datagram, CLIENT_ADDR, now) == {"too_old": 1}
    # a gap: the next-but-one packet arrives, then again (a SACK range's duplicate)
    client._flight.allocate_pn()
    _, ahead = sealed_by(client, [PingFrame()])
    assert dropped_by(server, ahead, CLIENT_ADDR, now) == {}
    assert dropped_by(server, ahead, CLIENT_ADDR, now) == {"duplicate": 1}
    # more than 2**30 packets past the cumulative point
    _, far = sealed_by(client, [PingFrame()], pn=first + 2 + (1 << 30))
    assert dropped_by(server, far, CLIENT_ADDR, now) == {"beyond_window": 1}
    other = bytes(b ^ 0xFF for b in server.connection_id)
    _, foreign = sealed_by(client, [PingFrame()])
    foreign = foreign[:6] + other + foreign[22:]
    assert dropped_by(server, foreign, CLIENT_ADDR, now) == {"wrong_connection": 1}
    assert server.state is ConnectionState.ESTABLISHED
    # only the two accepted datagrams were counted as received
    assert (server.stats.packets_received, server.stats.bytes_received) == (
        received[0] + 2, received[1] + len(datagram) + len(ahead))


def _violation_reason(payload_frames: list[object] | bytes) -> str:
    sim, client, server, _ = connect(config(fec=(10, 3)))
    _, datagram = sealed_by(client, payload_frames, ACK | FEC)
    server.receive_datagram(datagram, CLIENT_ADDR, sim.now)
    assert server.state is ConnectionState.CLOSED
    assert server.close_code == CloseCode.PROTOCOL_VIOLATION
    closed = [e for e in drain(server) if isinstance(e, ConnectionClosed)]
    assert [(e.code, e.reason, e.by_peer) for e in closed] == [
        (CloseCode.PROTOCOL_VIOLATION, server.close_reason, False)]
    return server.close_reason


def test_frames_that_do_not_parse_close_with_the_decoders_words() -> None:
    try:
        decode_frames(b"\x0c")
    except PacketError as exc:
        expected = f"malformed frames: {exc}"
    assert _violation_reason(b"\x0c") == expected


# the compiled build (mypyc) gives both `except` clauses of receive_datagram one variable
# `exc` typed PacketError, so a ProtocolError that is not a PacketError (FEC's, the channels')
# raises TypeError out of receive_datagram instead of closing the connection: a bug
def test_an_fec_violation_closes_with_fecs_words() -> None:
    shard = ParityShard(7, 0, 1, (5, 5), bytes(4))  # one packet named twice
    try:
        FecDecoder().on_parity(shard)
    except FecError as exc:
        expected = str(exc)
    assert expected and _violation_reason([ParityFrame(7, 1, 0, (5, 5), bytes(4))]) == expected


def test_handshake_datagrams_that_answer_nothing_are_dropped_by_name() -> None:
    sim = Simulation(SimulatedNetwork(LinkProfile(), 1), SimulatedServer.create(config()))
    client = sim.add_client(ALICE, configuration=config())
    sim.run(until=0.03)  # the server's hello is on its way: take it off the network
    _, hello, _, _ = sim.network.pop()
    cid = decode_packet(hello).connection_id
    now = sim.now
    cases = [
        (hello, ("10.9.9.9", 9090), "unexpected_handshake"),  # not from the server
        (hello[:-1], SERVER_ADDR, "malformed"),  # shorter than its payload length says
        (encode_packet(Packet(ACK, cid, 0, 0, (), b"")), SERVER_ADDR,
         "unexpected_handshake"),  # no SYN, no RST: nothing the client waits for
        (encode_packet(Packet(RST, cid, 0, 0, (), b"\x0c")), SERVER_ADDR,
         "malformed"),  # a REJECT whose frames do not parse
    ]
    for datagram, src, name in cases:
        assert dropped_by(client, datagram, src, now) == {name: 1}
        assert client.state is ConnectionState.SYN_SENT
    client.receive_datagram(hello, SERVER_ADDR, now)
    assert state_of(client) is ConnectionState.AWAIT_ACCEPT
    sim.run(until=2.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    # established, the handshake is over: a SYN-ACK has no taker any more
    late = encode_packet(Packet(SYN | ACK, cid, 0, 0, (), b"x"))
    assert dropped_by(client, late, SERVER_ADDR, sim.now) == {"unexpected_handshake": 1}
    assert state_of(client) is ConnectionState.ESTABLISHED


def test_the_ack_field_of_a_packet_without_the_ack_flag_means_nothing() -> None:
    # PROTOCOL.md 2.1: the ACK flag says "the ack and SACK fields are meaningful"
    sim, client, server, _ = connect(config())
    server.send(b"m" * 100)
    out = server.datagrams_to_send(sim.now)  # never delivered: the client knows nothing
    assert out and server.send_buffered == 100
    everything = decode_header(out[-1][0])[3] + 1
    _, unflagged = sealed_by(client, [PingFrame()], flags=0, ack32=everything)
    server.receive_datagram(unflagged, CLIENT_ADDR, sim.now)
    assert server.send_buffered == 100  # still unacknowledged
    _, flagged = sealed_by(client, [PingFrame()], flags=ACK, ack32=everything)
    server.receive_datagram(flagged, CLIENT_ADDR, sim.now)
    assert server.send_buffered == 0


# ----------------------------------------------------------------------- frames


def test_every_frame_of_a_peer_not_accepted_yet_is_dropped_and_counted() -> None:
    # the server holds the client in AUTHENTICATING (no answer to its credentials yet):
    # messages and keepalives from it are refused one by one (PROTOCOL.md 10.1)
    cfg = config()
    sim = Simulation(SimulatedNetwork(LinkProfile(delay=0.02), 5), SimulatedServer.create(cfg))
    sim.server.authorize = lambda conn, request: None
    client = sim.add_client(ALICE, configuration=cfg)
    sim.run(until=0.5)
    server = next(iter(sim.server.connections.values()))
    assert server.state is ConnectionState.AUTHENTICATING
    frames: list[object] = [MessageFrame(0, Delivery.RELIABLE_ORDERED, 0, b"a"),
                            KeepaliveFrame(1),
                            MessageFrame(0, Delivery.RELIABLE_ORDERED, 1, b"b"),
                            KeepaliveFrame(2)]
    _, datagram = sealed_by(client, frames)
    drain(server)
    assert dropped_by(server, datagram, CLIENT_ADDR, sim.now) == {"before_accept": 4}
    assert drain(server) == []
    assert server.stats.messages_received == 0


def test_each_message_delivered_is_counted_once() -> None:
    sim, client, server, _ = connect(config())
    _, datagram = sealed_by(client, [MessageFrame(0, Delivery.RELIABLE_ORDERED, 0, b"a"),
                                     MessageFrame(0, Delivery.RELIABLE_ORDERED, 1, b"b")])
    drain(server)
    server.receive_datagram(datagram, CLIENT_ADDR, sim.now)
    assert [e.data for e in drain(server) if isinstance(e, MessageReceived)] == [b"a", b"b"]
    assert server.stats.messages_received == 2


def test_an_established_client_ignores_a_second_session_or_a_late_reject() -> None:
    sim, client, server, _ = connect(config())
    session = (client.session_id, client.session_token)
    # what the SESSION frame said, as the simulated server accepts (1800 s, a new session)
    (completed,) = [e for e in sim.client_events[CLIENT_ADDR]
                    if isinstance(e, HandshakeCompleted)]
    assert (completed.session_id, completed.session_token) == session
    assert (completed.remaining, completed.resumed, completed.carried) == (1800.0, False, False)
    drain(client)
    late: list[object] = [SessionFrame(bytes(16), "other-token", 1000, False),
                          RejectFrame(CloseCode.BAD_TICKET, "too late")]
    _, datagram = sealed_by(server, late)
    client.receive_datagram(datagram, SERVER_ADDR, sim.now)
    assert client.state is ConnectionState.ESTABLISHED
    assert (client.session_id, client.session_token) == session
    assert drain(client) == []


def test_a_graceful_close_is_acknowledged_an_abortive_one_is_not() -> None:
    for flags, answers in ((ACK | FIN, 1), (ACK | RST, 0)):
        sim, client, server, _ = connect(config())
        _, datagram = sealed_by(client, [CloseFrame(CloseCode.NORMAL, "bye")], flags)
        drain(server)
        server.receive_datagram(datagram, CLIENT_ADDR, sim.now)
        closed = [e for e in drain(server) if isinstance(e, ConnectionClosed)]
        assert [(e.code, e.reason, e.by_peer) for e in closed] == [
            (CloseCode.NORMAL, "bye", True)]
        out = server.datagrams_to_send(sim.now)
        assert len(out) == answers
        if answers:  # a pure ACK: the FIN is acknowledged so the peer stops sending it
            _, out_flags, _, _, ack32, _ = decode_header(out[0][0])
            assert out_flags & ~KEY_PHASE == ACK
            assert ack32 == decode_header(datagram)[3] + 1


def test_only_packets_sent_with_psh_are_fec_data() -> None:
    # a group of two: the first arrives, the second is lost, then the group's one parity
    # shard; the first counts toward the group only if it came with PSH (it joined a group)
    for flags, rebuilt in ((ACK, 0), (ACK | PSH, 1)):
        sim, client, server, _ = connect(config(fec=(10, 3)))
        first, second = client._flight.allocate_pn(), client._flight.allocate_pn()
        payloads = [encode_frames([MessageFrame(0, Delivery.RELIABLE_ORDERED, i, b"m%d" % i)])
                    for i in range(2)]
        encoder = FecEncoder(k=2, m=1, first_group_id=3)
        encoder.add(first, payloads[0])
        encoder.add(second, payloads[1])
        (shard,) = encoder.close(1)
        _, data = sealed_by(client, payloads[0], flags, pn=first)
        server.receive_datagram(data, CLIENT_ADDR, sim.now)
        parity = ParityFrame(shard.group_id, 1, 0, (first & MASK, second & MASK), shard.shard)
        _, carrier = sealed_by(client, [parity], ACK | FEC)
        server.receive_datagram(carrier, CLIENT_ADDR, sim.now)
        assert server.stats.fec_recovered == rebuilt


# ----------------------------------------------------------------------- the stall clock


def test_a_peer_that_owes_nothing_is_never_stalled() -> None:
    sim, client, server, _ = connect(config(stall_timeout=2.0))
    server.send(b"x")
    sim.flush()
    sim.run(until=sim.now + 0.5)  # acknowledged: nothing in flight
    for i in range(10):  # the client talks on for 5 s, the server only acknowledges
        client.send(b"y%d" % i)
        sim.flush()
        sim.run(until=sim.now + 0.5)
    assert server.state is ConnectionState.ESTABLISHED
    assert client.state is ConnectionState.ESTABLISHED


def test_the_stall_clock_restarts_at_the_last_progress() -> None:
    # the client acknowledges the first of two packets, then keeps talking without ever
    # acknowledging the second: stalled stall_timeout after that acknowledgement, not after
    # the second's retransmission
    sim, client, server, wire = connect(config(stall_timeout=5.0))
    wire.hook = lambda data, src, dst, now: src == SERVER_ADDR  # nothing reaches the client
    server.send(b"a")
    sim.flush()
    first = decode_header(wire.received_by[CLIENT_ADDR][-1])[3]
    sim.run(until=sim.now + 0.01)
    server.send(b"b")
    sim.flush()
    sim.run(until=sim.now + 0.04)
    progress_at = sim.now
    _, partial = sealed_by(client, [PingFrame()], ack32=first + 1)
    server.receive_datagram(partial, CLIENT_ADDR, progress_at)
    for i in range(1, 8):
        _, ping = sealed_by(client, [PingFrame()], ack32=first + 1)
        wire.inject(ping, CLIENT_ADDR, SERVER_ADDR, progress_at + i)
    sim.run(until=progress_at + 8.0, condition=lambda: server.state is ConnectionState.CLOSED)
    assert server.close_code == CloseCode.STALLED
    assert server.close_reason == "peer acknowledged nothing for 5 s"
    assert abs(sim.now - (progress_at + 5.0)) < 1e-9


def test_a_keepalive_arrives_as_an_event_with_its_id() -> None:
    sim, client, server, _ = connect(config())
    kid = client.send_keepalive()
    out = client.datagrams_to_send(sim.now)
    drain(server)
    for datagram, _ in out:
        server.receive_datagram(datagram, CLIENT_ADDR, sim.now)
    assert [e.keepalive_id for e in drain(server) if isinstance(e, KeepaliveReceived)] == [kid]


def test_a_packet_rebuilt_when_the_rest_of_its_group_arrives_after_the_parity() -> None:
    """The parity of a two-packet group comes first, one packet is lost, and the other data
    packet (PSH) arrives last: it completes the group, and the lost one is rebuilt from it."""
    sim, client, server, _ = connect(config(fec=(10, 3)))
    drain(server)
    lost_pn, last_pn, carrier = (client._flight.allocate_pn() for _ in range(3))
    lost = encode_frames([MessageFrame(0, Delivery.RELIABLE_UNORDERED, 0, b"rebuilt")])
    last = encode_frames([MessageFrame(0, Delivery.RELIABLE_UNORDERED, 1, b"arrived")])
    encoder = FecEncoder(k=2, m=1, first_group_id=9)
    encoder.add(lost_pn, lost)
    encoder.add(last_pn, last)
    (shard,) = encoder.close(1)
    parity = ParityFrame(shard.group_id, shard.m, shard.index,
                         tuple(s & MASK for s in shard.data_seqs), shard.shard)
    _, first = sealed_by(client, [parity], ACK | FEC, pn=carrier)
    server.receive_datagram(first, CLIENT_ADDR, sim.now)
    _, data = sealed_by(client, last, ACK | PSH, pn=last_pn)
    server.receive_datagram(data, CLIENT_ADDR, sim.now + 0.001)
    assert server.stats.fec_recovered == 1
    assert sorted(e.data for e in drain(server) if isinstance(e, MessageReceived)) == [
        b"arrived", b"rebuilt"]


@pytest.mark.parametrize(("a", "b", "same"), [
    (("10.0.0.1", 5000), ("10.0.0.1", 5000), True),
    (("10.0.0.1", 5000), ("10.0.0.1", 5001), False),
    (("10.0.0.1", 5000), ("10.0.0.2", 5000), False),
    (("::1", 5000), ("::1", 5000, 0, 0), False),
    (("::1", 5000, 0, 0), ("::1", 5000), False),
    (("fe80::1", 5000, 0, 3), ("fe80::1", 5000, 77, 3), True),  # the flow label is no path
    (("fe80::1", 5000, 0, 3), ("fe80::1", 5000, 0, 4), False),  # another zone is
])
def test_one_path_is_one_host_port_and_ipv6_zone(a: tuple[object, ...], b: tuple[object, ...],
                                                  same: bool) -> None:
    assert _same_address(a, b) is same


# ---------------------------------------------------------- the handshake's plaintext replies


@pytest.mark.parametrize("flags", [URG, SYN, ACK, SYN | FIN])
def test_a_plaintext_reply_that_is_neither_retry_nor_hello_nor_reject_is_unexpected(
        flags: int) -> None:
    """While the SYN waits for its answer, only SYN|URG (a retry), SYN|ACK (the server's
    hello) and RST (a reject) are answers: URG or SYN alone, or anything else, is dropped as
    unexpected, the handshake untouched."""
    client = Connection.client(SERVER_ADDR, ALICE, 0.0, configuration=config())
    client.datagrams_to_send(0.0)
    reply = encode_packet(Packet(flags, client.connection_id, 0, 0, (), bytes(64)))
    client.receive_datagram(reply, SERVER_ADDR, 0.01)
    assert client.stats.drops == {"unexpected_handshake": 1}
    assert client.state is ConnectionState.SYN_SENT
    assert client.datagrams_to_send(0.01) == []


def test_a_retry_sends_the_next_syn_at_once_and_restarts_its_resend_clock() -> None:
    """The server's retry cookie (a source over its rate, PROTOCOL.md 10.3) is answered at
    once by a new SYN carrying it, counted as sent, and resent one handshake interval after
    that, not after the first SYN."""
    cfg = config()
    listener = Listener(ServerHandshake(bytes(range(1, 33)), ServerParams(None, 10.0, 60.0)),
                        cfg, per_source_rate=1e-6, per_source_burst=1)
    source = ("198.51.100.7", 5000)
    first = Connection.client(SERVER_ADDR, ALICE, 0.0, configuration=cfg)
    listener.receive_datagram(first.datagrams_to_send(0.0)[0][0], source, 0.0, 0)  # the burst
    client = Connection.client(SERVER_ADDR, ALICE, 0.0, configuration=cfg)
    (syn, _), = client.datagrams_to_send(0.0)
    (retry, _), = listener.receive_datagram(syn, source, 0.2, 0)[0]
    assert decode_header(retry)[1] == SYN | URG
    sent = client.stats.bytes_sent
    client.receive_datagram(retry, SERVER_ADDR, 0.4)
    (again, _), = client.datagrams_to_send(0.4)
    assert client.stats.bytes_sent == sent + len(again)
    assert client.get_timer() == 0.4 + cfg.handshake_timeout / cfg.handshake_tries
    (hello, _), = listener.receive_datagram(again, source, 0.5, 0)[0]  # proven: served
    client.receive_datagram(hello, SERVER_ADDR, 0.6)
    assert client.state is ConnectionState.AWAIT_ACCEPT


# ------------------------------------------------------------------ the configured receive side


def test_the_receive_window_is_the_configured_one() -> None:
    """The receive window is the configured one (64 here, not the default 256): a packet 63
    past the cumulative point leaves it where it is; one 64 past slides the window (every
    packet below it is taken as settled at the sender, 6.4), moving the acknowledgement."""
    sim, client, server, _ = connect(config(window=64))
    now = sim.now
    cumulative, _ = server._acks.ack_fields()  # the next packet number the server expects
    _, inside = sealed_by(client, [PingFrame()], pn=cumulative + 63)
    server.receive_datagram(inside, CLIENT_ADDR, now)
    assert server._acks.ack_fields()[0] == cumulative
    _, outside = sealed_by(client, [PingFrame()], pn=cumulative + 64)
    server.receive_datagram(outside, CLIENT_ADDR, now)
    assert server._acks.window_slides == 1
    assert server._acks.ack_fields()[0] == cumulative + 1


def test_an_owed_ack_waits_the_configured_max_ack_delay() -> None:
    sim, client, server, _ = connect(config(max_ack_delay=0.1))
    now = sim.now
    assert server.get_timer() != now + 0.1
    _, datagram = sealed_by(client, [PingFrame()])
    server.receive_datagram(datagram, CLIENT_ADDR, now)
    assert server.get_timer() == now + 0.1
    assert server.datagrams_to_send(now) == []  # one ack-eliciting packet: the ACK waits

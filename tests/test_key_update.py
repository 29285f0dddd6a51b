"""Key update (docs/PROTOCOL.md 5.6): each direction moves to the next key generation before
its per-key packet limit, without losing or delaying a packet, old keys kept briefly for
reordered packets, nonces never reused across generations."""

from __future__ import annotations

import pytest

from quantum.config import KEY_LIMIT_HEADROOM, QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.crypto import PacketProtection, ProtectionError
from quantum.events import ConnectionClosed, MessageReceived
from quantum.frames import Delivery
from quantum.handshake import Credentials
from quantum.keyupdate import PreviousKeys, open_other_phase
from quantum.packet import KEY_PHASE, decode_header
from quantum.simulation import (
    CLIENT_ADDR,
    LinkProfile,
    SimulatedNetwork,
    SimulatedServer,
    Simulation,
)

ALICE = Credentials(user_id="alice")
SECRET = bytes(range(32))
HEADER = bytes(32)


def _sim(config: QuantumConfiguration, profile: LinkProfile, seed: int = 3) -> Simulation:
    return Simulation(SimulatedNetwork(profile, seed), SimulatedServer.create(config))


def _server_conn(sim: Simulation) -> Connection:
    return next(iter(sim.server.connections.values()))


def _assert_updated_in_step(client: Connection, server: Connection, at_least: int) -> None:
    """Each side made `at_least` key updates and each receiver followed its peer's sender;
    reordered packets of a previous generation still opened (none failed authentication)."""
    client_send, client_recv = client.key_generations
    server_send, server_recv = server.key_generations
    assert client_send >= at_least and server_send >= at_least
    assert (client_send, server_send) == (server_recv, client_recv)
    assert client.stats.drops.get("auth_failed", 0) == 0
    assert server.stats.drops.get("auth_failed", 0) == 0


@pytest.mark.parametrize("fec", [None, (4, 2)], ids=["no-fec", "fec"])
def test_three_times_the_per_key_limit_flows_without_interruption(
        fec: tuple[int, int] | None) -> None:
    # the smallest key limit the configuration allows, updated every 600 packets; each side
    # sends well over 3 x 2048 packets on a lossy, reordering path
    config = QuantumConfiguration(keepalive_interval=None, packets_per_key=2048,
                                  key_update_packets=600, fec=fec)
    sim = _sim(config, LinkProfile(delay=0.01, jitter=0.004, loss=0.02))
    client = sim.add_client(ALICE, configuration=config)
    sim.run(until=5.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    server = _server_conn(sim)
    # each message its own packet (two do not fit one): 7,000 packets each way at least
    up = [i.to_bytes(4, "big") * 175 for i in range(6400)]
    down = [i.to_bytes(4, "big") * 170 for i in range(6400)]
    for start in range(0, len(up), 100):
        for i in range(start, start + 100):
            client.send(up[i])
            server.send(down[i])
        sim.flush()
        sim.run(until=sim.now + 0.05)
    received_up: list[bytes] = []
    received_down: list[bytes] = []
    seen = [0, 0]  # events looked at so far, server's and client's: the check is incremental

    def all_arrived() -> bool:
        server_events, client_events = sim.server.events, sim.client_events[CLIENT_ADDR]
        for _, e in server_events[seen[0]:]:
            if isinstance(e, MessageReceived):
                received_up.append(e.data)
        for e in client_events[seen[1]:]:
            if isinstance(e, MessageReceived):
                received_down.append(e.data)
        seen[:] = [len(server_events), len(client_events)]
        return len(received_up) >= len(up) and len(received_down) >= len(down)

    sim.run(until=sim.now + 30.0, condition=all_arrived)
    all_arrived()
    assert received_up == up and received_down == down  # exactly once, in order
    assert client.state is server.state is ConnectionState.ESTABLISHED
    assert not [e for _, e in sim.server.events if isinstance(e, ConnectionClosed)]
    assert client._flight.next_pn > 3 * 2048 and server._flight.next_pn > 3 * 2048
    _assert_updated_in_step(client, server, at_least=10)


def test_no_update_before_the_current_generation_is_acknowledged() -> None:
    # the peer never acknowledges: the sender must not move on (the peer could fall two
    # generations behind) and ends with KEYS_EXHAUSTED at the limit instead
    config = QuantumConfiguration(keepalive_interval=None, packets_per_key=2048,
                                  key_update_packets=100, fec=None)
    sim = _sim(config, LinkProfile(delay=0.01))
    client = sim.add_client(ALICE, configuration=config)
    sim.run(until=5.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    generation = client.key_generations[0]
    acked = client._flight.largest_acked
    for i in range(300):
        client.send(i.to_bytes(4, "big"))
        client.datagrams_to_send(sim.now)  # sent into the void: nothing comes back
    assert client._flight.largest_acked == acked
    seal = client._seal
    assert seal is not None
    # at most one update: to the generation whose packets are not acknowledged yet
    assert client.key_generations[0] <= generation + 1
    assert seal.first_pn > acked


def _pair() -> tuple[PacketProtection, PacketProtection]:
    return PacketProtection(SECRET), PacketProtection(SECRET)


def test_the_receiver_follows_the_phase_bit_and_keeps_the_old_keys_briefly() -> None:
    sender, receiver = _pair()
    assert receiver.open(1, HEADER, sender.seal(1, HEADER, b"g0")) == b"g0"
    late = sender.seal(2, HEADER, b"late g0")  # reordered: arrives after the update
    sender1 = sender.next()
    header1 = bytes(5) + bytes((KEY_PHASE,)) + bytes(26)
    following, body = open_other_phase(receiver, None, 3, header1,
                                       sender1.seal(3, header1, b"g1"), now=10.0)
    assert body == b"g1" and following is not None and following.generation == 1
    previous = PreviousKeys(receiver, until=10.3)
    # the late generation-0 packet: its number is below the first generation-1 packet's
    assert open_other_phase(following, previous, 2, HEADER, late, now=10.2) == (None, b"late g0")
    with pytest.raises(ProtectionError, match="discarded"):
        open_other_phase(following, previous, 2, HEADER, late, now=10.31)
    assert not receiver.loaded  # the discarded generation's cipher is gone


def test_a_forged_phase_flip_changes_nothing() -> None:
    sender, receiver = _pair()
    receiver.open(1, HEADER, sender.seal(1, HEADER, b"x"))
    with pytest.raises(ProtectionError):
        open_other_phase(receiver, None, 5, HEADER, bytes(40), now=1.0)
    assert receiver.generation == 0
    # forged flips cost one key derivation in all, not one each: the next generation is kept
    candidate = receiver.next()
    for pn in range(6, 50):
        with pytest.raises(ProtectionError):
            open_other_phase(receiver, None, pn, HEADER, bytes(40), now=1.0)
    assert receiver.next() is candidate and candidate.first_pn == -1
    receiver.release()  # a hibernating connection drops the candidate's cipher too
    assert not candidate.loaded
    # the real generation-0 traffic goes on
    assert receiver.open(6, HEADER, sender.seal(6, HEADER, b"y")) == b"y"


def test_generations_never_share_a_nonce_key_pair() -> None:
    gen0 = PacketProtection(SECRET)
    gen1 = gen0.next()
    # same packet number, same plaintext: different ciphertexts (different key and iv)
    assert gen0.seal(7, HEADER, b"same") != gen1.seal(7, HEADER, b"same")
    assert (gen0.phase_flag, gen1.phase_flag, gen1.next().phase_flag) == (0, KEY_PHASE, 0)


def test_key_update_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="key_update_packets"):
        QuantumConfiguration(packets_per_key=4096, key_update_packets=3072)
    assert QuantumConfiguration(packets_per_key=4096, key_update_packets=3071)
    assert QuantumConfiguration(packets_per_key=4096).key_update_interval == 1536
    assert QuantumConfiguration(key_update=False).key_update_interval is None


def _established(config: QuantumConfiguration,
                 profile: LinkProfile | None = None) -> tuple[Simulation, Connection,
                                                                Connection]:
    sim = _sim(config, profile or LinkProfile(delay=0.01))
    client = sim.add_client(ALICE, configuration=config)
    sim.run(until=5.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    sim.run(until=sim.now + 0.5)  # the handshake's last packets are acknowledged
    return sim, client, _server_conn(sim)


def _phase(datagram: bytes) -> int:
    return decode_header(datagram)[1] & KEY_PHASE


def test_keys_update_every_interval_both_ways_on_a_lossy_reordering_path() -> None:
    """The short version of the three-limits run: an update every 20 packets, each side
    following the other's, every message once and in order."""
    config = QuantumConfiguration(keepalive_interval=None, packets_per_key=2048,
                                  key_update_packets=20, fec=None)
    sim, client, server = _established(
        config, LinkProfile(delay=0.01, jitter=0.004, loss=0.02))
    up = [b"u%d" % i + bytes(600) for i in range(300)]
    down = [b"d%d" % i + bytes(600) for i in range(300)]
    for start in range(0, 300, 30):
        for i in range(start, start + 30):
            client.send(up[i])
            server.send(down[i])
        sim.flush()
        sim.run(until=sim.now + 0.05)
    sim.run(until=sim.now + 10.0)
    assert [e.data for _, e in sim.server.events if isinstance(e, MessageReceived)] == up
    assert [e.data for e in sim.client_events[CLIENT_ADDR]
            if isinstance(e, MessageReceived)] == down
    _assert_updated_in_step(client, server, at_least=5)


def test_the_sender_moves_on_only_once_the_peer_acknowledged_the_current_generation() -> None:
    """PROTOCOL.md 5.6 at its boundary: at the update point, no update while the largest
    acknowledged pn is below the generation's first; with that first one acknowledged, the
    next generation seals from this pn, the next update point is an interval later and the
    new key's graceful close its packet limit (less the headroom) later."""
    config = QuantumConfiguration(keepalive_interval=None, packets_per_key=2048,
                                  key_update_packets=50, fec=None)
    _, client, _ = _established(config)
    seal = client._seal
    assert seal is not None and client.key_generations[0] == 0
    pn = client._flight.next_pn
    client._flight._largest_acked = seal.first_pn - 1
    assert client._update_send_keys(pn) is seal
    assert client._update_at_pn == pn + 1 and client._seal is seal  # asked again next packet
    client._flight._largest_acked = seal.first_pn
    following = client._update_send_keys(pn + 1)
    assert following is client._seal and following is not seal
    assert client.key_generations[0] == 1
    assert client._update_at_pn == pn + 1 + 50
    assert client._close_at_pn == pn + 1 + 2048 - KEY_LIMIT_HEADROOM


def test_a_reordered_packet_of_the_old_generation_opens_for_three_base_rtos_only() -> None:
    """The receiver keeps the previous generation's keys for 3 x its base RTO after the
    peer's first packet of the next one (PROTOCOL.md 5.6): a packet of the old generation
    arriving just before then is delivered, one just after is dropped."""
    config = QuantumConfiguration(keepalive_interval=None, packets_per_key=2048,
                                  key_update_packets=10, fec=None)
    sim, client, server = _established(config)
    now = sim.now
    held: list[bytes] = []
    first_new = None
    for i in range(40):  # nothing is delivered: the client's generation flips once
        client.send(b"m%d" % i, mode=Delivery.RELIABLE_UNORDERED)  # each delivered as it comes
        for datagram, _ in client.datagrams_to_send(now):
            if held and _phase(datagram) != _phase(held[0]):
                first_new = datagram
                break
            held.append(datagram)
        if first_new is not None:
            break
    assert first_new is not None and len(held) >= 2
    generation = server.key_generations[1]
    server.receive_datagram(first_new, CLIENT_ADDR, now)
    assert server.key_generations[1] == generation + 1  # the server followed
    window = 3 * server._flight.rtt.base_rto
    server.receive_datagram(held[-1], CLIENT_ADDR, now + window - 0.001)
    server.receive_datagram(held[-2], CLIENT_ADDR, now + window + 0.001)
    delivered = []
    while (event := server.next_event()) is not None:
        if isinstance(event, MessageReceived):
            delivered.append(event.data)
    # the new generation's packet, and the old one just in time
    assert len(delivered) == 2 and delivered[1] == b"m%d" % (len(held) - 1)
    assert server.stats.drops.get("auth_failed", 0) == 1  # the one too late

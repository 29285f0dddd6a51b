"""What an idle connection holds: the containers a connection may need (its event and
control-frame queues, the receive side's SACK ranges, the send side's largest SACKed pns, the
drop counters) exist only while they hold something, and everything still works once they
are made, emptied and made again."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from quantum.connection import Connection, ConnectionState
from quantum.events import KeepaliveAcknowledged, KeepaliveReceived, MessageReceived
from quantum.handshake import Credentials
from quantum.reliability import ReceiveTracker, SendTracker, SentPacket
from quantum.simulation import CLIENT_ADDR, LinkProfile, Simulation
from tests.test_connection import ALICE, make_sim, server_conn

OTHER_ADDR = ("192.0.2.7", 40001)


def _established(sim: Simulation) -> tuple[Connection, Connection]:
    client = sim.add_client(ALICE)
    sim.run(until=2.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    assert client.state is ConnectionState.ESTABLISHED
    return client, server_conn(sim)


def _empty_containers(conn: Connection) -> dict[int, str]:
    """The empty lists, dicts and sets reachable from `conn` (not through the configuration,
    which the server's connections share): object id -> attribute path."""
    found: dict[int, str] = {}
    seen = {id(conn.config)}
    stack: list[tuple[Any, str]] = [(conn, "conn")]
    while stack:
        obj, path = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        if isinstance(obj, (list, dict, set)) and not obj:
            found[id(obj)] = path
            continue
        names = [n for cls in type(obj).__mro__
                 for n in (*getattr(cls, "__slots__", ()), *getattr(cls, "__mypyc_attrs__", ()))]
        named = False
        for name in names:
            try:
                value = getattr(obj, name)
            except AttributeError:
                continue
            named = True
            stack.append((value, f"{path}.{name}"))
        if not named:
            stack.extend((ref, f"{path}[]") for ref in gc.get_referents(obj))
    return found


@pytest.mark.parametrize("fec", [True, False])
def test_a_quiet_connection_holds_no_empty_container_of_its_own(fec: bool) -> None:
    """Handshake, a keepalive round trip, a path MTU search to its end, hibernation: what is
    left of a server connection holds no empty list, dict or set of its own (shared ones,
    reachable from every connection, cost nothing per connection) but the ones kept on
    purpose."""
    sim = make_sim()
    credentials = ALICE if fec else Credentials(user_id="alice", fec=None)
    client = sim.add_client(credentials)
    other_client = sim.add_client(credentials, addr=OTHER_ADDR)
    sim.run(until=2.0, condition=lambda: other_client.state is ConnectionState.ESTABLISHED
            and client.state is ConnectionState.ESTABLISHED)
    server, other = (next(c for c in sim.server.connections.values() if c.peer_addr == addr)
                     for addr in (CLIENT_ADDR, OTHER_ADDR))
    assert (server._fec is not None) is fec
    client.send_keepalive()
    sim.run(until=sim.now + 1.0)
    for _, event in sim.server.events:
        if isinstance(event, KeepaliveReceived):
            server.acknowledge_keepalive(event.keepalive_id, 60.0)
    sim.flush()
    sim.run(until=sim.now + 60.0)  # the keepalive's answer, the whole PMTU search
    assert any(isinstance(e, KeepaliveAcknowledged) for e in sim.client_events[CLIENT_ADDR])
    for conn in (server, other):
        conn.hibernate()
        assert conn.hibernating
    shared = _empty_containers(other)
    own = {path.rsplit(".", 1)[-1] for key, path in _empty_containers(server).items()
           if key not in shared}
    assert own == set(), own
    assert not server.stats.drops and not client.stats.drops


def test_event_and_control_queues_exist_only_while_they_hold_something() -> None:
    sim = make_sim()
    client, server = _established(sim)
    assert not isinstance(server._events, list) and not isinstance(server._control, list)
    for _ in range(3):  # three keepalives in one go: the queues hold several at once
        client.send_keepalive()
    assert isinstance(client._control, list) and len(client._control) == 3
    for data, _ in client.datagrams_to_send(sim.now):
        server.receive_datagram(data, CLIENT_ADDR, sim.now)
    assert not isinstance(client._control, list)  # all three left in one packet
    received = []
    while (event := server.next_event()) is not None:
        received.append(event)
        if isinstance(event, KeepaliveReceived):
            server.acknowledge_keepalive(event.keepalive_id, 60.0)
    assert [type(e) for e in received] == [KeepaliveReceived] * 3
    assert not isinstance(server._events, list)
    assert isinstance(server._control, list) and len(server._control) == 3
    sim.flush()
    sim.run(until=sim.now + 1.0)
    acked = [e for e in sim.client_events[CLIENT_ADDR] if isinstance(e, KeepaliveAcknowledged)]
    assert len(acked) == 3
    assert not isinstance(server._control, list) and not isinstance(server._events, list)


def test_messages_still_flow_after_the_queues_went_back_to_nothing() -> None:
    sim = make_sim(LinkProfile(loss=0.05))
    client, server = _established(sim)
    for round_ in range(3):
        for i in range(20):
            client.send(f"{round_}-{i}".encode())
        sim.run(until=sim.now + 10.0)
        assert not isinstance(server._events, list) and not isinstance(server._control, list)
    got = [e.data for c, e in sim.server.events if isinstance(e, MessageReceived)]
    assert got == [f"{r}-{i}".encode() for r in range(3) for i in range(20)]


def test_the_drop_counters_are_shared_read_only_until_the_first_drop() -> None:
    sim = make_sim()
    client, server = _established(sim)
    assert server.stats.drops == {} and client.stats.drops == {}
    with pytest.raises(TypeError):
        server.stats.drops["x"] = 1  # type: ignore[index]
    server.receive_datagram(b"\x00" * 5, CLIENT_ADDR, sim.now)  # too short for a header
    server.receive_datagram(b"\x00" * 5, CLIENT_ADDR, sim.now)
    assert server.stats.drops == {"malformed": 2}
    assert client.stats.drops == {}  # its own dict: nothing reached the other connection


def test_receive_ranges_exist_only_while_there_is_a_hole() -> None:
    tracker = ReceiveTracker()
    for pn in (1, 2, 3):
        tracker.on_received(pn, True, 0.0)
    assert tracker._starts is None and tracker.ranges == []
    tracker.on_received(6, True, 0.0)
    tracker.on_received(8, True, 0.0)
    assert tracker.ranges == [(6, 6), (8, 8)]
    assert tracker.ack_fields() == (4, [(8, 8), (6, 6)])
    tracker.on_received(4, True, 0.0)
    tracker.on_received(5, True, 0.0)  # joins 6: one hole left
    assert tracker.ranges == [(8, 8)] and tracker.cumulative == 7
    tracker.on_received(7, True, 0.0)  # the last hole closes
    assert tracker.cumulative == 9 and tracker._starts is None and tracker._ends is None
    assert tracker.ack_fields() == (9, [])
    tracker.on_received(11, True, 0.0)  # and a new one opens
    assert tracker.ranges == [(11, 11)]
    tracker.on_floor(12)  # the sender gave up on 9 and 10: 11 is passed too
    assert tracker.cumulative == 12 and tracker._starts is None
    assert tracker.check(11) == tracker.check(5)  # both too old


def _send(tracker: SendTracker, count: int) -> None:
    for _ in range(count):
        pn = tracker.allocate_pn()
        tracker.on_packet_sent(SentPacket(pn, 0.0, 1000, True, True, []))


def test_the_largest_sacked_pns_are_dropped_only_when_nothing_is_in_flight() -> None:
    tracker = SendTracker()
    assert tracker._top_acked is None
    _send(tracker, 6)
    assert tracker.on_ack(1, [(3, 4)], 0.1).lost == []  # two acked above 1 and 2
    assert tracker._top_acked is not None
    tracker.release_idle()  # 1, 2, 5, 6 in flight: kept, the third SACKed pn still counts
    assert tracker._top_acked is not None
    result = tracker.on_ack(1, [(3, 5)], 0.1)
    assert [p.pn for p in result.lost] == [1, 2]
    tracker.on_ack(7, [], 0.2)  # everything acknowledged
    tracker.release_idle()
    assert tracker._top_acked is None
    # nothing in flight: the empty dict every idle tracker shares, which stays empty
    other = SendTracker()
    assert tracker._outstanding is other._outstanding
    _send(other, 2)
    assert other.outstanding == 2 and tracker.outstanding == 0
    assert tracker.floor == tracker.next_pn == 7
    # fast retransmit works as before once they are made again
    _send(tracker, 5)  # 7..11
    assert tracker.on_ack(7, [(8, 9)], 0.3).lost == []
    assert [p.pn for p in tracker.on_ack(7, [(8, 10)], 0.3).lost] == [7]

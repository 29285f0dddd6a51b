"""The client and unauthenticated REJECTs (docs/PROTOCOL.md 10.2, 10.4).

A plaintext REJECT answers a SYN before any key exists, so anyone who saw the SYN could have
forged it. The client keeps trying while it has SYNs left to send, reports the REJECT that
answers its last one, and reports a remembered REJECT if the handshake then times out.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from quantum.client import ConnectError, connect
from quantum.config import QuantumConfiguration
from quantum.connection import Address, Connection, ConnectionState
from quantum.errors import CloseCode
from quantum.events import ConnectionClosed, HandshakeRejected
from quantum.frames import RejectFrame, encode_frames
from quantum.handshake import Credentials, ServerHandshake, ServerParams
from quantum.listener import Listener
from quantum.packet import Flags, Packet, decode_header, encode_packet

SERVER: Address = ("192.0.2.1", 9090)
ALICE = Credentials(user_id="alice", fec=None)
CONFIG = QuantumConfiguration(keepalive_interval=None, fec=None)  # 5 SYNs, 1 s apart


def reject_for(client: Connection, code: int, reason: str = "go away") -> bytes:
    payload = encode_frames([RejectFrame(code, reason)])
    return encode_packet(Packet(Flags.RST, client.connection_id, 0, 0, (), payload))


def events(conn: Connection) -> list[object]:
    return list(iter(conn.next_event, None))


def test_a_forged_reject_with_tries_left_does_not_end_the_handshake() -> None:
    listener = Listener(ServerHandshake(bytes(range(1, 33)), ServerParams(None, 10.0, 60.0)),
                        CONFIG)
    client = Connection.client(SERVER, ALICE, 0.0, configuration=CONFIG)
    syn = client.datagrams_to_send(0.0)[0][0]
    client.receive_datagram(reject_for(client, CloseCode.RATE_LIMITED, "forged"), SERVER, 0.01)
    assert client.state is ConnectionState.SYN_SENT
    assert client.handshake_reject == (CloseCode.RATE_LIMITED, "forged")
    assert events(client) == []
    assert client.stats.drops == {"unauthenticated_reject": 1}
    # the real server's answer still completes the handshake
    (reply, _), = listener.receive_datagram(syn, ("198.51.100.1", 5000), 0.02, 0)[0]
    client.receive_datagram(reply, SERVER, 0.03)
    assert client.state is ConnectionState.AWAIT_ACCEPT


def test_the_reject_answering_the_last_syn_ends_the_handshake_with_its_code() -> None:
    client = Connection.client(SERVER, ALICE, 0.0, configuration=CONFIG)
    sent = [client.datagrams_to_send(0.0)]
    for second in range(1, CONFIG.handshake_tries):
        client.receive_datagram(reject_for(client, CloseCode.SERVER_FULL), SERVER, second - 0.5)
        client.handle_timer(float(second))
        sent.append(client.datagrams_to_send(float(second)))
    assert [len(out) for out in sent] == [1] * CONFIG.handshake_tries  # every SYN went out
    assert client.state is ConnectionState.SYN_SENT
    client.receive_datagram(reject_for(client, CloseCode.SERVER_FULL, "server full"), SERVER,
                            4.5)
    assert client.state is ConnectionState.CLOSED
    happened = events(client)
    assert [(e.code, e.reason) for e in happened if isinstance(e, HandshakeRejected)] == [
        (CloseCode.SERVER_FULL, "server full")]
    closed = [e for e in happened if isinstance(e, ConnectionClosed)]
    assert [(c.code, c.reason, c.by_peer) for c in closed] == [
        (CloseCode.SERVER_FULL, "server full", True)]
    assert (client.close_code, client.close_reason) == (CloseCode.SERVER_FULL, "server full")


def test_a_reject_then_silence_times_out_remembering_the_reject() -> None:
    client = Connection.client(SERVER, ALICE, 0.0, configuration=CONFIG)
    client.receive_datagram(reject_for(client, CloseCode.RATE_LIMITED, "slow down"), SERVER,
                            0.1)
    while client.state is not ConnectionState.CLOSED:
        at = client.get_timer()
        assert at is not None
        client.handle_timer(at)
    closed = [e for e in events(client) if isinstance(e, ConnectionClosed)]
    assert [c.code for c in closed] == [CloseCode.HANDSHAKE_TIMEOUT]
    assert client.handshake_reject == (CloseCode.RATE_LIMITED, "slow down")


def test_a_reject_with_a_code_this_version_does_not_know_is_reported_not_raised() -> None:
    client = Connection.client(SERVER, ALICE, 0.0, configuration=CONFIG)
    assert client._opening is not None
    client._opening.tries = CONFIG.handshake_tries  # as if this answered the last SYN
    client.receive_datagram(reject_for(client, 999, "from a newer server"), SERVER, 0.1)
    assert client.state is ConnectionState.CLOSED
    rejected = [e for e in events(client) if isinstance(e, HandshakeRejected)]
    assert [(r.code, r.reason) for r in rejected] == [(999, "from a newer server")]


@pytest.mark.parametrize("answered", ["every SYN", "the first SYN"])
async def test_connect_keeps_trying_after_a_reject_and_still_reports_it(answered: str) -> None:
    """Over real UDP: a 'server' that answers SYNs with a plaintext REJECT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    loop = asyncio.get_running_loop()
    syns = 0

    async def refuse() -> None:
        nonlocal syns
        while True:
            data, addr = await loop.sock_recvfrom(sock, 2048)
            syns += 1
            if answered == "the first SYN" and syns > 1:
                continue
            payload = encode_frames([RejectFrame(CloseCode.RATE_LIMITED, "too many")])
            reject = Packet(Flags.RST, decode_header(data)[2], 0, 0, (), payload)
            await loop.sock_sendto(sock, encode_packet(reject), addr)

    server = loop.create_task(refuse())
    config = QuantumConfiguration(keepalive_interval=None, handshake_timeout=1.0,
                                  handshake_tries=4)
    try:
        with pytest.raises(ConnectError) as info:
            await asyncio.wait_for(connect("127.0.0.1", port, user_id="alice",
                                           configuration=config), timeout=5)
    finally:
        server.cancel()
        sock.close()
    assert syns == 4  # it did not give up on the first, unauthenticated, answer
    assert info.value.code == CloseCode.RATE_LIMITED
    assert "too many" in info.value.reason
    if answered == "the first SYN":
        assert "timed out" in info.value.reason


def test_a_client_offering_no_cipher_of_the_server_ends_with_cipher_not_supported() -> None:
    listener = Listener(ServerHandshake(bytes(range(1, 33)), ServerParams(None, 10.0, 60.0),
                                        ciphers=("aes-256-gcm",)), CONFIG)
    config = QuantumConfiguration(keepalive_interval=None, fec=None,
                                  ciphers=("chacha20-poly1305",))
    client = Connection.client(SERVER, ALICE, 0.0, configuration=config)
    for second in range(config.handshake_tries):
        (syn, _), = client.datagrams_to_send(float(second))
        (reply, _), = listener.receive_datagram(syn, ("198.51.100.1", 5000), second + 0.01, 0)[0]
        assert len(reply) < len(syn)  # a plaintext REJECT, smaller than the hello
        client.receive_datagram(reply, SERVER, second + 0.02)
        if client.state is ConnectionState.CLOSED:
            break
        client.handle_timer(second + 1.0)
    assert second == config.handshake_tries - 1  # unauthenticated: believed at the last SYN
    assert client.state is ConnectionState.CLOSED
    closed = [e for e in events(client) if isinstance(e, ConnectionClosed)]
    assert [c.code for c in closed] == [CloseCode.CIPHER_NOT_SUPPORTED]
    assert listener.stats.rejected == {"cipher_not_supported": config.handshake_tries}
    assert listener.stats.handshakes_started == 0  # no Diffie-Hellman was spent

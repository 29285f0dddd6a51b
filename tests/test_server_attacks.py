"""Issue 11's attacks on the real server, as the attacker ran them: against the echo example in
its own process (compiled, where the extension is built), over real UDP on loopback.

The attacker's client is a sans-I/O `Connection` on a socket the test controls, so it can copy
its own datagrams (as an on-path observer would) and replay them from another socket, the
"victim", whose received bytes the test counts. A frozen server cannot hang the test: it runs
in a subprocess, and the test fails on a timeout.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from quantum.client import connect
from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.errors import CloseCode
from quantum.events import ConnectionClosed, Event, MessageReceived
from quantum.handshake import Credentials
from quantum.migration import AMPLIFICATION
from quantum.packet import HEADER_SIZE, build_header, decode_header, split_body
from quantum.serial import expand
from tests.test_server import HOST, client_config

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"ready on [\d.]+:(?P<port>\d+) .* public-key=(?P<public>\S+)")
Address = tuple[str, int]


@asynccontextmanager
async def echo_server(tmp_path: Path, *flags: str, script: str = "examples/echo_server.py"
                      ) -> AsyncIterator[tuple[int, str]]:
    """examples/echo_server.py (or `script`) in its own process: (port, public key)."""
    env = {k: v for k, v in os.environ.items() if k != "QUANTUM_KEY_FILE"}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, script, "--host", HOST, "--port", "0",
        "--allow-anonymous", "--key-file", str(tmp_path / "server.key"), *flags,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        ready = READY.search(line)
        assert ready is not None, f"no ready line, got {line!r}"
        yield int(ready["port"]), ready["public"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class RawClient(asyncio.DatagramProtocol):
    """A sans-I/O client connection on a socket of the test's own; `outgoing` may rewrite,
    copy or swallow each datagram before it leaves (return None to swallow)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.events: list[Event] = []
        self.outgoing: Callable[[bytes], bytes | None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    async def start(cls, port: int, public_key: str, user: str = "attacker",
                    config: QuantumConfiguration | None = None) -> RawClient:
        loop = asyncio.get_running_loop()
        conn = Connection.client((HOST, port), Credentials(user_id=user), loop.time(),
                                 configuration=config or QuantumConfiguration(
                                     keepalive_interval=None, idle_timeout=60.0),
                                 server_key=public_key)
        _, protocol = await loop.create_datagram_endpoint(lambda: cls(conn),
                                                          local_addr=(HOST, 0))
        protocol.flush()
        deadline = time.monotonic() + 10
        while conn.state is not ConnectionState.ESTABLISHED:
            assert time.monotonic() < deadline, "handshake did not complete"
            await asyncio.sleep(0.01)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.conn.receive_datagram(data, addr, self.loop.time())
        self.flush()

    def flush(self) -> None:
        conn, transport = self.conn, self.transport
        assert transport is not None
        while (event := conn.next_event()) is not None:
            self.events.append(event)
        for data, addr in conn.datagrams_to_send(self.loop.time()):
            out = data if self.outgoing is None else self.outgoing(data)
            if out is not None:
                transport.sendto(out, addr)
        if self._timer is not None:
            self._timer.cancel()
        at = conn.get_timer()
        self._timer = None if at is None else self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.conn.handle_timer(self.loop.time())
        self.flush()

    def received(self) -> list[bytes]:
        return [e.data for e in self.events if isinstance(e, MessageReceived)]


class Victim(asyncio.DatagramProtocol):
    """The address the attacker spoofs: counts what reaches it."""

    def __init__(self) -> None:
        self.received = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.received += len(data)


async def victim_socket() -> Victim:
    loop = asyncio.get_running_loop()
    _, victim = await loop.create_datagram_endpoint(Victim, local_addr=(HOST, 0))
    return victim


async def responsive(port: int, public_key: str) -> None:
    """A newcomer can still connect and get a heartbeat answered, within 5 s."""
    client = await asyncio.wait_for(
        connect(HOST, port, user_id="newcomer", server_key=public_key,
                configuration=client_config()), 5.0)
    assert await asyncio.wait_for(client.heartbeat(), 5.0) is not None
    await client.close()


async def test_a_raced_replay_from_a_spoofed_source_during_a_download(tmp_path: Path) -> None:
    """Before: the server froze for good (its timer loop re-fired one entry forever), and the
    victim received application data. Now: the server keeps serving everyone, the download
    completes, and the victim gets only challenges, at most 3x what it 'sent'."""
    async with echo_server(tmp_path, script="tests/apps/download_server.py") as (port, key):
        client = await RawClient.start(port, key)
        victim = await victim_socket()
        assert victim.transport is not None
        count, size = 400, 5000  # 2 MB queued at once
        client.conn.send(f"get {count} {size}".encode())
        client.flush()
        replayed: list[int] = []

        def race(data: bytes) -> bytes | None:
            # mid-download, the attacker copies a few of the client's pure ACKs (header, tag
            # and SACK blocks only) and delivers each first, from the victim's address
            if (len(replayed) < 5 and len(client.received()) > 20
                    and decode_header(data)[5] == 0):
                replayed.append(len(data))
                victim.transport.sendto(data, (HOST, port))  # type: ignore[union-attr]
                client.loop.call_later(0.02, client.transport.sendto,  # type: ignore[union-attr]
                                       data, (HOST, port))
                return None
            return data

        client.outgoing = race
        deadline = time.monotonic() + 20
        while len(client.received()) < count:
            assert time.monotonic() < deadline, (
                f"download stalled at {len(client.received())} of {count}")
            await asyncio.sleep(0.05)
        assert client.received() == [bytes([i % 251]) * size for i in range(count)]
        await responsive(port, key)
        assert len(replayed) == 5
        assert victim.received <= AMPLIFICATION * sum(replayed)


def never_acknowledge(conn: Connection, frozen_ack: int) -> Callable[[bytes], bytes | None]:
    """Rewrite each of `conn`'s datagrams as a client that acknowledges nothing past
    `frozen_ack` would send it: stuck cumulative ack, no SACK blocks, re-sealed with the
    client's own key (the test holds it)."""

    def rewrite(data: bytes) -> bytes | None:
        seal = conn._seal
        if seal is None or len(data) < HEADER_SIZE + 16:
            return data
        _, flags, cid, seq, _, payload_len = decode_header(data)
        pn = expand(seq, conn._flight.next_pn - 1)
        body = seal.open(pn, data[:HEADER_SIZE], data[HEADER_SIZE:])
        payload = split_body(body, payload_len)[1]
        header = build_header(flags, cid, seq, frozen_ack, len(payload))
        return header + seal.seal(pn, header, payload)

    return rewrite


async def test_an_upload_whose_echoes_are_never_acknowledged(tmp_path: Path) -> None:
    """Before: the server held every echoed byte (+263 MB for 256 MiB uploaded, no end). Now:
    at most the send buffer is held, the echo example closes the client when its buffer is
    full, and a client that keeps sending without acknowledging is closed as STALLED."""
    async with echo_server(tmp_path, "--max-send-buffer", str(1 << 20),
                           "--stall-timeout", "3") as (port, public_key):
        client = await RawClient.start(port, public_key)
        client.outgoing = never_acknowledge(client.conn, client.conn._acks.cumulative)
        chunk = bytes(4096)
        started = time.monotonic()
        while client.conn.state is not ConnectionState.CLOSED:
            assert time.monotonic() - started < 20, "the server never closed the client"
            if client.conn._outbox is None or client.conn._outbox.pending_bytes < 200_000:
                client.conn.send(chunk)
                client.flush()
            await asyncio.sleep(0.002)
        closed = next(e for e in client.events if isinstance(e, ConnectionClosed))
        assert closed.by_peer
        # the echo example closes it once its send buffer is full (FIN), or the stall timer
        # does (RST, STALLED), whichever comes first: either way the backlog had a bound
        assert closed.code in (CloseCode.NORMAL, CloseCode.STALLED), closed
        assert "send buffer full" in closed.reason or "acknowledged nothing" in closed.reason
        await responsive(port, public_key)


async def test_a_burst_larger_than_the_send_buffer_is_echoed_whole(tmp_path: Path) -> None:
    """The bound costs an honest client nothing: 8 MiB uploaded in one burst, echoed through a
    2 MiB send buffer (the echo example's backlog waits for `drain`)."""
    async with echo_server(tmp_path, "--max-send-buffer", str(2 << 20)) as (port, public_key):
        client = await asyncio.wait_for(connect(HOST, port, user_id="honest",
                                                server_key=public_key,
                                                configuration=client_config()), 5)
        blob = os.urandom(1 << 20)
        for _ in range(8):
            await client.send(blob)
        for _ in range(8):
            assert await asyncio.wait_for(client.recv(), 20) == blob
        await client.close()


async def test_replies_to_messages_that_arrived_together_leave_together() -> None:
    """Five small messages in one datagram: the echo application answers each from
    `on_message`, and the five replies share one datagram (flushed once per loop pass), where
    each reply used to leave in a datagram of its own."""
    from tests.test_server import Echo, running_server

    async with running_server(app=Echo()) as h:
        client = await RawClient.start(h.port, h.key.public_key_text)
        per_datagram: list[int] = []
        receive = client.datagram_received

        def counting(data: bytes, addr: Address) -> None:
            before = len(client.received())
            receive(data, addr)
            per_datagram.append(len(client.received()) - before)

        client.datagram_received = counting  # type: ignore[method-assign]
        for i in range(5):
            client.conn.send(b"ping %d" % i)
        client.flush()  # one datagram carries all five
        deadline = time.monotonic() + 5
        while len(client.received()) < 5:
            assert time.monotonic() < deadline, "the echoes did not come back"
            await asyncio.sleep(0.01)
        assert client.received() == [b"ping %d" % i for i in range(5)]
        assert [n for n in per_datagram if n] == [5]


async def test_a_broadcast_to_another_client_leaves_in_one_datagram() -> None:
    """A message from A makes the application send three to B (a chat room's fan-out): B's
    three arrive in one datagram, flushed at the end of the loop pass, not one each."""
    from server import Application, Peer
    from tests.test_server import running_server

    class FanOut(Application):
        def __init__(self) -> None:
            self.peers: list[Peer] = []

        def on_connect(self, peer: Peer) -> None:
            self.peers.append(peer)

        def on_message(self, peer: Peer, message: bytes, channel: int, mode: object) -> None:
            for other in self.peers:
                if other is not peer:
                    for i in range(3):
                        other.send(message + b" #%d" % i)

    async with running_server(app=FanOut()) as h:
        a = await RawClient.start(h.port, h.key.public_key_text, user="a")
        b = await RawClient.start(h.port, h.key.public_key_text, user="b")
        per_datagram: list[int] = []
        receive = b.datagram_received

        def counting(data: bytes, addr: Address) -> None:
            before = len(b.received())
            receive(data, addr)
            per_datagram.append(len(b.received()) - before)

        b.datagram_received = counting  # type: ignore[method-assign]
        a.conn.send(b"hello")
        a.flush()
        deadline = time.monotonic() + 5
        while len(b.received()) < 3:
            assert time.monotonic() < deadline, "the broadcast did not arrive"
            await asyncio.sleep(0.01)
        assert b.received() == [b"hello #0", b"hello #1", b"hello #2"]
        assert [n for n in per_datagram if n] == [3]

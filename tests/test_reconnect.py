"""Reconnect and resume with nothing lost, on the real server over real UDP (PROTOCOL.md 12.4,
README "Reconnecting"): a client whose path goes dark reconnects by itself and every reliable
message on every channel, both ways, arrives once and in order; a killed server loses its
sessions and the client gives up with a clear reason."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantum.auth import AnonymousAuthenticator
from quantum.client import QuantumClient, connect
from quantum.errors import CloseCode, ConnectionClosedError, SendBufferFull
from quantum.frames import Delivery
from quantum.keys import ServerKeyFile
from quantum.reconnect import (
    ConnectionEvent,
    DataLost,
    Disconnected,
    GaveUp,
    Reconnected,
    ReconnectPolicy,
)
from server import QuantumServer, ServerConfig
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from tests.relay import LossyRelay, RelayProfile
from tests.test_server import HOST, KEEPALIVE, Echo, client_config, running_server
from tests.test_server_cli import EPHEMERAL_SERVICES, cli_env

ROOT = Path(__file__).resolve().parent.parent
STREAMS = ((0, Delivery.RELIABLE_ORDERED), (1, Delivery.RELIABLE_UNORDERED),
           (2, Delivery.RELIABLE_ORDERED))
POLICY = ReconnectPolicy(initial_delay=0.05, max_delay=0.5, give_up_after=20.0)


async def _pump(client: QuantumClient, count: int, tag: bytes,
                sent: dict[int, list[bytes]]) -> None:
    """`count` messages round-robin over the streams, a little apart."""
    for i in range(count):
        channel, mode = STREAMS[i % len(STREAMS)]
        message = b"%s-%d-%d-" % (tag, channel, i) + bytes(i * 37 % 1500)
        await client.send(message, channel, mode)
        sent[channel].append(message)
        await asyncio.sleep(0.005)


async def _collect(client: QuantumClient, expected: int) -> dict[int, list[bytes]]:
    got: dict[int, list[bytes]] = {channel: [] for channel, _ in STREAMS}
    for _ in range(expected):
        message = await asyncio.wait_for(client.recv_message(), 20)
        got[message.channel].append(message.data)
    with pytest.raises(TimeoutError):  # and nothing twice, however late
        await asyncio.wait_for(client.recv_message(), 0.3)
    return got


async def _until_reconnected(events: list[ConnectionEvent]) -> Reconnected:
    """The first Reconnected among `events`, once the client reports one."""
    while True:
        for event in events:
            if isinstance(event, Reconnected):
                return event
        await asyncio.sleep(0.02)


def _check(sent: dict[int, list[bytes]], got: dict[int, list[bytes]]) -> None:
    for channel, mode in STREAMS:
        if mode is Delivery.RELIABLE_ORDERED:
            assert got[channel] == sent[channel], f"channel {channel}"
        else:
            assert sorted(got[channel]) == sorted(sent[channel]), f"channel {channel}"


@pytest.mark.parametrize("server_idle", [5.0, 1.0], ids=["old-connection-live", "kept-blob"])
async def test_a_path_dark_for_3_s_reconnects_and_every_reliable_message_arrives_once(
        server_idle: float) -> None:
    """With `server_idle` 5 s the server still holds the old connection when the resume
    arrives (it hands its carry-over on at once); with 1 s it lost it first and kept its
    carry-over as the session's blob, which the resume takes back."""
    echo = Echo()
    events: list[ConnectionEvent] = []
    async with running_server(app=echo, idle_timeout=server_idle) as h:
        relay = await LossyRelay.start((HOST, h.port), RelayProfile(loss=0.02, reorder=0.05),
                                       seed=3)
        relay.follow_client = True
        try:
            client = await connect(HOST, relay.port, user_id="alice",
                                   configuration=client_config(idle_timeout=1.0),
                                   reconnect_policy=POLICY, on_event=events.append)
            session_id, first_token = client.session_id, client.session_token
            sent: dict[int, list[bytes]] = {channel: [] for channel, _ in STREAMS}
            await _pump(client, 60, b"before", sent)
            relay.dark = True  # mid-stream: much is in flight both ways
            dark = asyncio.create_task(_pump(client, 30, b"dark", sent))  # queued meanwhile
            await asyncio.sleep(3.0)
            relay.dark = False
            await dark
            await _pump(client, 30, b"after", sent)
            got = await _collect(client, sum(len(v) for v in sent.values()))
            _check(sent, got)
            # the server's application saw each message once too, in order per stream
            seen: dict[int, list[bytes]] = {channel: [] for channel, _ in STREAMS}
            for message in echo.received:
                seen[int(message.split(b"-")[1])].append(message)
            _check(sent, seen)
            kinds = [type(e) for e in events]
            assert kinds[0] is Disconnected and Reconnected in kinds and DataLost not in kinds
            reconnected = next(e for e in events if isinstance(e, Reconnected))
            # (the outage runs from the loss's detection, the client's idle timeout into the
            # dark, to the resume after the path came back: timing on a loaded machine varies)
            assert reconnected.carried and 0.0 < reconnected.outage < 10.0
            # the same session, with a new token (rotated at the resume)
            assert client.session_id == session_id and client.session_token != first_token
            carryovers = h.server.bridge.carryovers
            assert len(h.server.retained) == 0 and carryovers.dropped == 0
            # kept as the session's blob (and taken back) only if the server lost it first
            assert (carryovers.kept, carryovers.taken) == ((0, 0) if server_idle > 3 else (1, 1))
            await client.close()
        finally:
            relay.close()


async def test_a_graceful_close_is_a_logout_and_nothing_is_kept() -> None:
    async with running_server(app=Echo()) as h:
        client = await connect(HOST, h.port, user_id="alice", configuration=client_config())
        sid = client.session_id
        assert sid is not None
        await client.send(b"hello")
        await client.close()
        for _ in range(100):
            if await h.session(sid) is None:
                break
            await asyncio.sleep(0.02)
        assert await h.session(sid) is None and h.ended_reason(sid) == "client closed"
        assert sid not in h.server.retained


async def test_sends_during_the_outage_are_bounded_by_the_send_buffer() -> None:
    async with running_server(app=Echo(), idle_timeout=5.0) as h:
        relay = await LossyRelay.start((HOST, h.port), seed=1)
        relay.follow_client = True
        events: list[ConnectionEvent] = []
        try:
            # the outage queue holds at most the send buffer's worth
            config = dataclasses.replace(client_config(idle_timeout=0.5),
                                         max_send_buffer=1 << 20)
            client = await connect(HOST, relay.port, user_id="alice", configuration=config,
                                   reconnect_policy=POLICY, on_event=events.append)
            relay.dark = True
            while not client.reconnecting:
                await asyncio.sleep(0.05)
            for _ in range(8):
                client.send_nowait(bytes(128 * 1024))
            with pytest.raises(SendBufferFull):  # bounded like the send buffer
                client.send_nowait(bytes(1024))
            client.send_nowait(b"dropped", 3, Delivery.UNRELIABLE)  # never replayed
            relay.dark = False
            for _ in range(8):
                message = await asyncio.wait_for(client.recv_message(), 10)
                assert message.data == bytes(128 * 1024)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.recv(), 0.3)
            await client.close()
        finally:
            relay.close()


#: a backoff that would not try again within any of these tests: what happens is close's doing
SLOW_POLICY = ReconnectPolicy(initial_delay=30.0, max_delay=30.0, give_up_after=120.0)


async def test_close_during_an_outage_resumes_at_once_delivers_and_logs_out() -> None:
    """The path comes back while the reconnect waits out its backoff; `close()` does not wait
    for it: it resumes at once, what was queued in the outage goes first, then the logout."""
    echo = Echo()
    async with running_server(app=echo, idle_timeout=5.0) as h:
        relay = await LossyRelay.start((HOST, h.port), seed=2)
        relay.follow_client = True
        events: list[ConnectionEvent] = []
        try:
            client = await connect(HOST, relay.port, user_id="alice",
                                   configuration=client_config(idle_timeout=0.5),
                                   reconnect_policy=SLOW_POLICY, on_event=events.append)
            sid = client.session_id
            assert sid is not None
            relay.dark = True
            while not client.reconnecting:
                await asyncio.sleep(0.05)
            client.send_nowait(b"queued in the outage")
            relay.dark = False
            await asyncio.wait_for(client.close(timeout=5.0), 10)
            assert echo.received == [b"queued in the outage"]
            for _ in range(100):
                if await h.session(sid) is None:
                    break
                await asyncio.sleep(0.02)
            assert await h.session(sid) is None and h.ended_reason(sid) == "client closed"
            assert client.close_code == CloseCode.NORMAL and not client.reconnecting
            kinds = [type(e) for e in events]
            assert kinds == [Disconnected, Reconnected], events
        finally:
            relay.close()


async def test_close_during_an_outage_with_no_server_gives_up_within_its_timeout() -> None:
    """Still dark: the one resume `close()` tries gets no answer; nothing more is sent, the
    client is closed, and the session stays on the server, to expire there."""
    async with running_server(app=Echo(), idle_timeout=5.0) as h:
        relay = await LossyRelay.start((HOST, h.port), seed=2)
        relay.follow_client = True
        try:
            client = await connect(HOST, relay.port, user_id="alice",
                                   configuration=client_config(idle_timeout=0.5),
                                   reconnect_policy=SLOW_POLICY)
            sid = client.session_id
            assert sid is not None
            relay.dark = True
            while not client.reconnecting:
                await asyncio.sleep(0.05)
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(client.close(timeout=3.0), 10)
            # it did try: its one resume waited for an answer as long as a handshake does here
            # (the client's idle timeout, shorter than close's)
            took = asyncio.get_running_loop().time() - started
            assert took >= 0.5, took
            assert client.close_reason == "client closed during reconnect"
            assert client.close_code == CloseCode.NORMAL and client.is_closed
            assert await h.session(sid) is not None  # no logout reached it
            with pytest.raises(ConnectionClosedError):
                await client.send(b"after")
        finally:
            relay.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _start_server(port: int, key_file: Path, tmp_path: Path,
                  script: str = "server.py") -> subprocess.Popen[bytes]:
    """`script` (quantum-server, or an example application taking its flags) on `port`;
    its log appended to tmp_path/server.log."""
    with open(tmp_path / "server.log", "ab") as log:  # the child writes to its own copy
        return subprocess.Popen(
            [sys.executable, script, "--host", HOST, "--port", str(port), "--key-file",
             str(key_file), "--allow-anonymous", "--keepalive-interval", "0.5",
             *EPHEMERAL_SERVICES], env=cli_env(tmp_path), stdout=subprocess.DEVNULL,
            stderr=log, cwd=ROOT)


async def _until_serving(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            probe = await connect(HOST, port, user_id="probe", reconnect=False,
                                  configuration=client_config())
            await probe.close()
            return
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_sigkill_loses_the_sessions_and_the_client_gives_up_with_a_clear_reason(
        tmp_path: Path) -> None:
    port, key_file = _free_port(), tmp_path / "server.key"
    proc = _start_server(port, key_file, tmp_path)
    again: subprocess.Popen[bytes] | None = None
    try:
        await _until_serving(port, proc)
        events: list[ConnectionEvent] = []
        client = await connect(HOST, port, user_id="alice",
                               configuration=client_config(idle_timeout=1.0),
                               reconnect_policy=POLICY, on_event=events.append)
        await client.send(b"in flight")
        proc.send_signal(signal.SIGKILL)  # no snapshot, no goodbye: its sessions are gone
        proc.wait(5)
        again = _start_server(port, key_file, tmp_path)  # same key, empty session store
        await asyncio.wait_for(client.wait_closed(), 25)
        gave_up = [e for e in events if isinstance(e, GaveUp)]
        assert isinstance(events[0], Disconnected) and len(gave_up) == 1
        assert gave_up[0].code == CloseCode.BAD_RESUME
        assert "session cannot be resumed" in gave_up[0].reason
        assert client.close_code == CloseCode.BAD_RESUME
        with pytest.raises(ConnectionClosedError, match="gave up reconnecting"):
            await client.send(b"after")
    finally:
        for p in (proc, again):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)


async def test_keys_exhausted_reconnects_and_the_stream_goes_on_in_order() -> None:
    """With key updates off the client's connection closes with KEYS_EXHAUSTED at its key's
    packet limit; the client resumes at once and its ordered stream continues unbroken."""
    echo = Echo()
    events: list[ConnectionEvent] = []
    async with running_server(app=echo) as h:
        config = dataclasses.replace(client_config(), key_update=False, packets_per_key=2048)
        client = await connect(HOST, h.port, user_id="alice", configuration=config,
                               reconnect_policy=POLICY, on_event=events.append)
        sent = [b"m-%d-" % i + bytes(700) for i in range(1500)]  # a packet each: 1500 > 1024
        for message in sent:
            await client.send(message)
        got = [await asyncio.wait_for(client.recv(), 15) for _ in sent]
        assert got == sent and echo.received == sent
        assert any(isinstance(e, Disconnected) and e.code == CloseCode.KEYS_EXHAUSTED
                   for e in events)
        # resumed, and told of no loss. Whether the resume carried streams over depends on
        # whether anything was still unacknowledged when the keys ran out (the FIN flushes
        # first): `carried` may be either, the stream above is unbroken both ways. The
        # headroom can drain every message before the FIN, so the last echo may come before
        # the resume does: wait for it, then the stream goes on over the new connection
        await asyncio.wait_for(_until_reconnected(events), 15)
        more = [b"n-%d" % i for i in range(50)]
        for message in more:
            await client.send(message)
        assert [await asyncio.wait_for(client.recv(), 15) for _ in more] == more
        assert echo.received == sent + more
        assert not [e for e in events if isinstance(e, DataLost)], events
        await client.close()


async def test_a_resume_on_a_server_that_kept_nothing_reports_the_loss() -> None:
    """A server restarted on the same session store (as another node of a cluster would be)
    resumes the session but has no carry-over: the client is told (DataLost), and its streams
    start again and work."""
    store, key = MemoryStore(), ServerKeyFile.new()
    events: list[ConnectionEvent] = []

    def server_on(port: int) -> QuantumServer:
        manager = SessionManager(ManagerConfig(store=store, default_timeout=60.0))
        return QuantumServer(manager, key, AnonymousAuthenticator(),
                             ServerConfig(host=HOST, port=port, keepalive_interval=KEEPALIVE,
                                          idle_timeout=5.0), Echo())

    first = server_on(0)
    await first.start()
    port = first.port
    client = await connect(HOST, port, user_id="alice", configuration=client_config(),
                           reconnect_policy=POLICY, on_event=events.append)
    await client.send(b"hello")
    assert await asyncio.wait_for(client.recv(), 5) == b"hello"
    await first.stop()  # SERVER_SHUTDOWN: the session stays, and the client reconnects
    second = server_on(port)
    await second.start()
    try:
        await asyncio.wait_for(_until_reconnected(events), 10)
        lost = [e for e in events if isinstance(e, DataLost)]
        reconnected = [e for e in events if isinstance(e, Reconnected)]
        assert len(lost) == 1 and "kept nothing" in lost[0].reason
        assert len(reconnected) == 1 and not reconnected[0].carried
        assert isinstance(events[0], Disconnected)
        assert events[0].code == CloseCode.SERVER_SHUTDOWN
        await client.send(b"again")  # a fresh stream from id 0 on the new connection
        assert await asyncio.wait_for(client.recv(), 5) == b"again"
        await client.close()
    finally:
        await second.stop()


async def test_a_server_restart_mid_stream_loses_nothing_either_way(tmp_path: Path) -> None:
    """SIGTERM in the middle of a two-way stream (the server writes its snapshot, with what
    its connections still owed), then a start on the same port and key file: the client
    reconnects by itself, resumes, and every reliable message arrives once, in order on the
    ordered channels, both ways."""
    port, key_file = _free_port(), tmp_path / "server.key"
    proc = _start_server(port, key_file, tmp_path, "examples/echo_server.py")
    again: subprocess.Popen[bytes] | None = None
    try:
        await _until_serving(port, proc)
        events: list[ConnectionEvent] = []
        client = await connect(HOST, port, user_id="alice",
                               configuration=client_config(idle_timeout=1.0),
                               reconnect_policy=POLICY, on_event=events.append)
        sent: dict[int, list[bytes]] = {channel: [] for channel, _ in STREAMS}
        pump = asyncio.ensure_future(_pump(client, 240, b"restart", sent))
        await asyncio.sleep(0.3)  # the stream is under way, both directions
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
        assert code == 0, (tmp_path / "server.log").read_text()[-3000:]
        assert (tmp_path / "server.snapshot").exists()
        again = _start_server(port, key_file, tmp_path, "examples/echo_server.py")
        await asyncio.wait_for(pump, 30)
        _check(sent, await _collect(client, 240))  # every echo, once
        assert any(isinstance(e, Reconnected) and e.carried for e in events), events
        assert not [e for e in events if isinstance(e, (DataLost, GaveUp))], events
        await client.close()
    finally:
        for p in (proc, again):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)

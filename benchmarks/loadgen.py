"""The heartbeat load generator: many clients, a few sockets, one process, no task per client.

The generator must cost less than the server it measures, so it drives sans-I/O
`quantum.connection.Connection` client objects directly: a handful of non-blocking UDP sockets
(uvloop `DatagramProtocol`s) carry every client's datagrams, replies are routed back to their
client by the connection id at bytes 6..22 of the header, and all client timers (delayed ACKs,
handshake resends) share one heap armed with a single `loop.call_at`, as in `server.py`.

Two targets speak through the same loop:

* `quantum`: real handshakes (pipelined, many in flight), then a closed loop of protected
  keepalives: each client sends its next keepalive the moment the previous one is
  acknowledged, and the round trip is recorded.
* `echo`: the bare baseline. Each client sends a datagram of a keepalive's size whose bytes
  6..22 carry its id, and sends the next when the echo comes back.
* `ticks` (`benchmarks.gametick`): an open loop of game updates: every client sends one
  unreliable-sequenced message of `size` bytes `rate` times a second (the clients' phases
  spread over the interval), each stamped with its send time; the server echoes the latest
  per client per tick, and the round trip from an update to its echo is recorded.

`run_loadgen` is the child-process entry point: it obeys commands from the orchestrator in
`benchmarks.heartbeat` over a `multiprocessing` pipe and answers each with a dict.

The benchmark compiles this module with mypyc on first use (`benchmarks.loadgen_build`), under
another module name; it runs unchanged as plain Python too.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from time import perf_counter, perf_counter_ns
from typing import Any, Final

from mypy_extensions import mypyc_attr

from quantum.config import QuantumConfiguration
from quantum.connection import Address, Connection, ConnectionState
from quantum.events import (
    ConnectionClosed,
    HandshakeCompleted,
    HandshakeRejected,
    KeepaliveAcknowledged,
    MessageReceived,
)
from quantum.frames import Delivery
from quantum.handshake import Credentials
from quantum.timers import TimerHeap

#: socket buffers: a closed loop of thousands of clients keeps thousands of datagrams in flight
SOCKET_BUFFER: Final = 4 * 1024 * 1024
#: size of the echo baseline's datagrams: about what one protected keepalive packet weighs
ECHO_DATAGRAM_SIZE: Final = 64
#: a keepalive whose answer takes longer than this is counted unanswered and replaced, because
#: keepalives are not retransmitted by the protocol (a lost one would stall its client forever)
ACK_TIMEOUT: Final = 2.0
#: the tick mode sends each slot of clients this often: the clients' phases are spread over the
#: update interval in steps of this (uvloop's timers have millisecond resolution)
TICK_SLOT: Final = 0.001
#: an update's first 8 bytes: its send time, perf_counter_ns(), little-endian
STAMP_SIZE: Final = 8
#: clients leave their timers to the heap; their own keepalive timer stays off (closed loop)
CLIENT_CONFIG: Final = QuantumConfiguration(keepalive_interval=None, idle_timeout=3600.0,
                                     handshake_timeout=30.0, handshake_tries=10)
#: after this many handshakes the clients made so far move to the collector's permanent
#: generation (as the server does, `server.GC_FREEZE_AFTER`): with hundreds of thousands of
#: clients a full collection would otherwise stop the generator for seconds at a time, long
#: enough for handshakes to time out and the closed loop's round trips to measure the pause
GC_FREEZE_AFTER: Final = 10_000


@mypyc_attr(native_class=False)  # compiled by benchmarks/loadgen_build.py: stays a Python class
class LoadGenError(RuntimeError):
    """The load could not be generated (handshakes refused or stalled); the message says why."""


@dataclass(eq=False, slots=True)
class Client:
    """One simulated client: its connection, its socket, and its one outstanding keepalive."""

    conn: Connection
    sock: int
    keepalive_id: int = -1
    sent_at: float = 0.0  # perf_counter(): uvloop's loop.time() only has millisecond steps
    timer_at: float | None = None
    active: bool = False  # part of the closed loop (idle clients only hold their connection)
    settled: bool = False  # its handshake has been counted, as established or as refused

    @property
    def timer_key(self) -> bytes:
        return self.conn.connection_id  # unique: a TimerHeap tie-break


@dataclass(slots=True)
class RunResult:
    """What one closed-loop run saw from the client side."""

    sent: int = 0
    acknowledged: int = 0
    timed_out: int = 0
    late: int = 0
    rtts: array[float] = field(default_factory=lambda: array("d"))
    duration: float = 0.0


class _Socket(asyncio.DatagramProtocol):
    __slots__ = ("index", "on_datagram", "transport")

    def __init__(self, index: int, on_datagram: Callable[[bytes, Address, int], None]) -> None:
        self.index = index
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.on_datagram(data, addr, self.index)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors on loopback (the server went away): timeouts account for them
        pass


class LoadGenerator:
    """Drives many clients against one server address over `sockets` UDP sockets."""

    def __init__(self, server_addr: Address, sockets: int = 4) -> None:
        if sockets < 1:
            raise ValueError(f"sockets must be at least 1, got {sockets}")
        self.server_addr = server_addr
        self.loop = asyncio.get_running_loop()
        self._socket_count = sockets
        self._sockets: list[_Socket] = []
        self._transports: list[asyncio.DatagramTransport] = []
        self.clients: dict[bytes, Client] = {}
        self._timers: TimerHeap[Client] = TimerHeap(
            self._on_timer, lambda client: client.conn.connection_id in self.clients,
            lambda client: client.conn.get_timer(), clock=self.loop.time)
        self._timers.loop = self.loop
        self._running = False
        self._result = RunResult()
        self._outstanding = 0
        self._idle_waiter: asyncio.Future[None] | None = None
        # handshakes
        self._pending_handshakes = 0
        self._handshakes_done = 0
        self._handshakes_failed = 0
        self._handshake_reasons: dict[str, int] = {}
        self._handshake_waiter: asyncio.Future[None] | None = None
        self._handshake_active = False
        self._target = 0
        self._launched = 0
        self._user_prefix = "bench"
        self._fec = True
        self.echo = False
        self._update_padding = b""
        # datagrams wait here until the loop has handled everything it read in this pass: see
        # `_post`
        self._outbox: list[tuple[asyncio.DatagramTransport, bytes, Address]] = []
        self._outbox_armed = False

    async def open(self) -> None:
        for i in range(self._socket_count):
            proto = _Socket(i, self._on_datagram)
            transport, _ = await self.loop.create_datagram_endpoint(
                lambda p=proto: p, local_addr=("127.0.0.1", 0))  # type: ignore[misc]
            self._sockets.append(proto)
            self._transports.append(transport)

    def close(self) -> None:
        self._timers.close()
        for transport in self._transports:
            transport.close()

    # ------------------------------------------------------------------ receiving

    def _on_datagram(self, data: bytes, addr: Address, sock: int) -> None:
        client = self.clients.get(data[6:22])
        if client is None:
            return
        if self.echo:
            self._on_echo(client, data, sock)
            return
        conn = client.conn
        conn.receive_datagram(data, addr, self.loop.time())
        self._drain(client)

    def _drain(self, client: Client) -> None:
        conn = client.conn
        while (event := conn.next_event()) is not None:
            if isinstance(event, MessageReceived):
                self._on_update_echo(event.data)
            elif isinstance(event, KeepaliveAcknowledged):
                self._on_ack(client, event.keepalive_id)
            elif isinstance(event, HandshakeCompleted):
                client.settled = True
                self._handshake_finished(None)
            elif isinstance(event, (HandshakeRejected, ConnectionClosed)):
                if client.active and client.keepalive_id >= 0:
                    client.keepalive_id = -1
                    self._outstanding -= 1
                    self._check_idle()
                client.active = False
                if not client.settled:
                    client.settled = True
                    self._handshake_finished(event.reason)
        self._flush(client)

    def _flush(self, client: Client) -> None:
        conn = client.conn
        transport = self._transports[client.sock]
        for data, addr in conn.datagrams_to_send(self.loop.time()):
            self._post(transport, data, addr)
        if conn.state is ConnectionState.CLOSED:
            self.clients.pop(conn.connection_id, None)
            return
        self._timers.schedule(client, conn.get_timer())

    def _post(self, transport: asyncio.DatagramTransport, data: bytes, addr: Address) -> None:
        """Send `data` once the loop has handled every datagram it read in this pass.

        Sending each reply the moment it is built spaces the datagrams by the generator's own
        processing time, so a faster server empties its socket, sleeps, and is woken for almost
        every datagram: both processes then pay a wake-up per datagram that has nothing to do
        with the work measured. Sent back to back, a pass's datagrams reach the server as a
        burst. Echo and Quantum runs go through here alike."""
        self._outbox.append((transport, data, addr))
        if not self._outbox_armed:
            self._outbox_armed = True
            self.loop.call_soon(self._send_outbox)

    def _send_outbox(self) -> None:
        self._outbox_armed = False
        outbox, self._outbox = self._outbox, []
        for transport, data, addr in outbox:
            transport.sendto(data, addr)

    def _on_timer(self, client: Client, now: float) -> None:
        client.conn.handle_timer(now)
        self._drain(client)

    # ------------------------------------------------------------------ handshakes

    async def establish(self, count: int, in_flight: int = 256, user_prefix: str = "bench",
                        timeout: float = 600.0, fec: bool = True) -> dict[str, Any]:
        """Open `count` connections, `in_flight` handshakes at a time; returns counts and time.

        Raises `LoadGenError` when more than 1 % of them are refused or the whole batch does not
        finish within `timeout` seconds.
        """
        if count <= 0:
            return {"established": 0, "failed": 0, "seconds": 0.0}
        started = time.perf_counter()
        self._handshakes_done = self._handshakes_failed = 0
        self._handshake_reasons = {}
        self._target = count
        self._user_prefix = user_prefix
        self._fec = fec
        self._launched = 0
        self._pending_handshakes = 0
        self._handshake_waiter = self.loop.create_future()
        self._handshake_active = True
        for _ in range(min(in_flight, count)):
            self._launch()
        try:
            await asyncio.wait_for(asyncio.shield(self._handshake_waiter), timeout)
        except TimeoutError:
            raise LoadGenError(
                f"handshakes stalled: {self._handshakes_done} of {count} established in "
                f"{timeout:.0f} s, {self._handshakes_failed} refused "
                f"({self._handshake_reasons})") from None
        finally:
            self._handshake_active = False
        if self._handshakes_failed > count // 100:
            raise LoadGenError(f"{self._handshakes_failed} of {count} handshakes refused: "
                               f"{self._handshake_reasons}")
        return {"established": self._handshakes_done, "failed": self._handshakes_failed,
                "seconds": round(time.perf_counter() - started, 3)}

    def _launch(self) -> None:
        index = len(self.clients)
        self._launched += 1
        self._pending_handshakes += 1
        user = f"{self._user_prefix}-{index}"
        credentials = Credentials(user_id=user) if self._fec else Credentials(user, fec=None)
        conn = Connection.client(self.server_addr, credentials, self.loop.time(),
                                 configuration=CLIENT_CONFIG)
        client = Client(conn, index % self._socket_count)
        self.clients[conn.connection_id] = client
        self._flush(client)

    def _handshake_finished(self, failure: str | None) -> None:
        if not self._handshake_active:
            return
        self._pending_handshakes -= 1
        if failure is None:
            self._handshakes_done += 1
            if self._handshakes_done % GC_FREEZE_AFTER == 0:
                gc.collect(1)  # the young garbage first: it would be frozen with them
                gc.freeze()
        else:
            self._handshakes_failed += 1
            self._handshake_reasons[failure] = self._handshake_reasons.get(failure, 0) + 1
        if self._launched - self._handshakes_failed < self._target:
            self._launch()  # one finished, one more in flight: the pipeline stays full
        if self._handshakes_done >= self._target or \
                self._handshakes_failed > self._target // 100 + 1:
            waiter = self._handshake_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ the closed loop

    def _on_ack(self, client: Client, keepalive_id: int) -> None:
        result = self._result
        if keepalive_id != client.keepalive_id:
            result.late += 1  # answered after we had given up on it
            return
        result.acknowledged += 1
        result.rtts.append(perf_counter() - client.sent_at)
        if self._running:
            self._send_keepalive(client)
        else:
            client.keepalive_id = -1
            self._outstanding -= 1
            self._check_idle()

    def _send_keepalive(self, client: Client) -> None:
        client.keepalive_id = client.conn.send_keepalive()
        client.sent_at = perf_counter()
        self._result.sent += 1

    def _check_idle(self) -> None:
        waiter = self._idle_waiter
        if self._outstanding <= 0 and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire_keepalives(self) -> None:
        """Keepalives unanswered for ACK_TIMEOUT are counted and, while running, replaced."""
        deadline = perf_counter() - ACK_TIMEOUT
        for client in self.clients.values():
            if client.active and client.keepalive_id >= 0 and client.sent_at < deadline:
                self._result.timed_out += 1
                if self._running:
                    if self.echo:
                        self._send_echo(client)
                    else:
                        self._send_keepalive(client)
                        self._flush(client)
                else:
                    client.keepalive_id = -1
                    self._outstanding -= 1
        self._check_idle()

    async def run(self, clients: int, duration: float, drain: float = 3.0) -> RunResult:
        """Closed loop on the first `clients` established clients for `duration` seconds.

        After the window no new keepalive is sent; outstanding ones get `drain` seconds (at
        least ACK_TIMEOUT) to be answered, and whatever is still unanswered is counted.
        """
        chosen = [c for c in self.clients.values()
                  if self.echo or c.conn.state is ConnectionState.ESTABLISHED][:clients]
        if len(chosen) < clients:
            raise LoadGenError(f"only {len(chosen)} of {clients} clients are established")
        self._result = RunResult()
        self._running = True
        self._outstanding = len(chosen)
        started = self.loop.time()
        for client in chosen:
            client.active = True
            if self.echo:
                self._send_echo(client)
            else:
                self._send_keepalive(client)
                self._flush(client)
        end = started + duration
        while self.loop.time() < end:
            await asyncio.sleep(min(0.25, max(0.0, end - self.loop.time())))
            self._expire_keepalives()
        self._running = False
        self._result.duration = self.loop.time() - started
        self._idle_waiter = self.loop.create_future()
        self._check_idle()
        drain_end = self.loop.time() + max(drain, ACK_TIMEOUT + 0.5)
        while not self._idle_waiter.done() and self.loop.time() < drain_end:
            await asyncio.wait([self._idle_waiter], timeout=0.25)
            self._expire_keepalives()
        for client in chosen:
            client.active = False
            client.keepalive_id = -1
        return self._result

    # ------------------------------------------------------------------ game ticks

    async def run_ticks(self, clients: int, duration: float, rate: float, size: int,
                        drain: float = 0.5) -> RunResult:
        """The first `clients` established clients each send `rate` updates a second of `size`
        bytes for `duration` seconds; echoes are timed until `drain` seconds after the last.

        The schedule is fixed in advance (slot i at start + i x TICK_SLOT): a generator that
        falls behind sends late, in a burst, and `RunResult.sent` still counts every update,
        so falling behind shows as load-side CPU, not as fewer updates."""
        if size < STAMP_SIZE:
            raise LoadGenError(f"an update needs at least {STAMP_SIZE} bytes, got {size}")
        chosen = [c for c in self.clients.values()
                  if c.conn.state is ConnectionState.ESTABLISHED][:clients]
        if len(chosen) < clients:
            raise LoadGenError(f"only {len(chosen)} of {clients} clients are established")
        self._result = RunResult()
        self._update_padding = bytes(size - STAMP_SIZE)
        interval = 1.0 / rate
        slots = max(1, min(len(chosen), int(interval / TICK_SLOT)))
        groups = [chosen[i::slots] for i in range(slots)]
        step = interval / slots
        loop = self.loop
        started = loop.time()
        end = started + duration
        i = 0
        while True:
            at = started + i * step
            if at >= end:
                break
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for client in groups[i % slots]:
                self._send_update(client)
            i += 1
        self._result.duration = loop.time() - started
        await asyncio.sleep(drain)
        return self._result

    def _send_update(self, client: Client) -> None:
        stamp = perf_counter_ns().to_bytes(STAMP_SIZE, "little")
        client.conn.send(stamp + self._update_padding, 0, Delivery.UNRELIABLE_SEQUENCED)
        self._result.sent += 1
        self._flush(client)

    def _on_update_echo(self, data: bytes) -> None:
        if len(data) < STAMP_SIZE:
            return
        result = self._result
        result.acknowledged += 1
        sent = int.from_bytes(data[:STAMP_SIZE], "little")
        result.rtts.append((perf_counter_ns() - sent) / 1e9)

    # ------------------------------------------------------------------ echo baseline

    def add_echo_clients(self, count: int) -> None:
        """Baseline clients: just ids; their datagrams are sent raw and echoed back."""
        self.echo = True
        for _ in range(count):
            cid = os.urandom(16)
            conn = Connection(is_client=True, connection_id=cid, peer_addr=self.server_addr,
                              configuration=CLIENT_CONFIG, now=self.loop.time())
            index = len(self.clients)
            self.clients[cid] = Client(conn, index % self._socket_count)

    def _send_echo(self, client: Client) -> None:
        cid = client.conn.connection_id
        datagram = b"ECHO\x00\x00" + cid + bytes(ECHO_DATAGRAM_SIZE - 22)
        client.keepalive_id = 0
        client.sent_at = perf_counter()
        self._result.sent += 1
        self._post(self._transports[client.sock], datagram, self.server_addr)

    def _on_echo(self, client: Client, data: bytes, sock: int) -> None:
        result = self._result
        if client.keepalive_id < 0:
            result.late += 1
            return
        now = perf_counter()
        result.acknowledged += 1
        result.rtts.append(now - client.sent_at)
        if self._running:
            client.sent_at = now
            result.sent += 1
            self._post(self._transports[sock], data, self.server_addr)
        else:
            client.keepalive_id = -1
            self._outstanding -= 1
            self._check_idle()


def rtt_percentiles_ms(values: array[float]) -> tuple[float | None, float | None]:
    """The median and the 99th percentile (nearest rank) of round trips in seconds, as
    milliseconds; None for no values. One sort for both."""
    if not values:
        return None, None
    ordered = sorted(values)
    last = len(ordered) - 1
    return (round(ordered[round(0.50 * last)] * 1000, 3),
            round(ordered[round(0.99 * last)] * 1000, 3))


def summarise(result: RunResult) -> dict[str, Any]:
    p50, p99 = rtt_percentiles_ms(result.rtts)
    return {
        "sent": result.sent,
        "acknowledged": result.acknowledged,
        "unanswered": result.sent - result.acknowledged,
        "timed_out": result.timed_out,
        "late": result.late,
        "duration_s": round(result.duration, 3),
        "rtt_p50_ms": p50,
        "rtt_p99_ms": p99,
    }


# ---------------------------------------------------------------------- the child process


def pin_to_cpu(cpu: int | None) -> int | None:
    """Pin this process to one CPU where the platform allows it; returns the CPU or None."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None
    chosen = available[cpu % len(available)]
    os.sched_setaffinity(0, {chosen})
    return chosen


async def serve_commands(pipe: Pipe, handle: Callable[[dict[str, Any]], Any]) -> None:
    """Answer the orchestrator's commands until `quit`, without blocking the event loop.

    `handle` returns the reply dict, or an awaitable of it; `quit` ends the loop after its reply.
    """
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(pipe.fileno(), ready.set)
    try:
        while True:
            await ready.wait()
            ready.clear()
            while pipe.poll():
                command: dict[str, Any] = pipe.recv()
                reply = handle(command)
                if asyncio.iscoroutine(reply):
                    reply = await reply
                pipe.send(reply)
                if command["cmd"] == "quit":
                    return
    finally:
        loop.remove_reader(pipe.fileno())


async def _loadgen_main(pipe: Pipe, server_addr: Address, sockets: int) -> None:
    gen = LoadGenerator(server_addr, sockets)
    await gen.open()
    pooled = array("d")  # the round trips of the runs asked to pool them

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        kind = command["cmd"]
        reply: dict[str, Any]
        try:
            if kind == "connect":
                reply = await gen.establish(command["count"], command.get("in_flight", 256),
                                            command.get("user_prefix", "bench"),
                                            timeout=command.get("timeout", 600.0),
                                            fec=command.get("fec", True))
            elif kind == "echo_clients":
                gen.add_echo_clients(command["count"])
                reply = {"clients": command["count"]}
            elif kind == "run":
                cpu0 = time.process_time()
                result = await gen.run(command["clients"], command["duration"])
                reply = summarise(result)
                reply["loadgen_cpu_s"] = round(time.process_time() - cpu0, 3)
                if command.get("pool"):
                    # percentiles over this run and every earlier pooled one: the orchestrator
                    # cuts one measurement into several windows
                    pooled.extend(result.rtts)
                    reply["pooled_rtt_p50_ms"], reply["pooled_rtt_p99_ms"] = \
                        rtt_percentiles_ms(pooled)
            elif kind == "ticks":
                cpu0 = time.process_time()
                result = await gen.run_ticks(command["clients"], command["duration"],
                                             command["rate"], command["size"])
                reply = summarise(result)
                reply["loadgen_cpu_s"] = round(time.process_time() - cpu0, 3)
            elif kind == "quit":
                reply = {}
            else:
                reply = {"error": f"unknown command {kind!r}"}
        except LoadGenError as exc:
            reply = {"error": str(exc)}
        reply["ok"] = "error" not in reply
        return reply

    try:
        await serve_commands(pipe, handle)
    finally:
        gen.close()


def run_loadgen(pipe: Pipe, server_addr: Address, cpu: int | None, sockets: int = 4) -> None:
    """Child-process entry point: pin, then obey the orchestrator's commands until `quit`."""
    pin_to_cpu(cpu)
    import uvloop

    uvloop.run(_loadgen_main(pipe, server_addr, sockets))

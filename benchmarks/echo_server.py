"""The bare baseline: a uvloop UDP echo server (no protocol, no crypto), in its own process.

It sends every datagram straight back to where it came from, so datagrams echoed per
server CPU-second is the ceiling any Python UDP server on this event loop can reach; the
heartbeat benchmark divides the Quantum server's heartbeats per CPU-second by it.

`CpuWindow` and `rss_bytes` are the measuring tools both benchmark server processes use (this
one and the Quantum runner in `benchmarks.heartbeat`), so both are measured the same way:
CPU time of the whole server process (every thread) over the window between `start` and
`stop` commands, excluding start-up and handshakes.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection as Pipe
from typing import Any

from benchmarks.loadgen import SOCKET_BUFFER, pin_to_cpu, serve_commands
from quantum.connection import Address


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux); 0 where it is not available."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class CpuWindow:
    """CPU seconds and a counter's growth between `start()` and `stop()`."""

    __slots__ = ("_count0", "_counter", "_cpu0", "_wall0")

    def __init__(self, counter: Callable[[], int]) -> None:
        self._counter = counter
        self._cpu0 = self._wall0 = 0.0
        self._count0 = 0

    def start(self) -> None:
        self._count0 = self._counter()
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()

    def stop(self) -> dict[str, float]:
        cpu = time.process_time() - self._cpu0
        wall = time.perf_counter() - self._wall0
        count = self._counter() - self._count0
        return {"count": count, "cpu_s": cpu, "wall_s": wall,
                "per_cpu_s": count / cpu if cpu > 0 else 0.0,
                "utilisation": cpu / wall if wall > 0 else 0.0}


def window_reply(command: dict[str, Any], window: CpuWindow) -> dict[str, Any]:
    """The answer of a measured server to the orchestrator's start, stop and quit (anything
    else is refused); a server with something to release on quit does it before asking."""
    kind = command["cmd"]
    if kind == "start":
        window.start()
        return {"ok": True}
    if kind == "stop":
        return {"ok": True, **window.stop()}
    if kind == "quit":
        return {"ok": True}
    return {"ok": False, "error": f"unknown command {kind!r}"}


def enlarge_buffers(transport: asyncio.BaseTransport) -> None:
    """Give the socket room for a closed loop's burst of thousands of datagrams."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


class EchoProtocol(asyncio.DatagramProtocol):
    """Echo each datagram back, and count them."""

    def __init__(self) -> None:
        self.echoed = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        enlarge_buffers(transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        transport = self.transport
        if transport is not None:
            transport.sendto(data, addr)
            self.echoed += 1


async def _echo_main(pipe: Pipe) -> None:
    loop = asyncio.get_running_loop()
    protocol = EchoProtocol()
    transport, _ = await loop.create_datagram_endpoint(lambda: protocol,
                                                       local_addr=("127.0.0.1", 0))
    window = CpuWindow(lambda: protocol.echoed)
    pipe.send({"port": transport.get_extra_info("sockname")[1]})

    try:
        await serve_commands(pipe, lambda command: window_reply(command, window))
    finally:
        transport.close()


def run_echo_server(pipe: Pipe, cpu: int | None) -> None:
    """Child-process entry point: pin, bind a free loopback port, send it, serve commands."""
    pin_to_cpu(cpu)
    import uvloop

    uvloop.run(_echo_main(pipe))

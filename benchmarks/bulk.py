"""Bulk transfer over one connection on loopback: Mbit/s and bytes per server CPU-second.

    python -m benchmarks.bulk --json [--bytes 33554432] [--rounds 1] [--no-aioquic]
                                     [--profile PATH]

The server (pinned to one core, as in `benchmarks.heartbeat`) sends `--bytes` bytes to one
client (pinned to the other core) that asked for them: Quantum with FEC off, Quantum with FEC
on (negotiated; at 0 % loss the sender's policy sends no parity, PROTOCOL.md 9, so this is
what FEC costs where it is not needed), and, when aioquic is installed (the dev extra), the
same bytes on one aioquic stream. Quantum sends them as reliable-ordered messages of
`CHUNK` bytes through `Peer.send`, waiting on `Peer.drain` when the send buffer is full;
aioquic writes them to one stream and ends it.

Per case and round: `mbit_per_s` (the client's view: from the request to the last byte) and
`bytes_per_server_cpu_s` (the server process's CPU time over the same window); the report keeps
each round and the best. `ratio_vs_aioquic` divides Quantum's best Mbit/s by aioquic's,
`cpu_ratio_vs_aioquic` its bytes per server CPU-second by aioquic's. A default run takes a few
seconds on a quiet machine (32 MiB a case); on a busy one, where the servers get a fraction of
their core, it can take a minute or more (see `load_average` and the CPU shares). With
`--profile PATH` the Quantum servers run the transfer under cProfile (slower: for finding hot
spots only) and write PATH.fec-off and PATH.fec-on.

Prints one JSON object (with `--json`; otherwise a readable summary).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import multiprocessing
import os
import ssl
import sys
import tempfile
import time
from contextlib import ExitStack
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any, Final

from benchmarks.echo_server import CpuWindow
from benchmarks.heartbeat import (
    LOADGEN_CPU,
    Child,
    _positive_int,
    _spawn,
    _start_server_info,
)
from benchmarks.loadgen import pin_to_cpu, serve_commands
from benchmarks.report import BenchError, finish
from quantum.auth import AnonymousAuthenticator
from quantum.build import is_compiled
from quantum.errors import SendBufferFull
from quantum.frames import Delivery
from quantum.keys import ServerKeyFile
from server import Application, Peer, QuantumServer, ServerConfig
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore

#: the message size the Quantum server sends the bytes in
CHUNK: Final = 64 * 1024
#: the targets (issue 16)
TARGET_MBIT_FEC_OFF: Final = 500.0
TARGET_MBIT_FEC_ON: Final = 300.0
TARGET_RATIO_VS_AIOQUIC: Final = 2.5
_REQUEST: Final = b"GET "
_ALPN: Final = "quantum-bench"


def _parse_request(data: bytes) -> int | None:
    if not data.startswith(_REQUEST):
        return None
    try:
        count = int(data[len(_REQUEST):])
    except ValueError:
        return None
    return count if count > 0 else None


# ---------------------------------------------------------------------- Quantum


class BulkSender(Application):
    """Answers `GET n` with n bytes in CHUNK-byte reliable messages."""

    def __init__(self) -> None:
        self.sent = 0

    def on_message(self, peer: Peer, message: bytes, channel: int, mode: Delivery) -> None:
        count = _parse_request(message)
        if count is not None:
            peer.server.spawn(self._send(peer, count))

    async def _send(self, peer: Peer, count: int) -> None:
        chunk = bytes(CHUNK)
        left = count
        while left > 0:
            piece = chunk if left >= CHUNK else chunk[:left]
            try:
                peer.send(piece)
            except SendBufferFull:
                await peer.drain()
                continue
            left -= len(piece)
            self.sent += len(piece)


async def _quantum_server_main(pipe: Pipe, profile: str | None) -> None:
    from session.logs import configure_logging

    configure_logging("console", "warning")
    with tempfile.TemporaryDirectory(prefix="quantum-bench-") as tmp:
        key, _ = ServerKeyFile.load_or_create(Path(tmp) / "server.key")
    app = BulkSender()
    server = QuantumServer(SessionManager(ManagerConfig(store=MemoryStore())), key,
                           AnonymousAuthenticator(), ServerConfig(host="127.0.0.1", port=0),
                           app=app)
    await server.start()
    window = CpuWindow(lambda: app.sent)
    profiler = cProfile.Profile() if profile else None
    pipe.send({"port": server.port, "public_key": key.public_key_text})

    def handle(command: dict[str, Any]) -> dict[str, Any]:
        kind = command["cmd"]
        if kind == "start":
            window.start()
            if profiler is not None:
                profiler.enable()
            return {"ok": True}
        if kind == "stop":
            if profiler is not None and profile:
                profiler.disable()
                profiler.dump_stats(profile)
            reply: dict[str, Any] = {"ok": True, **window.stop()}
            for peer in server.peers.values():
                stats = peer.conn.refresh_stats()
                reply["connection"] = {
                    "packets_sent": stats.packets_sent, "packets_lost": stats.packets_lost,
                    "retransmissions": stats.retransmissions,
                    "fec_parity_sent": stats.fec_parity_sent, "cwnd": stats.cwnd,
                    "srtt_ms": None if stats.srtt is None else round(stats.srtt * 1000, 3)}
            return reply
        if kind == "quit":
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {kind!r}"}

    await serve_commands(pipe, handle)


def run_quantum_server(pipe: Pipe, cpu: int | None, profile: str | None) -> None:
    """Child-process entry point for the Quantum server under test."""
    pin_to_cpu(cpu)
    import uvloop

    uvloop.run(_quantum_server_main(pipe, profile))


async def _quantum_client_main(pipe: Pipe, port: int, public_key: str, fec: bool) -> None:
    from quantum.client import connect

    client = await connect("127.0.0.1", port, user_id="bulk", server_key=public_key, fec=fec)

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        kind = command["cmd"]
        if kind == "get":
            count = command["bytes"]
            started, cpu = time.perf_counter(), time.process_time()
            await client.send(_REQUEST + str(count).encode())
            got = 0
            while got < count:
                got += len(await client.recv())
            params = client._conn.params  # what the handshake negotiated
            return {"ok": True, "bytes": got, "seconds": time.perf_counter() - started,
                    "cpu_s": time.process_time() - cpu,
                    "fec": params is not None and params.fec is not None}
        if kind == "quit":
            await client.close()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {kind!r}"}

    await serve_commands(pipe, handle)


def run_quantum_client(pipe: Pipe, cpu: int | None, port: int, public_key: str,
                       fec: bool) -> None:
    pin_to_cpu(cpu)
    import uvloop

    uvloop.run(_quantum_client_main(pipe, port, public_key, fec))


# ---------------------------------------------------------------------- aioquic


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway EC certificate for localhost (aioquic's TLS needs one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def _aioquic_server_main(pipe: Pipe) -> None:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    sent = [0]

    class Sender(QuicConnectionProtocol):
        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived) and event.end_stream:
                count = _parse_request(event.data)
                if count is not None:
                    self._quic.send_stream_data(event.stream_id, bytes(count), end_stream=True)
                    sent[0] += count
                    self.transmit()

    configuration = QuicConfiguration(is_client=False, alpn_protocols=[_ALPN])
    with tempfile.TemporaryDirectory(prefix="quantum-bench-") as tmp:
        cert, key = _self_signed(Path(tmp))
        configuration.load_cert_chain(str(cert), str(key))
    server = await serve("127.0.0.1", 0, configuration=configuration, create_protocol=Sender)
    transport = server._transport
    assert transport is not None  # serve() returns a bound server
    port = transport.get_extra_info("sockname")[1]
    window = CpuWindow(lambda: sent[0])
    pipe.send({"port": port})

    def handle(command: dict[str, Any]) -> dict[str, Any]:
        kind = command["cmd"]
        if kind == "start":
            window.start()
            return {"ok": True}
        if kind == "stop":
            return {"ok": True, **window.stop()}
        if kind == "quit":
            server.close()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {kind!r}"}

    await serve_commands(pipe, handle)


def run_aioquic_server(pipe: Pipe, cpu: int | None) -> None:
    pin_to_cpu(cpu)
    import uvloop

    uvloop.run(_aioquic_server_main(pipe))


async def _aioquic_client_main(pipe: Pipe, port: int) -> None:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    class Receiver(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.got = 0
            self.done: asyncio.Future[None] | None = None

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived):
                self.got += len(event.data)
                if event.end_stream and self.done is not None and not self.done.done():
                    self.done.set_result(None)

    configuration = QuicConfiguration(is_client=True, alpn_protocols=[_ALPN],
                                      verify_mode=ssl.CERT_NONE)
    async with connect("127.0.0.1", port, configuration=configuration,
                       create_protocol=Receiver) as protocol:
        assert isinstance(protocol, Receiver)
        client = protocol

        async def handle(command: dict[str, Any]) -> dict[str, Any]:
            kind = command["cmd"]
            if kind == "get":
                count = command["bytes"]
                client.got = 0
                client.done = asyncio.get_running_loop().create_future()
                started, cpu = time.perf_counter(), time.process_time()
                stream = client._quic.get_next_available_stream_id()
                client._quic.send_stream_data(stream, _REQUEST + str(count).encode(),
                                              end_stream=True)
                client.transmit()
                await client.done
                return {"ok": True, "bytes": client.got,
                        "seconds": time.perf_counter() - started,
                        "cpu_s": time.process_time() - cpu}
            if kind == "quit":
                return {"ok": True}
            return {"ok": False, "error": f"unknown command {kind!r}"}

        await serve_commands(pipe, handle)


def run_aioquic_client(pipe: Pipe, cpu: int | None, port: int) -> None:
    pin_to_cpu(cpu)
    import uvloop

    uvloop.run(_aioquic_client_main(pipe, port))


def aioquic_available() -> bool:
    try:
        import aioquic  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------- the orchestrator


def _transfer(server: Child, client: Child, count: int) -> dict[str, Any]:
    server.call("start")
    got = client.call("get", bytes=count)
    window = server.call("stop")
    if got["bytes"] != count:
        raise BenchError(f"asked for {count} bytes, received {got['bytes']}")
    seconds, cpu = got["seconds"], window["cpu_s"]
    return {"fec": got.get("fec"), "seconds": round(seconds, 6),  # a small run lasts milliseconds
            "mbit_per_s": round(count * 8 / seconds / 1e6, 1),
            "server_cpu_s": round(cpu, 3),
            "bytes_per_server_cpu_s": round(count / cpu) if cpu > 0 else None,
            "server_cpu_share": round(window["utilisation"], 3),
            # near 1.0: the client was the limit, not the server
            "client_cpu_share": round(got["cpu_s"] / seconds, 3),
            **({"server_connection": window["connection"]} if "connection" in window else {})}


def _case(name: str, rounds: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    best = max(rounds, key=lambda r: r["mbit_per_s"])
    return {"case": name, **extra, "best_mbit_per_s": best["mbit_per_s"],
            "best_bytes_per_server_cpu_s": max(r["bytes_per_server_cpu_s"] or 0 for r in rounds),
            "rounds": rounds}


def run_quantum(ctx: Any, fec: bool, count: int, rounds: int,
                profile: str | None) -> dict[str, Any]:
    with ExitStack() as stack:
        server, started = _start_server_info(ctx, stack, "quantum-server-bulk",
                                             run_quantum_server, profile, graceful=False)
        client = _spawn(ctx, "quantum-client-bulk", run_quantum_client, LOADGEN_CPU,
                        started["port"], started["public_key"], fec)
        stack.callback(client.stop)
        results = [_transfer(server, client, count) for _ in range(rounds)]
    negotiated = results[0].pop("fec")
    for r in results[1:]:
        r.pop("fec")
    if negotiated is not fec:
        raise BenchError(f"asked for FEC {'on' if fec else 'off'}, negotiated {negotiated}")
    return _case(f"quantum fec={'on' if fec else 'off'}", results, fec=fec)


def run_aioquic(ctx: Any, count: int, rounds: int) -> dict[str, Any]:
    with ExitStack() as stack:
        server, started = _start_server_info(ctx, stack, "aioquic-server-bulk",
                                             run_aioquic_server, graceful=False)
        client = _spawn(ctx, "aioquic-client-bulk", run_aioquic_client, LOADGEN_CPU,
                        started["port"])
        stack.callback(client.stop)
        results = [_transfer(server, client, count) for _ in range(rounds)]
    for r in results:
        r.pop("fec")
    import aioquic

    return _case("aioquic one stream", results, version=aioquic.__version__)


def run(count: int, rounds: int, with_aioquic: bool, profile: str | None) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    load_before = [round(x, 2) for x in os.getloadavg()]
    cases = [run_quantum(ctx, False, count, rounds, profile and f"{profile}.fec-off"),
             run_quantum(ctx, True, count, rounds, profile and f"{profile}.fec-on")]
    reference = None
    if with_aioquic and aioquic_available():
        reference = run_aioquic(ctx, count, rounds)
        cases.append(reference)
    off, on = cases[0], cases[1]
    result: dict[str, Any] = {
        "benchmark": "bulk", "server_compiled": is_compiled(), "bytes": count,
        # the machine's load average (1, 5, 15 min) before and after: figures taken on a busy
        # machine understate what a quiet one does
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "rounds": rounds, "profiled": profile is not None,
        "aioquic": "ran" if reference is not None
        else ("not installed" if with_aioquic else "skipped (--no-aioquic)"),
        "targets": {"mbit_per_s_fec_off": TARGET_MBIT_FEC_OFF,
                    "mbit_per_s_fec_on": TARGET_MBIT_FEC_ON,
                    "ratio_vs_aioquic_fec_off": TARGET_RATIO_VS_AIOQUIC},
        "cases": cases,
    }
    if reference is not None:
        result["ratio_vs_aioquic"] = {
            "fec_off": round(off["best_mbit_per_s"] / reference["best_mbit_per_s"], 2),
            "fec_on": round(on["best_mbit_per_s"] / reference["best_mbit_per_s"], 2)}
        # bytes per server CPU-second: what a busy machine, which starves both servers of
        # wall-clock time, distorts least
        result["cpu_ratio_vs_aioquic"] = {
            "fec_off": round(off["best_bytes_per_server_cpu_s"]
                             / reference["best_bytes_per_server_cpu_s"], 2),
            "fec_on": round(on["best_bytes_per_server_cpu_s"]
                            / reference["best_bytes_per_server_cpu_s"], 2)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bulk",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--bytes", type=_positive_int, default=32 << 20,
                        help="bytes per transfer (default 33554432, 32 MiB)")
    parser.add_argument("--rounds", type=_positive_int, default=1,
                        help="transfers per case; the best is reported too (default 1)")
    parser.add_argument("--no-aioquic", action="store_true",
                        help="skip the aioquic reference even when it is installed")
    parser.add_argument("--profile", metavar="PATH",
                        help="run the Quantum servers under cProfile, stats to PATH.fec-*")
    args = parser.parse_args(argv)

    def show(result: dict[str, Any]) -> None:
        for case in result["cases"]:
            print(f"{case['case']}: {case['best_mbit_per_s']} Mbit/s, "
                  f"{case['best_bytes_per_server_cpu_s']} bytes per server CPU-second")
        if "ratio_vs_aioquic" in result:
            print(f"vs aioquic: {result['ratio_vs_aioquic']}")

    return finish("bulk", lambda: run(args.bytes, args.rounds, not args.no_aioquic,
                                      args.profile), args.json, show)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())

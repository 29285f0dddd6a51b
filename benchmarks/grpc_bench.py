"""The gRPC session API's throughput against a minimal grpc.aio service, in the same run.

    python -m benchmarks.grpc_bench --json [--callers 50] [--channels 4] [--duration 20]
                                    [--rounds 5] [--sessions 1000]

Two servers run side by side, each in its own process pinned to one core, on uvloop like
`quantum-server`: the real one (a `QuantumServer` with its `NetworkServices`, i.e. the API with
its bearer-token guard, and the metrics endpoint; memory store holding `--sessions`
sessions, each held by a connection id as a UDP client's would be) and the baseline, a bare
grpc.aio server of the same two methods whose handlers return a prebuilt response. The load
generator (pinned to the other core) drives `--callers` concurrent closed-loop callers over one
set of `--channels` channels per server, the same requests with the same metadata to both, and
times every call.

The measured time is cut into `--rounds` rounds; each round has four windows, Heartbeat and
GetSession against the baseline and against the API, so a machine whose speed drifts slows
both sides alike. `ratio` is API calls/s over baseline calls/s for the same method (the target
is 0.7: the framework is the limit); `ratio_per_cpu` compares calls per server CPU-second,
which stays meaningful if the load generator, not the server, was the bottleneck (see
`server_cpu_utilisation`). p50/p99 are over every call of every window.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

from benchmarks.echo_server import CpuWindow, window_reply
from benchmarks.heartbeat import (
    LOADGEN_CPU,
    SERVER_CPU,
    Child,
    _positive_float,
    _positive_int,
    _spawn,
)
from benchmarks.loadgen import pin_to_cpu, serve_commands
from benchmarks.report import finish, print_report

METHODS = ("Heartbeat", "GetSession")
TARGET_RATIO = 0.7


# ------------------------------------------------------------------ the servers


async def _api_main(pipe: Pipe, sessions: int) -> None:
    from quantum.auth import AnonymousAuthenticator
    from quantum.keys import ServerKeyFile
    from quantum_server.cli import build_parser
    from quantum_server.services import NetworkServices
    from server import QuantumServer, ServerConfig
    from session.logs import configure_logging
    from session.manager import ManagerConfig, SessionManager
    from session.memory import MemoryStore

    configure_logging("console", "warning")
    manager = SessionManager(ManagerConfig(store=MemoryStore()))
    server = QuantumServer(manager, ServerKeyFile.new(), AnonymousAuthenticator(),
                           ServerConfig(host="127.0.0.1", port=0))
    args = build_parser().parse_args(["--grpc", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
    with tempfile.TemporaryDirectory(prefix="quantum-grpc-bench-") as tmp:
        services = NetworkServices(args, Path(tmp) / "server.key")
    await server.start()
    await services.start(server)
    assert services.api is not None
    ids = []
    for i in range(sessions):
        session, _ = await manager.create_session(f"user-{i}", "127.0.0.1", 20000 + i % 40000,
                                                  str(uuid.uuid4()))
        ids.append(session.session_id)
    window = CpuWindow(lambda: 0)
    pipe.send({"address": services.api.address, "token": services.token, "session_ids": ids})

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        return await _answer(command, window, services.stop)

    await serve_commands(pipe, handle)
    await server.stop()


async def _answer(command: dict[str, Any], window: CpuWindow,
                  stop: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    if command["cmd"] == "quit":
        await stop()
    return window_reply(command, window)


class _Baseline:
    """The two methods with trivial handlers: a prebuilt response, nothing looked up."""

    def __init__(self) -> None:
        from datetime import UTC, datetime

        from session.api import session_pb2 as pb
        from session.api.convert import session_to_pb, timestamp
        from session.model import Session, State, Stats

        now = datetime.now(UTC)
        session = Session(str(uuid.uuid4()), "user-1", str(uuid.uuid4()), "127.0.0.1", 20001,
                          State.ACTIVE, now, now, now, "127.0.0.1:9090", {}, Stats())
        self._session = pb.GetSessionResponse(session=session_to_pb(session, 1800.0))
        self._beat = pb.HeartbeatResponse(success=True, server_timestamp=timestamp(now),
                                          remaining_seconds=1800)

    async def Heartbeat(self, request: Any, context: Any) -> Any:
        return self._beat

    async def GetSession(self, request: Any, context: Any) -> Any:
        return self._session


async def _baseline_main(pipe: Pipe) -> None:
    import grpc
    import grpc.aio

    from session.api import session_pb2 as pb
    from session.api.endpoint import MAX_REQUEST_BYTES

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                                      ("grpc.so_reuseport", 0)])
    baseline = _Baseline()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "session.SessionService", {
            "Heartbeat": grpc.unary_unary_rpc_method_handler(
                baseline.Heartbeat, pb.HeartbeatRequest.FromString,
                pb.HeartbeatResponse.SerializeToString),
            "GetSession": grpc.unary_unary_rpc_method_handler(
                baseline.GetSession, pb.GetSessionRequest.FromString,
                pb.GetSessionResponse.SerializeToString),
        }),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    window = CpuWindow(lambda: 0)
    pipe.send({"address": f"127.0.0.1:{port}"})

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        return await _answer(command, window, lambda: server.stop(0))

    await serve_commands(pipe, handle)


def run_api_server(pipe: Pipe, cpu: int | None, sessions: int) -> None:
    pin_to_cpu(cpu)
    import uvloop

    uvloop.run(_api_main(pipe, sessions))


def run_baseline_server(pipe: Pipe, cpu: int | None) -> None:
    pin_to_cpu(cpu)
    import uvloop

    uvloop.run(_baseline_main(pipe))


# ------------------------------------------------------------------ the load generator


class _Target:
    def __init__(self, address: str, channels: int) -> None:
        import grpc.aio

        from session.api import session_pb2_grpc

        self.channels = [grpc.aio.insecure_channel(address) for _ in range(channels)]
        self.stubs = [session_pb2_grpc.SessionServiceStub(c) for c in self.channels]
        self.pooled: dict[str, array[float]] = {m: array("d") for m in METHODS}


async def _run_window(target: _Target, method: str, duration: float, callers: int,
                      metadata: tuple[tuple[str, str], ...], session_ids: list[str],
                      pool: bool) -> dict[str, Any]:
    from session.api import session_pb2 as pb

    make = pb.HeartbeatRequest if method == "Heartbeat" else pb.GetSessionRequest
    requests = [make(session_id=sid) for sid in session_ids]
    latencies = array("d")
    errors = 0
    end = time.perf_counter() + duration

    async def caller(index: int) -> None:
        nonlocal errors
        call = getattr(target.stubs[index % len(target.stubs)], method)
        n = index
        clock = time.perf_counter
        while (started := clock()) < end:
            try:
                await call(requests[n % len(requests)], metadata=metadata)
            except Exception:
                errors += 1
            latencies.append(clock() - started)
            n += callers

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if pool:
        target.pooled[method].extend(latencies)
    return {"calls": len(latencies), "errors": errors, "wall_s": wall, "loadgen_cpu_s": cpu,
            **_percentiles(latencies)}


def _percentiles(latencies: array[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    if not ordered:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    return {"p50_ms": round(ordered[len(ordered) // 2] * 1000, 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3)}


async def _loadgen_main(pipe: Pipe, targets: dict[str, str], channels: int) -> None:
    connected = {name: _Target(address, channels) for name, address in targets.items()}
    for target in connected.values():
        for channel in target.channels:
            await asyncio.wait_for(channel.channel_ready(), 10)

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        kind = command["cmd"]
        if kind == "run":
            target = connected[command["target"]]
            return {"ok": True, **await _run_window(
                target, command["method"], command["duration"], command["callers"],
                tuple(tuple(kv) for kv in command["metadata"]), command["session_ids"],
                command["pool"])}
        if kind == "pooled":
            pooled = connected[command["target"]].pooled[command["method"]]
            return {"ok": True, **_percentiles(pooled)}
        if kind == "quit":
            for target in connected.values():
                for channel in target.channels:
                    await channel.close()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {kind!r}"}

    await serve_commands(pipe, handle)


def run_grpc_loadgen(pipe: Pipe, cpu: int | None, targets: dict[str, str],
                     channels: int) -> None:
    pin_to_cpu(cpu)
    import uvloop

    uvloop.run(_loadgen_main(pipe, targets, channels))


# ------------------------------------------------------------------ the orchestrator


def _window(server: Child, loadgen: Child, target: str, method: str, duration: float,
            callers: int, metadata: Any, session_ids: list[str], pool: bool) -> dict[str, Any]:
    server.call("start")
    client = loadgen.call("run", target=target, method=method, duration=duration,
                          callers=callers, metadata=metadata, session_ids=session_ids, pool=pool)
    return {"server": server.call("stop"), "client": client}


def _summary(windows: list[dict[str, Any]]) -> dict[str, float]:
    calls = sum(w["client"]["calls"] for w in windows)
    wall = sum(w["client"]["wall_s"] for w in windows)
    cpu = sum(w["server"]["cpu_s"] for w in windows)
    server_wall = sum(w["server"]["wall_s"] for w in windows)
    return {"calls": calls, "errors": sum(w["client"]["errors"] for w in windows),
            "qps": calls / wall if wall else 0.0,
            "per_server_cpu_s": calls / cpu if cpu else 0.0,
            "server_cpu_utilisation": cpu / server_wall if server_wall else 0.0,
            "loadgen_cpu_utilisation": sum(w["client"]["loadgen_cpu_s"] for w in windows) / wall
            if wall else 0.0}


def run(callers: int, channels: int, duration: float, rounds: int,
        sessions: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    load_before = os.getloadavg()
    with ExitStack() as stack:
        api = _spawn(ctx, "grpc-api", run_api_server, SERVER_CPU, sessions)
        stack.callback(api.stop)
        info = api.receive("start-up")
        baseline = _spawn(ctx, "grpc-baseline", run_baseline_server, SERVER_CPU)
        stack.callback(baseline.stop)
        base_info = baseline.receive("start-up")
        loadgen = _spawn(ctx, "grpc-loadgen", run_grpc_loadgen, LOADGEN_CPU,
                         {"api": info["address"], "baseline": base_info["address"]}, channels)
        stack.callback(loadgen.stop)
        metadata = [["authorization", f"Bearer {info['token']}"]]
        ids: list[str] = info["session_ids"]
        servers = {"api": api, "baseline": baseline}
        for name, server in servers.items():  # warm-up: connections, windows, caches
            for method in METHODS:
                _window(server, loadgen, name, method, 0.5, callers, metadata, ids, pool=False)
        slice_s = duration / (rounds * 2 * len(METHODS))
        windows: dict[tuple[str, str], list[dict[str, Any]]] = {
            (name, method): [] for name in servers for method in METHODS}
        for _ in range(rounds):
            for method in METHODS:
                for name in ("baseline", "api"):
                    windows[(name, method)].append(_window(
                        servers[name], loadgen, name, method, slice_s, callers, metadata, ids,
                        pool=True))
        report: dict[str, Any] = {}
        for method in METHODS:
            ours, theirs = _summary(windows[("api", method)]), _summary(
                windows[("baseline", method)])
            ours_p = loadgen.call("pooled", target="api", method=method)
            theirs_p = loadgen.call("pooled", target="baseline", method=method)
            per_round = [round(a["client"]["calls"] / a["client"]["wall_s"]
                               / (b["client"]["calls"] / b["client"]["wall_s"]), 3)
                         for a, b in zip(windows[("api", method)],
                                         windows[("baseline", method)], strict=True)]
            report[method] = {
                "qps": round(ours["qps"]),
                "baseline_qps": round(theirs["qps"]),
                "ratio": round(ours["qps"] / theirs["qps"], 3) if theirs["qps"] else None,
                "ratio_per_round": per_round,
                "p50_ms": ours_p["p50_ms"], "p99_ms": ours_p["p99_ms"],
                "baseline_p50_ms": theirs_p["p50_ms"], "baseline_p99_ms": theirs_p["p99_ms"],
                "per_server_cpu_s": round(ours["per_server_cpu_s"]),
                "baseline_per_server_cpu_s": round(theirs["per_server_cpu_s"]),
                "ratio_per_cpu": round(ours["per_server_cpu_s"] / theirs["per_server_cpu_s"], 3)
                if theirs["per_server_cpu_s"] else None,
                "server_cpu_utilisation": round(ours["server_cpu_utilisation"], 3),
                "baseline_cpu_utilisation": round(theirs["server_cpu_utilisation"], 3),
                "loadgen_cpu_utilisation": round(ours["loadgen_cpu_utilisation"], 3),
                "calls": ours["calls"], "errors": ours["errors"] + theirs["errors"],
            }
    return {
        "heartbeat": report["Heartbeat"], "get_session": report["GetSession"],
        "target_ratio": TARGET_RATIO,
        "callers": callers, "channels": channels, "duration_s": duration, "rounds": rounds,
        "sessions": sessions,
        # the machine is shared: how loaded it was around the run
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc_bench",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--callers", type=_positive_int, default=50,
                        help="concurrent callers (default 50)")
    parser.add_argument("--channels", type=_positive_int, default=4,
                        help="channels per server the callers share (default 4)")
    parser.add_argument("--duration", type=_positive_float, default=20.0,
                        help="measured seconds in all, over every window (default 20)")
    parser.add_argument("--rounds", type=_positive_int, default=5,
                        help="rounds of alternating windows (default 5)")
    parser.add_argument("--sessions", type=_positive_int, default=1000,
                        help="sessions the calls are spread over (default 1000)")
    args = parser.parse_args(argv)

    def show(result: dict[str, Any]) -> None:
        print_report(result, False, width=24)

    return finish("grpc_bench", lambda: run(args.callers, args.channels, args.duration,
                                            args.rounds, args.sessions), args.json, show)


if __name__ == "__main__":
    sys.exit(main())

"""The server at scale: N idle connections (each with its session) and 1,000 active ones.

    python -m benchmarks.scale --json [--idle 10000,100000] [--active 1000] [--duration 5]
                                      [--interpreted-loadgen]

For each N of `--idle`, a fresh server (pinned to one core, as in `benchmarks.heartbeat`) and a
fresh load generator (`benchmarks.loadgen`, pinned to the other) run, in this order:

1. `--active` connections are opened and loaded in a closed keepalive loop for `--duration`
   seconds: the server's CPU per heartbeat with only them (the baseline of step 5);
2. N idle connections are opened (the accepts; a long phase reports its progress on stderr),
   their resident set size growth read once they hibernated (`rss_per_idle_connection_bytes`;
   the memory target is 4 KiB): each reading waits until every connection the server holds is
   hibernated, the active ones too, so both see the same state (`settled_in_s`);
3. `--duration` seconds with no load at all: what the server's periodic work costs
   (`periodic_cpu_share`, its CPU seconds per second) while it holds N + active connections;
4. the same closed loop again, now beside the N idle ones: `heartbeat_cost_ratio` is its CPU per
   heartbeat over step 1's (the target is within 1.15);
5. the churn: another N/10 connections (at most 10,000) accepted while the loop runs, by a
   second generator process (on the generator's core).

The longest event-loop stall (the server's `StallProbe`: the lag of a 1 ms `call_later` chain)
is read after every step: `stall_max_ms` per phase, and over the whole run (the target: none
over 20 ms, accepts and churn included). `load_saturated` says when the generator's CPU was
near a full core during a loaded window: the figures are then the generator's limit, not the
server's.

Prints one JSON object (with `--json`; otherwise a readable summary).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import sys
import tempfile
import time
from contextlib import ExitStack
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

from benchmarks.echo_server import CpuWindow, rss_bytes
from benchmarks.heartbeat import (
    Child,
    _positive_float,
    _positive_int,
    _start_loadgen,
    _start_server,
)
from benchmarks.loadgen import pin_to_cpu, serve_commands
from benchmarks.loadgen_build import LoadgenBuild, load_loadgen
from benchmarks.report import BenchError, finish
from quantum.auth import AnonymousAuthenticator
from quantum.build import is_compiled
from quantum.keys import ServerKeyFile
from server import QuantumServer, ServerConfig
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore

#: a generator using this share of a core or more was the limit of its window
SATURATED = 0.95
#: the churn step opens this share of N more connections (at most CHURN_MAX)
CHURN_SHARE = 0.1
CHURN_MAX = 10_000
#: seconds beyond `hibernate_after` + `stats_interval` a memory reading waits for one more
#: connection to hibernate before it reads anyway (and says so)
SETTLE_SLACK = 5.0
#: how often the orchestrator reports the progress of a long accept phase (on stderr)
PROGRESS_EVERY = 15.0
#: the slowest accept rate (per second) a generator's connect waits for before failing
SLOWEST_ACCEPTS = 50.0


async def _server_main(pipe: Pipe, max_connections: int) -> None:
    from session.logs import configure_logging

    configure_logging("console", "warning")
    store = MemoryStore()
    with tempfile.TemporaryDirectory(prefix="quantum-bench-") as tmp:
        key, _ = ServerKeyFile.load_or_create(Path(tmp) / "server.key")
    manager = SessionManager(ManagerConfig(store=store, max_sessions=max_connections))
    # one loopback source for all load: the internet-facing limits do not apply (as in
    # benchmarks.heartbeat); idle connections outlive the time it takes to open them all
    config = ServerConfig(host="127.0.0.1", port=0, idle_timeout=3600.0,
                          max_connections=max_connections,
                          max_connections_per_address=max_connections,
                          handshake_rate=1e9, handshake_burst=1e9, retry_above_rate=1e9,
                          stall_probe_interval=0.001)
    server = QuantumServer(manager, key, AnonymousAuthenticator(), config)
    await server.start()
    probe = server.stall_probe
    assert probe is not None
    window = CpuWindow(lambda: server.counters.heartbeats)
    pipe.send({"port": server.port})

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        kind = command["cmd"]
        if kind == "start":
            window.start()
            return {"ok": True}
        if kind == "stop":
            return {"ok": True, **window.stop()}
        if kind == "stall":
            return {"ok": True, "stall_max_s": probe.take_max(),
                    "stalls_over_20ms": probe.stalls_over_20ms}
        if kind == "count":
            return {"ok": True, "connections": len(server.peers)}
        if kind == "memory":
            # read once every connection hibernated (the ones just opened, and the active
            # ones after their loop), so that both readings of a run see the same state
            settle_limit = config.hibernate_after + config.stats_interval + SETTLE_SLACK
            settled_in = await _until_hibernated(server, settle_limit)
            return {"ok": True, "rss": rss_bytes(), "connections": len(server.peers),
                    "settled_in_s": settled_in,
                    "sessions": await store.count(), "hibernating": server.hibernating,
                    # what a full collection still traverses (gc.freeze()d objects are not)
                    "gc_collectable": len(gc.get_objects()),
                    "gc_frozen": gc.get_freeze_count(),
                    "counters": server.snapshot()}
        if kind == "quit":
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {kind!r}"}

    await serve_commands(pipe, handle)


async def _until_hibernated(server: QuantumServer, limit: float) -> float | None:
    """Wait until every connection is hibernated, or until `limit` seconds have passed since
    the last one that did; returns how long it took (None: the limit came first)."""
    started = last_change = time.monotonic()
    seen = -1
    while server.hibernating < len(server.peers):
        now = time.monotonic()
        if server.hibernating != seen:
            seen, last_change = server.hibernating, now
        elif now - last_change > limit:
            return None
        await asyncio.sleep(0.1)
    return round(time.monotonic() - started, 2)


def run_scale_server(pipe: Pipe, cpu: int | None, max_connections: int) -> None:
    """Child-process entry point for the server under test."""
    pin_to_cpu(cpu)
    import uvloop

    uvloop.run(_server_main(pipe, max_connections))


def _loop_window(server: Child, loadgen: Child, clients: int,
                 duration: float) -> dict[str, Any]:
    server.call("start")
    loadgen.send("run", clients=clients, duration=duration)
    time.sleep(duration)
    window = server.call("stop")
    client_side = loadgen.receive("run")
    heartbeats = window["count"]
    return {"heartbeats": heartbeats, "server_cpu_s": round(window["cpu_s"], 3),
            "server_cpu_us_per_heartbeat": round(window["cpu_s"] / heartbeats * 1e6, 3)
            if heartbeats else None,
            "rtt_p99_ms": client_side.get("rtt_p99_ms"),
            "loadgen_cpu_share": round(client_side["loadgen_cpu_s"] / duration, 3)}


def _connect(server: Child, loadgen: Child, count: int, prefix: str) -> dict[str, Any]:
    """Open `count` connections from `loadgen`; every PROGRESS_EVERY seconds, how many the
    server holds (stderr), so that a long accept phase (a million) shows it is moving."""
    timeout = max(600.0, count / SLOWEST_ACCEPTS)
    loadgen.send("connect", count=count, user_prefix=prefix, timeout=timeout)
    started = time.monotonic()
    first = server.call("count")["connections"]
    while not loadgen.pipe.poll(PROGRESS_EVERY):
        if not loadgen.process.is_alive():
            break  # `receive` reports how it died
        held = server.call("count")["connections"] - first
        elapsed = time.monotonic() - started
        print(f"benchmarks.scale: {prefix}: {held:,} of {count:,} accepted in {elapsed:.0f} s "
              f"({held / elapsed:.0f}/s)", file=sys.stderr, flush=True)
    return loadgen.receive("connect")


def _stall_ms(server: Child) -> float:
    return round(float(server.call("stall")["stall_max_s"]) * 1000, 2)


def run_one(ctx: Any, build: LoadgenBuild, idle: int, active: int,
            duration: float) -> dict[str, Any]:
    churn = min(CHURN_MAX, max(1, int(idle * CHURN_SHARE)))
    with ExitStack() as stack:
        server, port = _start_server(ctx, stack, "quantum-server-scale", run_scale_server,
                                     idle + active + churn + 100, graceful=False)
        loadgen = _start_loadgen(ctx, stack, port, build)
        stalls: dict[str, float] = {}
        _connect(server, loadgen, active, "active")
        stalls["accept_active"] = _stall_ms(server)
        baseline = _loop_window(server, loadgen, active, duration)
        stalls["loop_baseline"] = _stall_ms(server)
        before = server.call("memory")  # once the active ones hibernated
        opened = _connect(server, loadgen, idle, "idle")
        stalls["accept_idle"] = _stall_ms(server)
        after = server.call("memory")  # once the idle ones hibernated
        stalls["settle"] = _stall_ms(server)
        if after["connections"] - before["connections"] != idle:
            raise BenchError(f"expected {idle} new connections, the server has "
                             f"{after['connections'] - before['connections']} "
                             f"(the generator: {opened}; the server: {after['counters']})")
        server.call("start")
        time.sleep(duration)
        quiet = server.call("stop")
        stalls["quiet"] = _stall_ms(server)
        loaded = _loop_window(server, loadgen, active, duration)
        stalls["loop_with_idle"] = _stall_ms(server)
        # churn: more accepts while the closed loop runs, from a second generator (a
        # generator answers its commands one at a time)
        churner = _start_loadgen(ctx, stack, port, build)
        server.call("start")
        loadgen.send("run", clients=active, duration=duration)
        churned = _connect(server, churner, churn, "churn")
        run_reply = loadgen.receive("run")
        churn_window = server.call("stop")
        stalls["churn"] = _stall_ms(server)
        stalled = server.call("stall")["stalls_over_20ms"]
    base_cost = baseline["server_cpu_us_per_heartbeat"]
    cost = loaded["server_cpu_us_per_heartbeat"]
    saturated = [name for name, w in (("baseline", baseline), ("with_idle", loaded))
                 if w["loadgen_cpu_share"] >= SATURATED]
    return {
        "idle_connections": idle,
        "active_connections": active,
        "rss_per_idle_connection_bytes": round((after["rss"] - before["rss"]) / idle),
        # objects a full collection traverses per idle connection, and how many of them the
        # server's gc.freeze() moved out of its way
        "gc_collectable_objects_per_idle_connection":
            round((after["gc_collectable"] - before["gc_collectable"]) / idle, 2),
        "gc_frozen_objects_per_idle_connection":
            round((after["gc_frozen"] - before["gc_frozen"]) / idle, 2),
        "hibernating": after["hibernating"],
        # how long the memory readings waited for every connection to hibernate (None: some
        # never did, the reading was taken anyway)
        "settled_in_s": {"before": before["settled_in_s"], "after": after["settled_in_s"]},
        "accepts_per_s": round(idle / opened["seconds"]) if opened["seconds"] else None,
        "periodic_cpu_share": round(quiet["cpu_s"] / quiet["wall_s"], 4),
        "heartbeat": {"baseline": baseline, "with_idle": loaded},
        "heartbeat_cost_ratio": round(cost / base_cost, 3) if cost and base_cost else None,
        "churn": {"accepted": churned["established"], "seconds": churned["seconds"],
                  "heartbeats_meanwhile": churn_window["count"],
                  "rtt_p99_ms": run_reply.get("rtt_p99_ms")},
        "stall_max_ms": stalls,
        "stall_max_ms_overall": max(stalls.values()),
        "stalls_over_20ms": stalled,
        "load_saturated": saturated,
    }


def run(idle_counts: list[int], active: int, duration: float,
        interpreted_loadgen: bool) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    build = load_loadgen(compiled=not interpreted_loadgen)
    results = [run_one(ctx, build, n, active, duration) for n in idle_counts]
    return {"benchmark": "scale", "server_compiled": is_compiled(),
            "loadgen_compiled": build.compiled, "duration_s": duration,
            "targets": {"rss_per_idle_connection_bytes": 4096, "heartbeat_cost_ratio": 1.15,
                        "stall_max_ms": 20.0},
            "runs": results}


def _idle_list(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of counts, got {text!r}") from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"counts must be at least 1, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--idle", type=_idle_list, default=[10_000, 100_000],
                        help="idle connection counts, comma-separated (default 10000,100000; "
                             "1000000 needs about 20 GiB for both sides and a long set-up)")
    parser.add_argument("--active", type=_positive_int, default=1000,
                        help="connections in the closed keepalive loop (default 1000)")
    parser.add_argument("--duration", type=_positive_float, default=5.0,
                        help="seconds per measured window (default 5)")
    parser.add_argument("--interpreted-loadgen", action="store_true",
                        help="run the load generator interpreted (costs more load-side CPU)")
    args = parser.parse_args(argv)

    def show(result: dict[str, Any]) -> None:
        for r in result["runs"]:
            print(f"N={r['idle_connections']}: {r['rss_per_idle_connection_bytes']} B/conn, "
                  f"heartbeat cost x{r['heartbeat_cost_ratio']}, stall max "
                  f"{r['stall_max_ms_overall']} ms, periodic CPU {r['periodic_cpu_share']}")

    return finish("scale", lambda: run(args.idle, args.active, args.duration,
                                       args.interpreted_loadgen), args.json, show)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())

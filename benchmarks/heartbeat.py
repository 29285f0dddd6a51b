"""Heartbeat throughput of the Quantum server per server CPU-second, against a bare UDP echo.

    python -m benchmarks.heartbeat --json [--clients 1000] [--duration 10] [--rounds 5]
                                   [--store memory|etcd] [--idle-connections 50000]
                                   [--metrics-scrape-interval 1.0] [--interpreted-loadgen]

Every server runs in its own process pinned to one core, the load generator
(`benchmarks.loadgen`) in another pinned to the other core. The generator is compiled with mypyc
on first use into a cache directory (`benchmarks.loadgen_build`; about 20 s, once per change of
the sources): the product's build does not compile it, and interpreted it costs more CPU than
the server it loads. `loadgen_compiled` in the JSON says which ran. The load is a closed loop: each
client sends its next protected keepalive when the previous one is acknowledged. The server
process measures its own CPU time (`time.process_time()`, every thread) and the heartbeats its
`ServerCounters` saw over the measured window only, so start-up and handshakes are excluded.
The same generator loads a bare uvloop echo server (`benchmarks.echo_server`) for the
baseline; `ratio` is heartbeats per server CPU-second over echoes per server CPU-second.

Both servers and both generators run side by side (the idle pair sleeps), and the measured time
is cut into `--rounds` windows that alternate between echo and Quantum: a machine whose speed
drifts during the run (shared hosts do) then slows both sides alike instead of whichever
happened to run second. The figures are totals over all windows; `ratio_per_round` shows the
spread.

Metrics: a third server, identical but for its Prometheus endpoint (`quantum_server.services`,
as `quantum-server` runs it), takes part in the same rounds while the orchestrator scrapes its
/metrics every `--metrics-scrape-interval` seconds, as a Prometheus would (and faster than the
usual 15 s), its window before or after the metrics-less server's in turn. `metrics_on_vs_off`
is its heartbeats per CPU-second over the metrics-less server's: what serving metrics costs the
per-packet path (the target is within 2 %); `metrics_on_vs_off_median` is the median round.
Two separate server processes differ by more than 2 % from round to round on a shared machine,
so the server also counts the CPU its scrapes take (the connections' walk and the rendering,
`quantum_server.services.NetworkServices.metrics_cpu_seconds`): `metrics_cpu_share` is that
part of the metrics-on server's CPU, the cost itself rather than a difference of two noisy
figures.

Memory: a fresh server gets `--idle-connections` established idle connections (each with its
session); the growth of its resident set size divided by that count is the cost of one, read
once right after the handshakes (`bytes_per_idle_connection_awake`) and once the quiet
connections have hibernated, i.e. released their cipher objects (`bytes_per_idle_connection`).

`--store etcd` runs the same load against a throwaway single-member etcd as well as against the
memory store, and reports etcd write RPCs over the window (puts, transactions, deletes, lease
grants, revokes and keep-alives, read from etcd's gRPC counters in /metrics) per 1000 sessions
per second, and the throughput relative to the memory store.

Prints one JSON object (with `--json`; otherwise a readable summary).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import multiprocessing
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack, suppress
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from benchmarks.echo_server import CpuWindow, rss_bytes, run_echo_server
from benchmarks.loadgen import pin_to_cpu, serve_commands
from benchmarks.loadgen_build import LoadgenBuild, load_loadgen
from benchmarks.report import BenchError, finish
from quantum.auth import AnonymousAuthenticator
from quantum.build import is_compiled
from quantum.keys import ServerKeyFile
from quantum_server.system import tune_collector
from server import QuantumServer, ServerConfig
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.store import Store

SERVER_CPU = 0
LOADGEN_CPU = 1
#: how long the orchestrator waits for a child's answer before calling the run failed
REPLY_TIMEOUT = 900.0
#: connections made before the memory baseline is read, so imports, pools and caches that
#: the first connections allocate are not charged to the idle ones
MEMORY_WARMUP = 200
#: etcd write RPCs, counted from /metrics: unary calls by their handled total (every result
#: code: a transaction whose compare failed still cost a raft round), lease keep-alives by the
#: messages received on their stream (the stream itself is one long call)
ETCD_WRITE_CALLS = frozenset({"Put", "Txn", "DeleteRange", "LeaseGrant", "LeaseRevoke"})
ETCD_STREAMED_WRITES = frozenset({"LeaseKeepAlive"})


# ------------------------------------------------------------------ the server-side runner


async def _server_main(pipe: Pipe, store_kind: str, etcd_endpoints: list[str],
                       max_connections: int, profile: str | None, metrics: bool) -> None:
    from session.logs import configure_logging

    configure_logging("console", "warning")
    store: Store
    if store_kind == "etcd":
        from session.etcd import EtcdStore

        etcd = EtcdStore(etcd_endpoints, prefix=f"/bench-{time.monotonic_ns()}")
        await etcd.start()
        store = etcd
    else:
        store = MemoryStore()
    with tempfile.TemporaryDirectory(prefix="quantum-bench-") as tmp:
        key, _ = ServerKeyFile.load_or_create(Path(tmp) / "server.key")
    manager = SessionManager(ManagerConfig(store=store))
    # idle connections must outlive the minute it takes to open 50,000 of them
    # all load comes from one loopback address: the per-source handshake rate limits, the
    # per-address connection cap and the retry-cookie threshold exist for the internet, not
    # for a load generator
    config = ServerConfig(host="127.0.0.1", port=0, idle_timeout=900.0,
                          max_connections=max_connections,
                          max_connections_per_address=max_connections,
                          handshake_rate=1e9, handshake_burst=1e9, retry_above_rate=1e9)
    server = QuantumServer(manager, key, AnonymousAuthenticator(), config)
    await server.start()
    services = await _start_metrics(server) if metrics else None
    tune_collector()  # as quantum-server does once set up
    window = CpuWindow(lambda: server.counters.heartbeats)
    requests = getattr(store, "requests", None)
    store_requests0 = 0
    metrics_cpu0 = 0.0
    profiler = cProfile.Profile() if profile else None
    pipe.send({"port": server.port,
               "metrics_port": services.metrics.port if services and services.metrics else 0})

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        nonlocal store_requests0, metrics_cpu0
        kind = command["cmd"]
        if kind == "start":
            store_requests0 = int(getattr(store, "requests", 0))
            metrics_cpu0 = services.metrics_cpu_seconds() if services is not None else 0.0
            window.start()
            if profiler is not None:
                profiler.enable()
            return {"ok": True}
        if kind == "stop":
            if profiler is not None and profile:
                profiler.disable()
                profiler.dump_stats(profile)
            reply: dict[str, Any] = {"ok": True, **window.stop()}
            if services is not None:
                reply["metrics_cpu_s"] = services.metrics_cpu_seconds() - metrics_cpu0
            if requests is not None:
                reply["store_requests"] = int(getattr(store, "requests", 0)) - store_requests0
            reply["snapshot"] = server.snapshot()
            return reply
        if kind == "memory":
            gc.collect()
            return {"ok": True, "rss": rss_bytes(), "connections": len(server.peers),
                    "sessions": await store.count(),
                    "hibernating": sum(p.conn.hibernating for p in server.peers.values()),
                    "settle_seconds": config.hibernate_after + config.stats_interval + 1.0}
        if kind == "quit":
            if services is not None:
                await services.stop()
            if command.get("graceful", True):
                await asyncio.wait_for(server.stop(), timeout=30.0)
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {kind!r}"}

    await serve_commands(pipe, handle)


async def _start_metrics(server: QuantumServer) -> Any:
    """The metrics endpoint alone (no gRPC API), wired as `quantum-server` wires it."""
    from quantum_server.cli import build_parser
    from quantum_server.services import NetworkServices

    args = build_parser().parse_args(["--no-grpc", "--metrics", "127.0.0.1:0"])
    with tempfile.TemporaryDirectory(prefix="quantum-bench-") as tmp:
        services = NetworkServices(args, Path(tmp) / "server.key")
    await services.start(server)
    return services


def run_bench_server(pipe: Pipe, cpu: int | None, store_kind: str, etcd_endpoints: list[str],
                     max_connections: int, profile: str | None = None,
                     metrics: bool = False) -> None:
    """Child-process entry point for the Quantum server under test; with `profile`, the
    measured window runs under cProfile (slower: figures are then only for finding hot spots)
    and its stats are written to that path."""
    pin_to_cpu(cpu)
    import uvloop

    uvloop.run(_server_main(pipe, store_kind, etcd_endpoints, max_connections, profile,
                            metrics))


# ------------------------------------------------------------------ the orchestrator


class Child:
    """A child process and its command pipe; `call` sends a command and waits for the reply."""

    def __init__(self, name: str, process: BaseProcess, pipe: Pipe) -> None:
        self.name = name
        self.process = process
        self.pipe = pipe

    def receive(self, step: str) -> dict[str, Any]:
        if not self.pipe.poll(REPLY_TIMEOUT):
            raise BenchError(f"{self.name}: no answer to {step!r} in {REPLY_TIMEOUT:.0f} s")
        try:
            reply: dict[str, Any] = self.pipe.recv()
        except EOFError:
            raise BenchError(f"{self.name} died during {step!r} "
                             f"(exit code {self.process.exitcode})") from None
        if reply.get("ok") is False:
            raise BenchError(f"{self.name}: {step} failed: {reply.get('error')}")
        return reply

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        self.pipe.send({"cmd": cmd, **args})
        return self.receive(cmd)

    def send(self, cmd: str, **args: Any) -> None:
        self.pipe.send({"cmd": cmd, **args})

    def stop(self, **args: Any) -> None:
        if self.process.is_alive():
            with suppress(BenchError, OSError):
                self.call("quit", **args)
            self.process.join(timeout=40.0)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout=5.0)
        self.pipe.close()


def _spawn(ctx: Any, name: str, target: Any, *args: Any) -> Child:
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)
    process.start()
    child.close()
    return Child(name, process, parent)


def _start_server(ctx: Any, stack: ExitStack, name: str, target: Any, *args: Any,
                  graceful: bool = True) -> tuple[Child, int]:
    server, started = _start_server_info(ctx, stack, name, target, *args, graceful=graceful)
    return server, int(started["port"])


def _start_server_info(ctx: Any, stack: ExitStack, name: str, target: Any, *args: Any,
                       graceful: bool = True) -> tuple[Child, dict[str, Any]]:
    server = _spawn(ctx, name, target, SERVER_CPU, *args)
    stack.callback(server.stop, graceful=graceful)
    return server, server.receive("start-up")


class Scraper:
    """Polls a /metrics URL every `interval` seconds from a thread, as Prometheus would."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.scrapes = 0
        self.failures = 0
        self.last_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5.0) as reply:
                    reply.read()
                self.scrapes += 1
            except OSError:
                self.failures += 1
            self.last_seconds = time.perf_counter() - started


def _start_loadgen(ctx: Any, stack: ExitStack, port: int, build: LoadgenBuild) -> Child:
    loadgen = _spawn(ctx, "loadgen", build.module.run_loadgen, ("127.0.0.1", port), LOADGEN_CPU)
    stack.callback(loadgen.stop)
    return loadgen


def _measure(server: Child, loadgen: Child, clients: int, duration: float) -> dict[str, Any]:
    """One closed-loop window: the server's counters and CPU over exactly `duration` seconds,
    the generator's view (sent, answered, RTTs) over the run and its drain."""
    server.call("start")
    loadgen.send("run", clients=clients, duration=duration, pool=True)
    time.sleep(duration)
    window = server.call("stop")
    client_side = loadgen.receive("run")
    return {"server": window, "clients": client_side}


def _combine(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Several windows of one target as if they were one: totals, and RTT percentiles over
    every round trip of every window."""
    server: dict[str, Any] = {key: sum(w["server"][key] for w in windows)
                              for key in ("count", "cpu_s", "wall_s")}
    server["per_cpu_s"] = server["count"] / server["cpu_s"] if server["cpu_s"] > 0 else 0.0
    server["utilisation"] = server["cpu_s"] / server["wall_s"] if server["wall_s"] > 0 else 0.0
    if all("metrics_cpu_s" in w["server"] for w in windows):
        server["metrics_cpu_s"] = sum(w["server"]["metrics_cpu_s"] for w in windows)
    if all("store_requests" in w["server"] for w in windows):
        server["store_requests"] = sum(w["server"]["store_requests"] for w in windows)
    clients: dict[str, Any] = {key: sum(w["clients"][key] for w in windows)
                               for key in ("sent", "acknowledged", "unanswered", "timed_out",
                                           "late", "duration_s", "loadgen_cpu_s")}
    clients["duration_s"] = round(clients["duration_s"], 3)
    clients["loadgen_cpu_s"] = round(clients["loadgen_cpu_s"], 3)
    # the generator pooled the round trips of its windows: its last answer covers them all
    clients["rtt_p50_ms"] = windows[-1]["clients"]["pooled_rtt_p50_ms"]
    clients["rtt_p99_ms"] = windows[-1]["clients"]["pooled_rtt_p99_ms"]
    return {"server": server, "clients": clients}


def run_against_echo(ctx: Any, build: LoadgenBuild, clients: int, duration: float, rounds: int,
                     profile: str | None = None, scrape_interval: float = 0.0
                     ) -> tuple[dict[str, Any], dict[str, Any], list[float],
                                dict[str, Any] | None]:
    """The echo baseline and the Quantum server (memory store), measured in alternating
    windows: `rounds` of each, `duration / rounds` seconds apiece. With `scrape_interval`, a
    third server serving metrics (scraped that often) joins every round. Returns the combined
    echo run, the combined Quantum run, each round's ratio, and the metrics-on run or None."""
    with ExitStack() as stack:
        echo_server, echo_port = _start_server(ctx, stack, "echo-server", run_echo_server)
        echo_gen = _start_loadgen(ctx, stack, echo_port, build)
        echo_gen.call("echo_clients", count=clients)
        server, port = _start_server(ctx, stack, "quantum-server-memory", run_bench_server,
                                     "memory", [], clients + 1000,
                                     f"{profile}.memory" if profile else None)
        gen = _start_loadgen(ctx, stack, port, build)
        handshakes = gen.call("connect", count=clients, user_prefix="hb-memory")
        metered: tuple[Child, Child, Scraper] | None = None
        if scrape_interval > 0:
            on_server, started = _start_server_info(
                ctx, stack, "quantum-server-metrics", run_bench_server, "memory", [],
                clients + 1000, None, True)
            on_gen = _start_loadgen(ctx, stack, int(started["port"]), build)
            on_gen.call("connect", count=clients, user_prefix="hb-metrics")
            scraper = stack.enter_context(Scraper(
                f"http://127.0.0.1:{started['metrics_port']}/metrics", scrape_interval))
            metered = (on_server, on_gen, scraper)
        echo_windows, quantum_windows, on_windows, ratios, on_vs_off = [], [], [], [], []
        for index in range(rounds):
            # the metrics-on window goes before the metrics-off one every other round, so
            # neither always follows the other
            if metered is not None and index % 2:
                on_windows.append(_measure(metered[0], metered[1], clients, duration / rounds))
            echo_windows.append(_measure(echo_server, echo_gen, clients, duration / rounds))
            quantum_windows.append(_measure(server, gen, clients, duration / rounds))
            echo_rate = _per_cpu(echo_windows[-1])
            ratios.append(round(_per_cpu(quantum_windows[-1]) / echo_rate, 3)
                          if echo_rate else 0.0)
            if metered is not None:
                if not index % 2:
                    on_windows.append(_measure(metered[0], metered[1], clients,
                                               duration / rounds))
                off_rate = _per_cpu(quantum_windows[-1])
                on_vs_off.append(round(_per_cpu(on_windows[-1]) / off_rate, 3)
                                 if off_rate else 0.0)
        quantum = _combine(quantum_windows)
        quantum["handshakes"] = handshakes
        metrics_run: dict[str, Any] | None = None
        if metered is not None:
            metrics_run = _combine(on_windows)
            metrics_run["on_vs_off_per_round"] = on_vs_off
            metrics_run["scrapes"] = metered[2].scrapes
            metrics_run["scrape_failures"] = metered[2].failures
            metrics_run["scrape_interval_s"] = scrape_interval
        return _combine(echo_windows), quantum, ratios, metrics_run


def run_heartbeats(ctx: Any, build: LoadgenBuild, clients: int, duration: float, store: str,
                   etcd_endpoints: list[str], profile: str | None = None) -> dict[str, Any]:
    """One window of the Quantum server on `store` (etcd: also counting etcd's writes)."""
    with ExitStack() as stack:
        server, port = _start_server(ctx, stack, f"quantum-server-{store}", run_bench_server,
                                     store, etcd_endpoints, clients + 1000,
                                     f"{profile}.{store}" if profile else None)
        loadgen = _start_loadgen(ctx, stack, port, build)
        before_handshakes = _etcd_writes(etcd_endpoints) if etcd_endpoints else 0.0
        handshakes = loadgen.call("connect", count=clients, user_prefix=f"hb-{store}")
        metrics0 = _etcd_writes(etcd_endpoints) if etcd_endpoints else 0.0
        result = _combine([_measure(server, loadgen, clients, duration)])
        if etcd_endpoints:
            result["etcd_writes"] = _etcd_writes(etcd_endpoints) - metrics0
            result["etcd_writes_handshakes"] = metrics0 - before_handshakes
        result["handshakes"] = handshakes
        return result


def run_idle(ctx: Any, build: LoadgenBuild, count: int) -> dict[str, Any]:
    with ExitStack() as stack:
        server, port = _start_server(ctx, stack, "quantum-server-idle", run_bench_server,
                                     "memory", [], count + MEMORY_WARMUP + 1000, graceful=False)
        loadgen = _start_loadgen(ctx, stack, port, build)
        loadgen.call("connect", count=MEMORY_WARMUP, user_prefix="warmup")
        time.sleep(1.0)  # the warm-up connections' last ACKs settle
        before = server.call("memory")
        handshakes = loadgen.call("connect", count=count, user_prefix="idle")
        time.sleep(2.0)  # delayed ACKs of the session frames arrive; nothing left in flight
        awake = server.call("memory")
        # idle connections release their cipher objects after `hibernate_after` s of quiet
        # (checked every `stats_interval`): the settled figure is what idle ones cost
        time.sleep(awake["settle_seconds"])
        after = server.call("memory")
        added = after["connections"] - before["connections"]
        if added != count or after["sessions"] - before["sessions"] != count:
            raise BenchError(f"expected {count} new idle connections and sessions, the server "
                             f"has {added} and {after['sessions'] - before['sessions']}")
        return {"idle_connections": count,
                "bytes_per_idle_connection": round((after["rss"] - before["rss"]) / count),
                "bytes_per_idle_connection_awake": round((awake["rss"] - before["rss"]) / count),
                # every connection the server holds (warm-up ones too) and how many hibernate
                "server_connections": after["connections"],
                "hibernating_connections": after["hibernating"],
                "rss_before_mib": round(before["rss"] / 2**20, 1),
                "rss_after_mib": round(after["rss"] / 2**20, 1),
                "handshake_seconds": handshakes["seconds"],
                "handshakes_per_s": round(count / handshakes["seconds"])
                if handshakes["seconds"] else None}


_METRIC_LINE = re.compile(r'^(grpc_server_handled_total|grpc_server_msg_received_total)\{.*'
                          r'grpc_method="(\w+)".*\}\s+([0-9.eE+-]+)$')


def _etcd_writes(endpoints: list[str]) -> float:
    """Write RPCs etcd has served so far (see ETCD_WRITE_CALLS), summed over the members."""
    total = 0.0
    for endpoint in endpoints:
        with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5.0) as resp:
            text = resp.read().decode("utf-8", "replace")
        for line in text.splitlines():
            match = _METRIC_LINE.match(line)
            if match is None:
                continue
            metric, method, value = match.groups()
            wanted = ETCD_WRITE_CALLS if metric == "grpc_server_handled_total" \
                else ETCD_STREAMED_WRITES
            if method in wanted:
                total += float(value)
    return total


# ------------------------------------------------------------------ the report


def _per_cpu(run: dict[str, Any]) -> float:
    return float(run["server"]["per_cpu_s"])


def report(clients: int, duration: float, store: str, echo: dict[str, Any],
           runs: dict[str, dict[str, Any]], idle: dict[str, Any] | None,
           ratios: list[float], loadgen: LoadgenBuild,
           metrics_run: dict[str, Any] | None = None) -> dict[str, Any]:
    main_run = runs[store]
    server, client_side = main_run["server"], main_run["clients"]
    heartbeats_per_cpu = _per_cpu(main_run)
    echo_per_cpu = _per_cpu(echo)
    out: dict[str, Any] = {
        "heartbeats": int(server["count"]),
        "server_cpu_s": round(server["cpu_s"], 3),
        "heartbeats_per_cpu_s": round(heartbeats_per_cpu),
        "baseline_echo_per_cpu_s": round(echo_per_cpu),
        "ratio": round(heartbeats_per_cpu / echo_per_cpu, 3) if echo_per_cpu else None,
        "rtt_p50_ms": client_side["rtt_p50_ms"],
        "rtt_p99_ms": client_side["rtt_p99_ms"],
        "unanswered": client_side["unanswered"],
        "clients": clients,
        "duration_s": duration,
        "rounds": len(ratios),
        "ratio_per_round": ratios,
        "store": store,
        # the protocol core the server ran: mypyc-compiled (setup.py) or plain Python
        "compiled": is_compiled(),
        # the load generator: compiled by the benchmark (benchmarks/loadgen_build.py), or not
        "loadgen_compiled": loadgen.compiled,
        "loadgen_build": loadgen.how,
        "server_cpu_utilisation": round(server["utilisation"], 3),
        "heartbeats_per_s": round(server["count"] / server["wall_s"]),
        "loadgen_cpu_s": client_side["loadgen_cpu_s"],
        "keepalives_sent": client_side["sent"],
        "keepalives_timed_out": client_side["timed_out"],
        "baseline_echo_utilisation": round(echo["server"]["utilisation"], 3),
        "baseline_echo_per_s": round(echo["server"]["count"] / echo["server"]["wall_s"]),
        "baseline_rtt_p50_ms": echo["clients"]["rtt_p50_ms"],
        "handshakes_per_s": round(clients / main_run["handshakes"]["seconds"])
        if main_run["handshakes"]["seconds"] else None,
    }
    if metrics_run is not None:
        on_per_cpu = _per_cpu(metrics_run)
        memory_per_cpu = _per_cpu(runs["memory"])
        out["metrics_on_heartbeats_per_cpu_s"] = round(on_per_cpu)
        out["ratio_metrics_on"] = round(on_per_cpu / echo_per_cpu, 3) if echo_per_cpu else None
        out["ratio_metrics_off"] = round(memory_per_cpu / echo_per_cpu, 3) \
            if echo_per_cpu else None
        out["metrics_on_vs_off"] = round(on_per_cpu / memory_per_cpu, 3) \
            if memory_per_cpu else None
        out["metrics_on_vs_off_per_round"] = metrics_run["on_vs_off_per_round"]
        # robust to the odd disturbed round on a shared machine
        out["metrics_on_vs_off_median"] = statistics.median(metrics_run["on_vs_off_per_round"])
        # what the scrapes themselves cost, counted on the server (the connections' walks and
        # the rendering): the part of the metrics-on server's CPU serving metrics took, which
        # the run-to-run A/B above can only bound within its noise
        metrics_cpu = metrics_run["server"].get("metrics_cpu_s")
        out["metrics_cpu_share"] = (round(metrics_cpu / metrics_run["server"]["cpu_s"], 4)
                                    if metrics_cpu is not None and metrics_run["server"]["cpu_s"]
                                    else None)
        out["metrics_scrape_interval_s"] = metrics_run["scrape_interval_s"]
        out["metrics_scrapes"] = metrics_run["scrapes"]
        out["metrics_scrape_failures"] = metrics_run["scrape_failures"]
    if idle is not None:
        out.update(idle)
    else:
        out["idle_connections"] = 0
        out["bytes_per_idle_connection"] = None
    if store == "etcd":
        etcd_run = runs["etcd"]
        sessions_per_s = clients * etcd_run["server"]["wall_s"] / 1000
        out["etcd_writes"] = int(etcd_run["etcd_writes"])
        # writes while the sessions were created: shows the counters are read at all
        out["etcd_writes_per_session_created"] = round(
            etcd_run["etcd_writes_handshakes"] / clients, 2)
        out["etcd_writes_per_1000_sessions_per_s"] = round(
            etcd_run["etcd_writes"] / sessions_per_s, 3)
        out["store_requests"] = etcd_run["server"].get("store_requests")
        memory_per_cpu = _per_cpu(runs["memory"])
        out["memory_heartbeats_per_cpu_s"] = round(memory_per_cpu)
        out["ratio_vs_memory"] = round(heartbeats_per_cpu / memory_per_cpu, 3) \
            if memory_per_cpu else None
    return out


def run(clients: int, duration: float, store: str, idle_connections: int,
        profile: str | None = None, rounds: int = 5,
        scrape_interval: float = 1.0, compile_loadgen: bool = True) -> dict[str, Any]:
    build = load_loadgen(compile_loadgen)
    if not build.compiled and compile_loadgen:
        print(f"heartbeat benchmark: the load generator runs {build.how}", file=sys.stderr)
    ctx = multiprocessing.get_context("spawn")
    echo, memory, ratios, metrics_run = run_against_echo(ctx, build, clients, duration, rounds,
                                                         profile, scrape_interval)
    runs = {"memory": memory}
    if store == "etcd":
        from benchmarks.etcd_util import running_etcd

        with running_etcd(1) as cluster:
            runs["etcd"] = run_heartbeats(ctx, build, clients, duration, "etcd", cluster.endpoints,
                                          profile)
    idle = run_idle(ctx, build, idle_connections) if idle_connections > 0 else None
    return report(clients, duration, store, echo, runs, idle, ratios, build, metrics_run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.heartbeat",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--clients", type=_positive_int, default=1000,
                        help="clients in the closed loop (default 1000)")
    parser.add_argument("--duration", type=_positive_float, default=10.0,
                        help="seconds of measured load per run (default 10)")
    parser.add_argument("--rounds", type=_positive_int, default=5,
                        help="alternating echo/Quantum windows the duration is cut into "
                             "(default 5)")
    parser.add_argument("--store", choices=("memory", "etcd"), default="memory",
                        help="session store; etcd also runs memory for comparison")
    parser.add_argument("--idle-connections", type=_non_negative_int, default=50_000,
                        help="idle connections for the memory figure (default 50000; 0 skips)")
    parser.add_argument("--client", choices=("python", "c"), default="python",
                        help="load side: the compiled Python client (default), or c to compare "
                             "it with libquantum's C client on one server (benchmarks.c_loadgen)")
    parser.add_argument("--metrics-scrape-interval", type=_non_negative_float, default=1.0,
                        metavar="SECONDS",
                        help="also run a server serving metrics, scraped this often, and "
                             "report its cost (default 1; 0 skips it)")
    parser.add_argument("--interpreted-loadgen", action="store_true",
                        help="run the load generator as plain Python instead of compiling it "
                             "with mypyc on first use (it then costs more CPU than the server)")
    parser.add_argument("--profile", metavar="PATH", default=None,
                        help="cProfile the server's measured window into PATH.<store> "
                             "(slows the server: use the figures only to find hot spots)")
    args = parser.parse_args(argv)

    def produce() -> dict[str, Any]:
        if args.client == "c":
            from benchmarks.c_loadgen import run_client_comparison

            return run_client_comparison(args.clients, args.duration, args.rounds,
                                         not args.interpreted_loadgen)
        return run(args.clients, args.duration, args.store, args.idle_connections,
                   args.profile, args.rounds, args.metrics_scrape_interval,
                   not args.interpreted_loadgen)

    return finish("heartbeat", produce, args.json)




if __name__ == "__main__":
    sys.exit(main())

"""The heartbeat benchmark's load side on libquantum (clients/c) instead of the Python client.

    python -m benchmarks.heartbeat --client c --json [--clients 1000] [--duration 10]

One Quantum server (memory store, pinned to one core) is loaded in alternating windows by the
compiled Python load generator (`benchmarks.loadgen`) and by `quantum-loadgen`, the same
closed loop of keepalives written in C on libquantum's sans-I/O connections (pinned to the
other core). Reported per load side: the server's heartbeats per server CPU-second and the
load generator's CPU per keepalive round trip; `c_client_cpu_ratio` is how many times less
CPU a round trip costs the C client than the Python one (target: at least 5).

`run_c_loadgen` is the child-process entry point: it speaks the orchestrator's pipe protocol
(the same commands and replies as `benchmarks.loadgen.run_loadgen`) and relays each command
to the C program as a line on its stdin, reading its one-line JSON answer.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import time
from contextlib import ExitStack
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

from benchmarks.heartbeat import (
    LOADGEN_CPU,
    Child,
    _combine,
    _measure,
    _per_cpu,
    _spawn,
    _start_loadgen,
    _start_server,
    run_bench_server,
)
from benchmarks.loadgen import pin_to_cpu
from benchmarks.loadgen_build import load_loadgen
from benchmarks.report import BenchError
from quantum.build import is_compiled

ROOT = Path(__file__).resolve().parent.parent
C_DIR = ROOT / "clients" / "c"
LOADGEN = C_DIR / "build" / "quantum-loadgen"
#: the round-trip CPU advantage the C client is meant to have over the Python one
TARGET_RATIO = 5.0


def build_loadgen() -> Path:
    """`make -C clients/c build/quantum-loadgen` (a no-op when it is up to date)."""
    try:
        done = subprocess.run(["make", "-C", str(C_DIR), "build/quantum-loadgen"],
                              capture_output=True, text=True, timeout=600)
    except OSError as exc:
        raise BenchError(f"cannot run make to build the C load generator: {exc}") from None
    if done.returncode != 0:
        raise BenchError("building clients/c/build/quantum-loadgen failed (it needs a C "
                         f"compiler and libsodium-dev):\n{done.stderr[-2000:]}")
    return LOADGEN


def _command_line(command: dict[str, Any]) -> str:
    kind = command["cmd"]
    if kind == "connect":
        return (f"connect {int(command['count'])} {command.get('user_prefix', 'bench')} "
                f"{int(command.get('in_flight', 256))}")
    if kind == "run":
        pool = " pool" if command.get("pool") else ""
        return f"run {int(command['clients'])} {float(command['duration'])}{pool}"
    if kind == "quit":
        return "quit"
    raise ValueError(f"the C load generator does not do {kind!r}")


def run_c_loadgen(pipe: Pipe, server_addr: tuple[str, int], cpu: int | None) -> None:
    """Child-process entry point: pin (the C program inherits it), then relay commands."""
    pin_to_cpu(cpu)
    proc = subprocess.Popen([str(LOADGEN), server_addr[0], str(server_addr[1])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        while True:
            command: dict[str, Any] = pipe.recv()
            try:
                line = _command_line(command)
            except ValueError as exc:
                pipe.send({"ok": False, "error": str(exc)})
                continue
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
            if not answer:
                pipe.send({"ok": False, "error": f"quantum-loadgen exited ({proc.wait()})"})
                return
            reply: dict[str, Any] = json.loads(answer)
            reply["ok"] = "error" not in reply
            pipe.send(reply)
            if command["cmd"] == "quit":
                return
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _cpu_times(pid: int | None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far, from /proc (Linux)."""
    if pid is None:
        return 0.0, 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _measure_split(server: Child, loadgen: Child, clients: int, duration: float,
                   python_side: bool) -> dict[str, Any]:
    """One window (heartbeat._measure) plus the load generator's user / system CPU split:
    read from /proc for the Python generator, reported by the C one itself."""
    pid = loadgen.process.pid if python_side else None
    user0, system0 = _cpu_times(pid)
    window = _measure(server, loadgen, clients, duration)
    user1, system1 = _cpu_times(pid)
    side = window["clients"]
    if python_side:
        side["loadgen_user_cpu_s"], side["loadgen_system_cpu_s"] = user1 - user0, system1 - system0
    return window


def _load_side(windows: list[dict[str, Any]]) -> dict[str, Any]:
    run = _combine(windows)
    server, clients = run["server"], run["clients"]
    round_trips = clients["acknowledged"]
    user = sum(w["clients"]["loadgen_user_cpu_s"] for w in windows)
    system = sum(w["clients"]["loadgen_system_cpu_s"] for w in windows)

    def per_trip(seconds: float) -> float | None:
        return round(seconds / round_trips * 1e6, 3) if round_trips else None

    return {
        "heartbeats": int(server["count"]),
        "server_cpu_s": round(server["cpu_s"], 3),
        "heartbeats_per_cpu_s": round(_per_cpu(run)),
        "heartbeats_per_s": round(server["count"] / server["wall_s"]) if server["wall_s"] else 0,
        "round_trips": round_trips,
        "loadgen_cpu_s": clients["loadgen_cpu_s"],
        "loadgen_cpu_us_per_round_trip": per_trip(clients["loadgen_cpu_s"]),
        # the kernel's share (system calls, and loopback delivery charged to the sender) is
        # most of a keepalive's cost on either side: the split shows the client's own part
        "loadgen_user_cpu_us_per_round_trip": per_trip(user),
        "loadgen_system_cpu_us_per_round_trip": per_trip(system),
        "rtt_p50_ms": clients["rtt_p50_ms"],
        "rtt_p99_ms": clients["rtt_p99_ms"],
        "unanswered": clients["unanswered"],
        "keepalives_timed_out": clients["timed_out"],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def run_client_comparison(clients: int, duration: float, rounds: int,
                          compile_loadgen: bool = True) -> dict[str, Any]:
    """One server, two load sides, `rounds` alternating windows each."""
    build_loadgen()
    build = load_loadgen(compile_loadgen)
    ctx = multiprocessing.get_context("spawn")
    with ExitStack() as stack:
        server, port = _start_server(ctx, stack, "quantum-server-memory", run_bench_server,
                                     "memory", [], 2 * clients + 1000)
        python_gen = _start_loadgen(ctx, stack, port, build)
        c_gen: Child = _spawn(ctx, "c-loadgen", run_c_loadgen, ("127.0.0.1", port), LOADGEN_CPU)
        stack.callback(c_gen.stop)
        python_gen.call("connect", count=clients, user_prefix="hb-python")
        handshakes = c_gen.call("connect", count=clients, user_prefix="hb-c")
        python_windows, c_windows = [], []
        started = time.perf_counter()
        for _ in range(rounds):
            python_windows.append(_measure_split(server, python_gen, clients, duration / rounds,
                                                 True))
            c_windows.append(_measure_split(server, c_gen, clients, duration / rounds, False))
        python_load, c_load = _load_side(python_windows), _load_side(c_windows)
        c_load["gso"] = all(w["clients"].get("gso") for w in c_windows)
    py_us, c_us = (python_load["loadgen_cpu_us_per_round_trip"],
                   c_load["loadgen_cpu_us_per_round_trip"])
    return {
        "client": "c",
        "clients": clients,
        "duration_s": duration,
        "rounds": rounds,
        "compiled": is_compiled(),
        "python_load": python_load,
        "c_load": c_load,
        # how many times less CPU a keepalive round trip costs the C client (all of it, and
        # its user-space part alone)
        "c_client_cpu_ratio": _ratio(py_us, c_us),
        "c_client_user_cpu_ratio": _ratio(python_load["loadgen_user_cpu_us_per_round_trip"],
                                          c_load["loadgen_user_cpu_us_per_round_trip"]),
        "target_ratio": TARGET_RATIO,
        # the server's throughput per CPU-second under each load side (C over Python)
        "server_heartbeats_per_cpu_s_ratio": round(
            c_load["heartbeats_per_cpu_s"] / python_load["heartbeats_per_cpu_s"], 3)
        if python_load["heartbeats_per_cpu_s"] else None,
        "c_handshakes_per_s": round(clients / handshakes["seconds"])
        if handshakes["seconds"] else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }

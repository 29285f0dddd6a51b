"""Smoke test of the heartbeat benchmark: the real thing, run tiny (a few clients, ~1 s).

It runs `python -m benchmarks.heartbeat` as a user would, in a subprocess, so the server, the
echo baseline and the load generator each get their own process exactly as in a full run.
Figures are not judged here (performance is measured, never asserted); what must hold at any
size is that every field is reported, every keepalive was answered, and the counts agree.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks.loadgen
from tests.test_server import running_server

ROOT = Path(__file__).resolve().parent.parent

REQUIRED = {
    "heartbeats": int,
    "server_cpu_s": float,
    "heartbeats_per_cpu_s": int,
    "baseline_echo_per_cpu_s": int,
    "ratio": float,
    "rtt_p50_ms": float,
    "rtt_p99_ms": float,
    "unanswered": int,
    "clients": int,
    "duration_s": float,
    "store": str,
    "idle_connections": int,
    "bytes_per_idle_connection": int,
    "bytes_per_idle_connection_awake": int,
    "server_connections": int,
    "hibernating_connections": int,
    "server_cpu_utilisation": float,
    "compiled": bool,
    "loadgen_compiled": bool,
    "loadgen_build": str,
    "rounds": int,
    "ratio_per_round": list,
}


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks.heartbeat", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_tiny_run_reports_every_field_and_answers_every_heartbeat() -> None:
    # (the compiled generator is tested in test_loadgen_build.py: this run does not wait for
    # its build)
    done = _bench("--json", "--clients", "4", "--duration", "1", "--rounds", "2",
                  "--idle-connections", "40", "--metrics-scrape-interval", "0.1",
                  "--interpreted-loadgen")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for name, kind in REQUIRED.items():
        assert isinstance(result.get(name), kind), f"{name}: {result.get(name)!r}"
    assert result["unanswered"] == 0
    assert result["keepalives_timed_out"] == 0
    assert result["clients"] == 4 and result["store"] == "memory"
    assert not result["loadgen_compiled"]
    # echo and Quantum alternated in two windows each; every window measured something
    assert result["rounds"] == 2 and len(result["ratio_per_round"]) == 2
    assert all(r > 0 for r in result["ratio_per_round"])
    assert result["idle_connections"] == 40
    assert result["heartbeats"] > 0 and result["server_cpu_s"] > 0
    # the server counted the keepalives the clients sent within its window, no more
    assert result["heartbeats"] <= result["keepalives_sent"]
    # the derived figures are what their names say (inputs are rounded, hence the slack)
    rate = result["heartbeats"] / result["server_cpu_s"]
    assert abs(result["heartbeats_per_cpu_s"] - rate) <= 0.01 * rate
    ratio = result["heartbeats_per_cpu_s"] / result["baseline_echo_per_cpu_s"]
    assert abs(result["ratio"] - ratio) <= 0.002
    assert 0 < result["rtt_p50_ms"] <= result["rtt_p99_ms"]
    # every connection went quiet long enough to release its ciphers
    assert result["hibernating_connections"] == result["server_connections"] >= 40
    # the metrics-serving server ran the same rounds while being scraped
    assert len(result["metrics_on_vs_off_per_round"]) == 2
    assert result["metrics_scrapes"] > 0 and result["metrics_scrape_failures"] == 0
    assert result["metrics_on_vs_off"] > 0 and result["ratio_metrics_on"] > 0
    assert min(result["metrics_on_vs_off_per_round"]) <= result["metrics_on_vs_off_median"]
    assert result["ratio_metrics_off"] == result["ratio"]


def test_bad_arguments_are_refused_with_a_reason() -> None:
    done = _bench("--clients", "0")
    assert done.returncode == 2
    assert "--clients: must be at least 1, got 0" in done.stderr


async def test_the_generator_moves_its_clients_out_of_the_collectors_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every GC_FREEZE_AFTER handshakes the generator freezes what it holds, as the server
    does: at a million clients a full collection would otherwise stop it for seconds."""
    monkeypatch.setattr(benchmarks.loadgen, "GC_FREEZE_AFTER", 3)
    async with running_server() as h:
        gen = benchmarks.loadgen.LoadGenerator(("127.0.0.1", h.port))
        await gen.open()
        frozen = gc.get_freeze_count()
        try:
            reply = await gen.establish(7, in_flight=7, fec=False)
            assert reply["established"] == 7
            after_six = gc.get_freeze_count()
            assert after_six > frozen  # frozen at the third and the sixth handshake
            ids = {id(o) for o in gc.get_objects()}
            held = [c for c in gen.clients.values() if id(c) not in ids]
            assert len(held) >= 6  # the first six clients are no longer collected
        finally:
            gen.close()
            gc.unfreeze()

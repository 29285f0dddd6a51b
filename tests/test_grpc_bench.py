"""Smoke test of the gRPC benchmark: the real thing, run tiny, as a user runs it. Figures are
not judged (performance is measured, never asserted); every field must be there and every
call must have succeeded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("qps", "baseline_qps", "ratio", "ratio_per_round", "p50_ms", "p99_ms",
          "baseline_p99_ms", "ratio_per_cpu", "server_cpu_utilisation", "calls", "errors")


def test_tiny_run_reports_both_methods_against_the_baseline() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.grpc_bench", "--json",
                           "--callers", "4", "--channels", "2", "--duration", "0.8",
                           "--rounds", "2", "--sessions", "20"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for method in ("heartbeat", "get_session"):
        figures = result[method]
        assert set(FIELDS) <= set(figures), method
        assert figures["errors"] == 0 and figures["calls"] > 0
        assert len(figures["ratio_per_round"]) == 2
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
        assert figures["qps"] > 0 and figures["baseline_qps"] > 0
    assert result["callers"] == 4 and result["target_ratio"] == 0.7

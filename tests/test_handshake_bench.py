"""Smoke test of the handshake benchmark: the real thing, run tiny, in a subprocess as a user
would run it. Figures are not judged (performance is measured, never asserted); every field
must be reported and agree with the others."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_a_tiny_handshake_run_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.handshake", "--json", "--connections", "60",
         "--rounds", "2", "--interpreted-loadgen"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert "accepting 2 x 60 connections" in done.stderr  # progress, on stderr
    assert result["connections_per_round"] == 60 and result["rounds"] == 2
    assert len(result["server_us_per_round"]) == len(result["background_share_per_round"]) == 2
    assert all(0 <= share < 1 for share in result["background_share_per_round"])
    floor, sans_io, server = result["floor_us"], result["sans_io_us"], result["server_us"]
    assert min(floor, sans_io, server) > 0
    assert result["sans_io_vs_floor"] == pytest.approx(floor / sans_io, abs=0.002)
    assert result["server_vs_floor"] == pytest.approx(floor / server, abs=0.002)
    assert server == pytest.approx(statistics.median(result["server_us_per_round"]), abs=0.1)
    assert result["server_handshakes_per_cpu_s"] == pytest.approx(1e6 / server, rel=0.01)
    assert result["loadgen_compiled"] is False and result["target"] == 0.7


@pytest.mark.parametrize("flag", ["--connections", "--rounds"])
def test_a_bad_count_is_refused_with_exit_2(flag: str) -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.handshake", flag, "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert flag in done.stderr

"""Smoke test of the restart benchmark, run tiny as a user would (`python -m benchmarks.restart
--json --sessions 300`): every figure is reported and every session and blob came back.
Figures are not judged (performance is measured, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_tiny_restart_run_reports_every_figure() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.restart", "--json", "--sessions",
                           "300", "--retained-fraction", "0.5", "--blob-bytes", "64"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert (result["sessions"], result["retained"]) == (300, 150)
    assert (result["sessions_restored"], result["retained_restored"]) == (300, 150)
    assert result["snapshot_bytes"] > 300 * 200 + 150 * 64
    for name in ("stop_s", "start_s", "restart_s", "write_s", "load_s", "stop_empty_s",
                 "start_empty_s", "fill_baseline_s", "load_vs_fill"):
        assert isinstance(result[name], float) and result[name] >= 0, name


def test_bad_figures_are_refused_with_exit_2() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.restart", "--sessions", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--sessions must be at least 1" in done.stderr

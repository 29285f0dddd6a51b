"""Smoke test of the scale benchmark: the real thing, run tiny (50 idle + 20 active connections,
windows of 0.5 s), as a user would run it, in a subprocess. Figures are not judged (performance
is measured, never asserted); every field must be reported and the counts must agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_a_tiny_scale_run_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--json", "--idle", "50", "--active", "20",
         "--duration", "0.5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    (run,) = result["runs"]
    assert run["idle_connections"] == 50 and run["active_connections"] == 20
    assert run["hibernating"] == 70  # every connection, active ones too, once quiet
    assert run["churn"]["accepted"] == 5
    assert run["heartbeat"]["baseline"]["heartbeats"] > 0
    assert run["heartbeat"]["with_idle"]["heartbeats"] > 0
    assert isinstance(run["heartbeat_cost_ratio"], float)
    assert set(run["stall_max_ms"]) == {"accept_active", "loop_baseline", "accept_idle",
                                        "settle", "quiet", "loop_with_idle", "churn"}
    assert run["stall_max_ms_overall"] == max(run["stall_max_ms"].values())
    assert isinstance(run["load_saturated"], list)


@pytest.mark.parametrize("idle", ["0", "ten", "10,-1", ""])
def test_a_bad_idle_list_is_refused_with_exit_2(idle: str) -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--idle", idle],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--idle" in done.stderr

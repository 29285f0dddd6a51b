"""Smoke test of the reconnect benchmark: the real thing, run tiny, in-process. Figures are
not judged (performance is measured, never asserted); every resume must have continued its
streams and every field must be there, the restart's included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import reconnect

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_run_reports_resume_latency_against_a_fresh_connect() -> None:
    # a process of its own, as a user runs it: the benchmark configures logging for its process
    done = subprocess.run([sys.executable, "-m", "benchmarks.reconnect", "--json",
                           "--resumes", "3", "--dark", "0.3", "--restart-sessions", "200"],
                          cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    figures = result["reconnect"]
    assert figures["resumes"] == 3 and figures["carried"] == 3 and figures["data_lost"] == 0
    for name in ("to_server_ms", "round_trip_ms", "fresh_connect_ms"):
        assert 0 < figures[name]["p50"] <= figures[name]["p99"], name
    assert figures["ratio_p50"] > 0
    # the server's restart with the snapshot (benchmarks.restart), under its key
    restart = result["restart"]
    assert restart["sessions"] == restart["sessions_restored"] == 200


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        reconnect.main(["--dark", "0.1"])
    assert exited.value.code == 2
    assert "--dark above 0.25 s" in capsys.readouterr().err

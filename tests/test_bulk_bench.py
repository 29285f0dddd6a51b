"""Smoke test of the bulk benchmark: the real thing, run tiny (one mebibyte), in a subprocess as
a user would run it, aioquic included (it is in the dev extra). Figures are not judged
(performance is measured, never asserted); every field must be reported and agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIZE = 1 << 20


def test_a_tiny_bulk_run_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bulk", "--json", "--bytes", str(SIZE)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["benchmark"] == "bulk" and result["bytes"] == SIZE
    assert result["aioquic"] == "ran"
    names = [c["case"] for c in result["cases"]]
    assert names == ["quantum fec=off", "quantum fec=on", "aioquic one stream"]
    for case in result["cases"]:
        (only,) = case["rounds"]
        assert only["mbit_per_s"] == case["best_mbit_per_s"] > 0
        assert only["mbit_per_s"] == pytest.approx(SIZE * 8 / only["seconds"] / 1e6, rel=0.01)
        assert only["bytes_per_server_cpu_s"] > 0
        assert only["client_cpu_share"] > 0
    for case in result["cases"][:2]:
        connection = case["rounds"][0]["server_connection"]
        assert connection["packets_sent"] >= SIZE // 1472
        if not case["fec"]:
            assert connection["fec_parity_sent"] == 0
    ratios = result["ratio_vs_aioquic"]
    aioquic = result["cases"][2]["best_mbit_per_s"]
    assert ratios["fec_off"] == pytest.approx(result["cases"][0]["best_mbit_per_s"] / aioquic,
                                              abs=0.01)
    cpu = result["cpu_ratio_vs_aioquic"]
    assert cpu["fec_on"] == pytest.approx(result["cases"][1]["best_bytes_per_server_cpu_s"]
                                          / result["cases"][2]["best_bytes_per_server_cpu_s"],
                                          abs=0.01)


def test_a_bad_flag_is_refused_with_exit_2() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.bulk", "--bytes", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--bytes" in done.stderr

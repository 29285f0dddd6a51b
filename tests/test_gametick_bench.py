"""Smoke test of the game-tick benchmark: the real thing, run tiny (a few clients, windows of
0.5 s, the interpreted load generator so that nothing is compiled first), in a subprocess as a
user would run it. Figures are not judged (performance is measured, never asserted); every
field must be reported and the counts must agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_a_tiny_gametick_run_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gametick", "--json", "--clients", "3,6",
         "--duration", "0.5", "--interpreted-loadgen"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["benchmark"] == "gametick" and result["loadgen_compiled"] is False
    assert [s["fec"] for s in result["settings"]] == [True, False]
    assert len(result["load_average"]["before"]) == len(result["load_average"]["after"]) == 3
    for setting in result["settings"]:
        assert setting["p99_passes_50ms_at"] in (None, 3, 6)
        assert isinstance(setting["load_saturated"], bool)
        windows = setting["windows"]
        assert [w["clients"] for w in windows] == [3, 6][:len(windows)]
        for w in windows:
            assert w["updates_scheduled"] == round(w["clients"] * 30 * 0.5)
            assert 0 < w["updates_sent"] <= w["updates_scheduled"]
            # the server echoes at most one update per client per tick, each at most once
            assert 0 < w["echoes_timed"] <= w["updates_sent"]
            assert 0 < w["server_updates"] <= w["updates_sent"]
            assert w["rtt_p50_ms"] <= w["rtt_p99_ms"]
            assert w["server_cpu_us_per_client_tick"] > 0
    ratio = result["cpu_ratio_fec_on_vs_off"]
    assert ratio is None or ratio["ratio"] == pytest.approx(
        ratio["fec_on_us"] / ratio["fec_off_us"], abs=0.001)


@pytest.mark.parametrize(("flag", "value"), [("--clients", "0"), ("--clients", "10,5"),
                                             ("--fec", "maybe"), ("--size", "4")])
def test_a_bad_flag_is_refused_with_exit_2(flag: str, value: str) -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.gametick", flag, value],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert flag in done.stderr

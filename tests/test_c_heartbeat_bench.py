"""Smoke test of `python -m benchmarks.heartbeat --client c`: the real thing, run tiny.

One server is loaded in alternating windows by the Python load generator and by the C one
(clients/c/tools/quantum-loadgen.c). Figures are not judged (performance is measured, never
asserted); what must hold is that every field is there, every keepalive was answered on both
load sides, and the derived figures are what their names say.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_c_client import ROOT, c_build, run_tool
from tests.test_examples import example
from tests.test_server import HOST

__all__ = ["c_build"]  # the session fixture: the C build must exist (or skip / fail in CI)

SIDE_FIELDS = ("heartbeats", "server_cpu_s", "heartbeats_per_cpu_s", "round_trips",
               "loadgen_cpu_s", "loadgen_cpu_us_per_round_trip", "rtt_p50_ms", "rtt_p99_ms",
               "unanswered")


def test_tiny_comparison_answers_every_heartbeat_on_both_load_sides(c_build: Path) -> None:
    # the interpreted Python generator: the compiled one is built on first use (mypyc, minutes
    # on a loaded machine, after every rebuild) and is tested in test_loadgen_build.py; with it
    # this run could time out for a reason that has nothing to do with what it checks
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.heartbeat", "--client", "c", "--json", "--clients",
         "4", "--duration", "1", "--rounds", "2", "--interpreted-loadgen"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["client"] == "c" and result["clients"] == 4 and result["rounds"] == 2
    for side in ("python_load", "c_load"):
        numbers = result[side]
        for field in SIDE_FIELDS:
            assert numbers.get(field) is not None, f"{side}.{field}"
        assert numbers["unanswered"] == 0 and numbers["keepalives_timed_out"] == 0
        assert numbers["heartbeats"] > 0 and numbers["round_trips"] > 0
        assert numbers["heartbeats"] <= numbers["round_trips"] + 8  # the server's window
        per_trip = numbers["loadgen_cpu_s"] / numbers["round_trips"] * 1e6
        assert abs(numbers["loadgen_cpu_us_per_round_trip"] - per_trip) <= 0.01 * per_trip + 0.01
    ratio = (result["python_load"]["loadgen_cpu_us_per_round_trip"]
             / result["c_load"]["loadgen_cpu_us_per_round_trip"])
    assert abs(result["c_client_cpu_ratio"] - ratio) <= 0.01 * ratio + 0.01
    assert result["target_ratio"] == 5.0


def test_an_unknown_client_is_refused() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.heartbeat", "--client", "rust"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid choice: 'rust'" in done.stderr


async def _loadgen_run(loadgen: Path, port: int, *options: str) -> dict[str, object]:
    """`connect 6`, then one half-second closed loop; its JSON answer."""
    proc = await asyncio.create_subprocess_exec(
        str(loadgen), HOST, str(port), *options, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(b"connect 6 coalesce\nrun 6 0.5\nquit\n"),
                                      60)
    assert proc.returncode == 0, err.decode()
    answers = [json.loads(line) for line in out.decode().splitlines()]
    assert answers[0]["established"] == 6, answers
    run: dict[str, object] = answers[1]
    assert run["unanswered"] == 0 and run["timed_out"] == 0, run
    assert isinstance(run["acknowledged"], int) and run["acknowledged"] > 0
    return run


async def test_loadgen_coalesces_only_a_large_closed_loop(c_build: Path, tmp_path: Path) -> None:
    """quantum-loadgen lets a trickle of replies pool only with many keepalives in flight (256
    by default): a 6-client loop never waits; told to from 1 in flight, it does, and every
    keepalive is still answered."""
    loadgen = c_build / "quantum-loadgen"
    async with example("echo_server", tmp_path) as (port, _public, _proc):
        small = await _loadgen_run(loadgen, port)
        assert small["coalesced_passes"] == 0
        forced = await _loadgen_run(loadgen, port, "--coalesce-above", "1", "--coalesce-us", "2000")
        assert isinstance(forced["coalesced_passes"], int) and forced["coalesced_passes"] > 0


@pytest.mark.parametrize("option", [["--coalesce-us", "-1"], ["--coalesce-above", "0"],
                                    ["--coalesce-us", "4ms"]])
async def test_loadgen_refuses_bad_coalescing_options(c_build: Path, option: list[str]) -> None:
    code, _out, err = await run_tool([c_build / "quantum-loadgen", HOST, "9", *option])
    assert code == 2 and f"{option[0]}:" in err

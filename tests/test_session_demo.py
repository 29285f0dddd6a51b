"""The runnable walkthrough: ten scenarios in order, the expiry ending, both log formats."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "examples" / "session_demo.py"


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEMO), *args], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.fixture(scope="module")
def console() -> subprocess.CompletedProcess[str]:
    return run_demo()


def test_demo_runs_the_ten_scenarios_in_order(console: subprocess.CompletedProcess[str]) -> None:
    assert console.returncode == 0, console.stderr
    numbers = [int(n) for n in re.findall(r"^--- Scenario (\d+): .+ ---$", console.stdout, re.M)]
    assert numbers == list(range(1, 11))


def test_demo_ends_with_the_expired_session_gone(
    console: subprocess.CompletedProcess[str],
) -> None:
    tail = console.stdout.split("--- Scenario 10:")[1]
    assert "expired sessions cleaned up" in tail and "count=1" in tail
    match = re.search(r"error='session not found: ([0-9a-f-]{36})'", tail)
    assert match is not None
    assert f"session_id={match.group(1)}" in tail


def test_demo_logs_the_seed_fields(console: subprocess.CompletedProcess[str]) -> None:
    out = console.stdout
    for needle in ("session created", "token=", "state=CONNECTING", "new_state=ACTIVE",
                   "session heartbeat", "remaining=300.0", "total=3", "session_count=1",
                   "active=1", "connection_id=", "reason='user logout'", "count=2"):
        assert needle in out, needle


def test_demo_json_lines_parse() -> None:
    result = run_demo("--log-format", "json", "--log-level", "info")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    events = [r["event"] for r in records]
    assert events.count("session created") == 4
    assert "session heartbeat" not in events  # debug lines are off at info
    deleted = next(r for r in records if r["event"] == "session deleted")
    assert deleted["reason"] == "user logout" and deleted["user_id"] == "user3"
    assert all(r["timestamp"].endswith("Z") for r in records)

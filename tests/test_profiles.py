"""The hypothesis profile a run gets: CI's is deterministic whatever the runner sets, local runs
explore, and `.ci/run` asks for CI's by name (tests/profiles.py, docs/TESTING.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from tests.profiles import PROFILE_VARIABLE, default_profile

ROOT = Path(__file__).resolve().parent.parent


def test_the_ci_profile_replays_the_same_examples_and_remembers_none() -> None:
    ci = settings.get_profile("ci")
    assert ci.derandomize is True
    assert ci.database is None


def test_the_local_profiles_explore_and_the_long_one_runs_ten_times_the_examples() -> None:
    dev, explore = settings.get_profile("dev"), settings.get_profile("explore")
    assert dev.derandomize is False and explore.derandomize is False
    ci = settings.get_profile("ci")
    assert explore.max_examples == 10 * dev.max_examples == 10 * ci.max_examples


@pytest.mark.parametrize("variable", ["CI", "GITHUB_ACTIONS", "TF_BUILD", "BUILDKITE"])
def test_the_local_profiles_explore_even_where_hypothesis_detects_a_ci_runner(
        variable: str) -> None:
    """Hypothesis loads its own derandomized profile at import under a CI runner; ours must
    not inherit it (CI's runner sets some of these: `dev` came out derandomized there)."""
    environ = {k: v for k, v in os.environ.items() if k != PROFILE_VARIABLE}
    environ[variable] = "true"
    probe = ("from hypothesis import settings\n"
             "import tests.profiles\n"
             "assert settings.default.derandomize, 'hypothesis did not see the runner'\n"
             "for name in ('dev', 'explore'):\n"
             "    profile = settings.get_profile(name)\n"
             "    assert profile.derandomize is False, name\n"
             "    assert profile.database is not None, name\n")
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=environ,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(("environ", "profile"), [
    ({PROFILE_VARIABLE: "ci"}, "ci"),
    ({PROFILE_VARIABLE: "explore", "CI": "true"}, "explore"),  # named beats the runner's guess
    ({"CI": "true"}, "ci"),
    ({"CI": "1"}, "ci"),
    ({"CI": "false"}, "dev"),
    ({"CI": "0"}, "dev"),
    ({"CI": ""}, "dev"),
    ({}, "dev"),
])
def test_the_profile_is_the_one_named_else_ci_under_a_ci_runner_else_dev(
        environ: dict[str, str], profile: str) -> None:
    assert default_profile(environ) == profile


def test_ci_run_names_the_deterministic_profile_before_it_runs_pytest() -> None:
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    wanted = f"export {PROFILE_VARIABLE}=ci"
    exports = [n for n, line in enumerate(script) if line.strip() == wanted]
    runs = [n for n, line in enumerate(script) if line.strip() == "pytest"]
    assert exports and runs and exports[0] < runs[-1]


def test_a_run_with_the_variable_and_no_ci_reports_the_ci_profile() -> None:
    """End to end, as `.ci/run` starts it: no CI variable, the profile named; pytest's header
    names the profile loaded."""
    environ = {k: v for k, v in os.environ.items() if k != "CI"}
    environ[PROFILE_VARIABLE] = "ci"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", "--collect-only",
         "tests/test_profiles.py"], cwd=ROOT, env=environ, capture_output=True, text=True,
        check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "hypothesis profile: ci" in run.stdout

"""The heartbeat benchmark compiles its load generator itself (not the product's build): first
use builds it with mypyc into a cache directory, later runs reuse it, a changed source gets a
new build, and a build that cannot be done leaves the interpreted generator, saying why."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import benchmarks.loadgen
from benchmarks import loadgen_build
from benchmarks.loadgen_build import LoadgenBuild, load_loadgen

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadgenBuild]:
    """One real build (about 20 s), shared by the tests that need a compiled generator."""
    root = tmp_path_factory.mktemp("bench-cache")
    stale = root / "loadgen-0123-from-older-sources"
    stale.mkdir()
    long_ago = time.time() - loadgen_build.STALE_AFTER - 60
    os.utime(stale, (long_ago, long_ago))
    # another checkout's build (other sources), used a minute ago: its run may still need it
    (root / "loadgen-4567-another-checkout").mkdir()
    return root, load_loadgen(root=root)


def test_first_use_compiles_the_generator_into_the_cache(
        built: tuple[Path, LoadgenBuild]) -> None:
    root, build = built
    assert build.compiled and build.how.startswith("built in "), build.how
    assert build.module.__name__ == loadgen_build.MODULE  # never shadows benchmarks.loadgen
    extension = Path(build.module.__file__ or "")
    assert extension.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert extension.parent == root / f"loadgen-{loadgen_build.build_key()}"
    # the stale build is gone, the recently used one stays, no scratch directory was left
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [extension.parent.name, "loadgen-4567-another-checkout"])
    assert callable(build.module.run_loadgen)


def test_later_runs_reuse_the_build(built: tuple[Path, LoadgenBuild]) -> None:
    root, first = built
    target = Path(first.module.__file__ or "").parent
    long_ago = time.time() - loadgen_build.STALE_AFTER - 60
    os.utime(target, (long_ago, long_ago))
    again = load_loadgen(root=root)
    assert again.compiled and again.how == "cached"
    assert again.module is first.module
    assert target.stat().st_mtime > long_ago + 60  # marked as used: no prune takes it


def test_the_benchmark_runs_and_reports_the_compiled_generator(
        built: tuple[Path, LoadgenBuild]) -> None:
    root, _ = built
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.heartbeat", "--json", "--clients", "4",
         "--duration", "0.5", "--rounds", "1", "--idle-connections", "0"],
        cwd=ROOT, env={**os.environ, "QUANTUM_BENCH_CACHE": str(root)},
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["loadgen_compiled"], result["loadgen_build"]) == (True, "cached")
    assert result["unanswered"] == 0 and result["heartbeats"] > 0


def test_a_changed_source_gets_a_new_build_key(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "loadgen.py"
    copy.write_bytes(Path(benchmarks.loadgen.__file__ or "").read_bytes())
    monkeypatch.setattr(loadgen_build, "_SOURCE", copy)
    key = loadgen_build.build_key()
    assert loadgen_build.build_key() == key
    copy.write_text(copy.read_text() + "\n# edited\n")
    assert loadgen_build.build_key() != key


def test_a_failed_build_runs_the_interpreted_generator_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen_build, "_BUILD_SCRIPT",
                        "import sys; print('no C compiler here', file=sys.stderr); sys.exit(3)")
    build = load_loadgen(root=tmp_path)
    assert build.module is benchmarks.loadgen and not build.compiled
    assert build.how == "interpreted: mypyc build failed (exit 3): no C compiler here"
    assert list(tmp_path.iterdir()) == []  # nothing half-built is left to be picked up


def test_the_interpreted_generator_on_request() -> None:
    build = load_loadgen(compiled=False)
    assert (build.module, build.compiled) == (benchmarks.loadgen, False)

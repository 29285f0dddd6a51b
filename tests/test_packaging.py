"""What `pip install` puts into site-packages, and what the source distribution carries.

A real build with the project's own backend: `python -m build` (sdist, then the wheel from the
unpacked sdist, as pip does) on a copy of the project, in this environment (`--no-isolation`:
the dev extra brings `build` and setuptools), without compiling (QUANTUM_PURE_PYTHON=1: which
files are installed does not depend on it, and the compile takes a minute). A few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAME = "quantum_server-0.1.0"
#: nothing generic beside the product's own names: benchmarks, tests and examples stay out
INSTALLED_TOP_LEVEL = {"quantum", "quantum_server", "session", "server.py", f"{NAME}.dist-info"}
_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", ".ci-venv", "build", "dist", "*.egg-info",
                                      "__pycache__", "*.so", ".*_cache", ".hypothesis")


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[zipfile.ZipFile, tarfile.TarFile]]:
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.skip("the `build` frontend is not installed (it comes with the dev extra)")
    work = tmp_path_factory.mktemp("packaging")
    source, out = work / "src", work / "dist"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES)
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                           str(source)], env={**os.environ, "QUANTUM_PURE_PYTHON": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as whl, tarfile.open(sdist) as tar:
        yield whl, tar


def _wheel_names(dists: tuple[zipfile.ZipFile, tarfile.TarFile]) -> list[str]:
    return dists[0].namelist()


def _sdist_names(dists: tuple[zipfile.ZipFile, tarfile.TarFile]) -> set[str]:
    # without the leading quantum_server-0.1.0/
    return {PurePosixPath(*PurePosixPath(n).parts[1:]).as_posix()
            for n in dists[1].getnames() if len(PurePosixPath(n).parts) > 1}


def test_the_wheel_installs_the_three_packages_and_the_server_module_only(
        dists: tuple[zipfile.ZipFile, tarfile.TarFile]) -> None:
    names = _wheel_names(dists)
    assert {PurePosixPath(n).parts[0] for n in names} == INSTALLED_TOP_LEVEL
    for package in ("quantum", "quantum_server", "session", "session/api"):
        sources = {f"{package}/{p.name}" for p in (ROOT / package).glob("*.py")}
        assert sources <= set(names), sources - set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_wheel_declares_the_license_and_the_commands(
        dists: tuple[zipfile.ZipFile, tarfile.TarFile]) -> None:
    whl = dists[0]
    metadata = whl.read(f"{NAME}.dist-info/METADATA").decode()
    assert "\nLicense-Expression: MIT\n" in metadata  # PEP 639, not the deprecated table
    assert "\nLicense-File: LICENSE\n" in metadata
    assert "Classifier: License" not in metadata
    license_text = whl.read(f"{NAME}.dist-info/licenses/LICENSE").decode()
    assert license_text == (ROOT / "LICENSE").read_text()
    assert "MIT License" in license_text and "The Quantum server authors" in license_text
    entry_points = whl.read(f"{NAME}.dist-info/entry_points.txt").decode()
    assert "quantum-server = quantum_server.cli:main" in entry_points
    assert "quantum-client = quantum.client_cli:main" in entry_points


def test_the_sdist_carries_the_docs_examples_tests_and_benchmarks(
        dists: tuple[zipfile.ZipFile, tarfile.TarFile]) -> None:
    names = _sdist_names(dists)
    expected = {"LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in", "server.py"}
    for folder, pattern in [("docs", "*.md"), ("examples", "*.py"), ("tests", "*.py"),
                            ("benchmarks", "*.py"), ("quantum", "*.py"), ("session", "*.py"),
                            ("quantum_server", "*.py"), ("session/api", "*.proto")]:
        found = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).glob(pattern)}
        assert found, folder
        expected |= found
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if n.endswith((".so", ".pyc")) or "__pycache__" in n]

"""The compiled build: stale extensions are found, and imports load the extension that was built.

setup.py compiles the per-packet modules (the protocol core, the memory store and server.py)
with mypyc, in place. An extension older than its source would run the old code silently, and an
import that picked the source over a built extension would run uncompiled code just as silently.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from quantum import build

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def fake_build(root: Path, sources: dict[str, str]) -> None:
    """A project tree under `root` whose `sources` all have an 'extension' and a stamp entry."""
    for relative, text in sources.items():
        source = root / relative
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(text)
        source.with_name(source.stem + SUFFIX).write_bytes(b"")
    (root / "session").mkdir(exist_ok=True)
    (root / "quantum").mkdir(exist_ok=True)
    (root / "quantum" / build.STAMP).write_text("".join(
        f"{hashlib.sha256(text.encode()).hexdigest()}  {relative}\n"
        for relative, text in sources.items()))


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(build, "_ROOT", tmp_path)
    monkeypatch.setattr(build, "_PACKAGE", tmp_path / "quantum")
    fake_build(tmp_path, {"quantum/connection.py": "x = 1\n", "session/memory.py": "y = 2\n",
                          "server.py": "z = 3\n"})
    (tmp_path / "quantum" / "client.py").write_text("not compiled\n")
    return tmp_path


def test_every_compiled_module_is_found_by_its_path_from_the_root(tree: Path) -> None:
    assert build.compiled_modules() == ["quantum/connection.py", "server.py",
                                        "session/memory.py"]
    assert build.stale_modules() == []


def test_a_source_edited_after_the_build_is_stale(tree: Path) -> None:
    (tree / "server.py").write_text("z = 4\n")
    (tree / "session" / "memory.py").write_text("y = 5\n")
    assert build.stale_modules() == ["server.py", "session/memory.py"]


def test_without_a_stamp_every_compiled_module_is_stale(tree: Path) -> None:
    (tree / "quantum" / build.STAMP).unlink()
    assert build.stale_modules() == build.compiled_modules()


def test_a_source_tree_without_extensions_has_nothing_stale(tree: Path) -> None:
    for extension in tree.rglob(f"*{SUFFIX}"):
        extension.unlink()
    assert build.compiled_modules() == []
    assert build.stale_modules() == []


@pytest.mark.skipif(not build.compiled_modules(), reason="pure-Python build: nothing compiled")
@pytest.mark.parametrize("module", ["server", "session.memory", "quantum.connection"])
def test_imports_from_anywhere_load_the_compiled_module(module: str, tmp_path: Path) -> None:
    # from another directory, as the quantum-server command runs: the installed project must
    # resolve every compiled module to its extension, never to the source beside it
    result = subprocess.run(
        [sys.executable, "-c", f"import {module} as m; print(m.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    # (not its directory: a module first imported by another compiled module gets its path
    # from mypyc's shared library, quantum/_compiled__mypyc, rather than from its own shim)
    loaded = Path(result.stdout.strip())
    assert loaded.name.endswith(SUFFIX), f"{module} was loaded from {loaded}"


def test_the_server_command_refuses_a_stale_build(tree: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import server

    (tree / "server.py").write_text("z = 4\n")
    assert server.run_app(None, ["--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "quantum-server: refusing to start: compiled modules were built from older " \
           "sources: server.py; rebuild with `pip install -e .`" in err


#: records every file opened while `quantum` is imported
OPENS_DURING_IMPORT = """
import sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0]))
                 if event == "open" and isinstance(args[0], str) else None)
import quantum
print("\\n".join(opened))
"""


@pytest.mark.skipif(not build.compiled_modules(), reason="pure-Python build: imports read "
                    "the sources anyway")
def test_importing_quantum_hashes_no_source(tmp_path: Path) -> None:
    # the stale check (the stamp and every compiled source read and hashed) is the test
    # session's and the server command's, not every import's
    done = subprocess.run([sys.executable, "-c", OPENS_DURING_IMPORT], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=True)
    opened = [Path(line).resolve() for line in done.stdout.splitlines()]
    root = Path(build.__file__).resolve().parent.parent
    sources = {root / source for source in build.compiled_modules()}
    assert not [path for path in opened if path in sources or path.name == build.STAMP]


def test_an_in_place_build_deletes_extensions_it_no_longer_makes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # benchmarks/loadgen.py was compiled by setup.py once: its old extension would shadow the
    # source for good unless the next build removes it
    import setuptools

    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: None)
    monkeypatch.setenv("QUANTUM_PURE_PYTHON", "1")
    project = Path(build.__file__).resolve().parent.parent
    setup_py = runpy.run_path(str(project / "setup.py"))
    monkeypatch.chdir(tmp_path)
    kept = ["quantum/connection", "server", "session/memory"]
    for stem in [*kept, "benchmarks/loadgen", "quantum/client"]:
        (tmp_path / stem).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{stem}.py").write_text("")
        (tmp_path / f"{stem}{SUFFIX}").write_bytes(b"")
    (tmp_path / f"quantum/_compiled__mypyc{SUFFIX}").write_bytes(b"")  # the shared library
    setup_py["_remove_leftover_extensions"]()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob(f"*{SUFFIX}")) \
        == sorted([f"quantum/_compiled__mypyc{SUFFIX}", *(f"{s}{SUFFIX}" for s in kept)])

"""The heartbeat benchmark's load generator, compiled with mypyc by the benchmark itself.

The generator is not part of the product, so the product's build (setup.py) does not compile
it; but interpreted, its per-datagram glue costs more CPU than the server it loads (it left the
server idle a fifth of the time), so `python -m benchmarks.heartbeat` compiles
`benchmarks/loadgen.py` on first use. The extension goes into a cache directory, one
subdirectory per build key (a hash of the generator's source, of the project sources it was
type-checked against, and of the Python and mypy versions), under the module name
`MODULE` so that it never shadows `benchmarks.loadgen` itself. Later runs import it from there
(`--interpreted-loadgen` skips all of this).

Where: `$QUANTUM_BENCH_CACHE`, else `$XDG_CACHE_HOME/quantum-bench`, else
`~/.cache/quantum-bench`. When the build cannot be done (no mypyc, no C compiler), the
benchmark runs the interpreted generator and says why; the JSON reports `loadgen_compiled`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import benchmarks.loadgen

__all__ = ["MODULE", "LoadgenBuild", "build_key", "cache_root", "load_loadgen"]

#: the compiled generator's module name: distinct from `benchmarks.loadgen`, whose source
#: package directory would otherwise be searched first
MODULE = "quantum_bench_loadgen"
_PROJECT = Path(__file__).resolve().parent.parent
_SOURCE = _PROJECT / "benchmarks" / "loadgen.py"
#: the project sources mypy reads while compiling the generator (it imports the protocol core
#: and server.py): a change to any of them gets a fresh build
_TYPED_AGAINST = ("quantum", "session")
_BUILD_TIMEOUT = 600.0
#: seconds after its last use a build for other sources is removed (see `_prune`)
STALE_AFTER = 86400.0
_BUILD_SCRIPT = f"""
from mypyc.build import mypycify
from setuptools import setup

setup(name={MODULE!r}, ext_modules=mypycify([{MODULE + ".py"!r}], opt_level="3",
                                           debug_level="0"),
      script_args=["build_ext", "--inplace", "-q"])
"""


@dataclass(frozen=True, slots=True)
class LoadgenBuild:
    """The generator module to run, whether it is compiled, and how it came to be (for the
    report: "cached", "built in 21.3 s", or why it runs interpreted)."""

    module: ModuleType
    compiled: bool
    how: str


def cache_root() -> Path:
    explicit = os.environ.get("QUANTUM_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "quantum-bench"


def build_key() -> str:
    """What the compiled generator depends on, hashed (see the module docstring)."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version}\0{importlib.machinery.EXTENSION_SUFFIXES[0]}\0".encode())
    try:
        from mypy.version import __version__ as mypy_version
    except ImportError:
        mypy_version = "none"
    digest.update(mypy_version.encode())
    typed_against = [_PROJECT / "server.py"]
    typed_against += sorted(p for package in _TYPED_AGAINST
                            for p in (_PROJECT / package).glob("*.py"))
    sources = [("benchmarks/loadgen.py", _SOURCE)]
    sources += [(path.relative_to(_PROJECT).as_posix(), path) for path in typed_against]
    for label, path in sources:
        digest.update(label.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


def _extension(directory: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = directory / f"{MODULE}{suffix}"
        if candidate.exists():
            return candidate
    return None


def _build(root: Path, target: Path) -> str | None:
    """Compile into `target` (made atomically from a scratch directory); None when done, else
    what went wrong."""
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    try:
        shutil.copyfile(_SOURCE, scratch / f"{MODULE}.py")
        env = {**os.environ, "MYPYPATH": str(_PROJECT)}
        try:
            done = subprocess.run([sys.executable, "-c", _BUILD_SCRIPT], cwd=scratch, env=env,
                                  capture_output=True, text=True, timeout=_BUILD_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"mypyc could not run: {exc}"
        extension = _extension(scratch)
        if done.returncode != 0 or extension is None:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return f"mypyc build failed (exit {done.returncode}): {' / '.join(tail)}"
        staged = Path(tempfile.mkdtemp(prefix="staged-", dir=root))
        shutil.move(str(extension), staged / extension.name)
        shutil.copyfile(_SOURCE, staged / f"{MODULE}.py")  # for tracebacks
        try:
            staged.rename(target)
        except OSError:  # another run built the same key meanwhile: keep theirs
            shutil.rmtree(staged, ignore_errors=True)
        return None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _prune(root: Path, keep: Path) -> None:
    """Remove the builds no run used for STALE_AFTER. Not every other one: the cache is the
    user's, shared by every checkout, and another checkout's run (other sources, another
    build key) may be using its build right now; its later child processes import from it."""
    cutoff = time.time() - STALE_AFTER
    for entry in root.iterdir():
        if entry != keep and entry.is_dir() and entry.name.startswith("loadgen-"):
            try:
                used = entry.stat().st_mtime
            except OSError:
                continue  # pruned meanwhile by another run
            if used < cutoff:
                shutil.rmtree(entry, ignore_errors=True)


def load_loadgen(compiled: bool = True, root: Path | None = None) -> LoadgenBuild:
    """The generator to run: the compiled one (built now if this key has none yet), or the
    interpreted `benchmarks.loadgen` when `compiled` is false or the build fails."""
    if not compiled:
        return LoadgenBuild(benchmarks.loadgen, False, "interpreted (--interpreted-loadgen)")
    root = root or cache_root()
    target = root / f"loadgen-{build_key()}"
    how = "cached"
    if _extension(target) is None:
        started = time.monotonic()
        problem = _build(root, target)
        if problem is not None:
            return LoadgenBuild(benchmarks.loadgen, False, f"interpreted: {problem}")
        how = f"built in {time.monotonic() - started:.1f} s"
        _prune(root, target)
    else:
        with contextlib.suppress(OSError):
            os.utime(target)  # in use: not stale for another checkout's `_prune`
    if str(target) not in sys.path:
        # spawned children inherit sys.path, so they find it too
        sys.path.insert(0, str(target))
    module = sys.modules.get(MODULE) or importlib.import_module(MODULE)
    if not (module.__file__ or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        return LoadgenBuild(benchmarks.loadgen, False,
                            f"interpreted: {MODULE} loaded from {module.__file__}")
    return LoadgenBuild(module, True, how)

"""Which build of the per-packet modules is running: mypyc-compiled or plain Python.

`setup.py` compiles the modules every packet passes through with mypyc, in place, beside their
sources: the protocol core in `quantum`, the hot half of `session`, `server.py`, and the
heartbeat benchmark's load generator. Python imports an extension module in preference to the
source next to it, so a source edited after the build would silently not run; `stale_modules`
finds such modules. It reads and hashes every compiled source (a few milliseconds), so it runs
where a stale build must be refused, not at every import: the test session
(tests/conftest.py) and the start of a server command (`server.run_app`, behind
`quantum-server` and the examples) refuse to start with any.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
#: the directory holding `quantum`, `session` and `server.py` (the project, or site-packages)
_ROOT = _PACKAGE.parent
#: where compiled modules can live, relative to _ROOT: packages, and top-level module names
_COMPILED_PACKAGES = ("quantum", "session", "benchmarks", "quantum_server")
_COMPILED_TOP_LEVEL = ("server",)
_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)
#: written by setup.py into the quantum package (see there)
STAMP = "compiled-sources.sha256"


def _has_extension(stem: Path) -> bool:
    return any(stem.with_name(stem.name + suffix).exists() for suffix in _SUFFIXES)


def compiled_modules() -> list[str]:
    """Sources (paths from the project root, e.g. ``quantum/connection.py``) that have a
    compiled extension beside them."""
    sources = [path for package in _COMPILED_PACKAGES for path in (_ROOT / package).glob("*.py")]
    sources += [_ROOT / f"{name}.py" for name in _COMPILED_TOP_LEVEL]
    return sorted(path.relative_to(_ROOT).as_posix() for path in sources
                  if path.exists() and _has_extension(path.with_suffix("")))


def is_compiled() -> bool:
    """Whether the per-packet path runs as compiled code (what benchmarks should report): the
    connection core and the server that drives it."""
    import server
    from quantum import connection

    return all(module.__file__ is not None and module.__file__.endswith(_SUFFIXES)
               for module in (connection, server))


def stale_modules() -> list[str]:
    """Compiled modules whose source changed after they were built: the source does not run.

    setup.py records the SHA-256 of every source it compiled; a compiled module whose source
    hash differs from the record (or that has no record) is stale.
    """
    built = compiled_modules()
    if not built:
        return []
    recorded: dict[str, str] = {}
    try:
        for line in (_PACKAGE / STAMP).read_text().splitlines():
            digest, _, source = line.partition("  ")
            recorded[source] = digest
    except OSError:
        return built
    return [source for source in built
            if recorded.get(source) != hashlib.sha256((_ROOT / source).read_bytes()).hexdigest()]


REBUILD_HINT = ("rebuild with `pip install -e .` (or `python setup.py build_ext --inplace`), or "
                "delete the compiled *.so files to run the sources as plain Python")

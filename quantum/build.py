"""Which build of the per-packet modules is running: mypyc-compiled or plain Python.

`setup.py` compiles the modules every packet passes through with mypyc, in place, beside their
sources. Python imports an extension module in preference to the source next to it, so a
source edited after the build would silently not run; `stale_modules` finds such modules, the
test suite refuses to start with any, and importing `quantum` warns.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)
#: written by setup.py beside the compiled modules (see there)
STAMP = "compiled-sources.sha256"


def compiled_modules() -> list[str]:
    """Names of the `quantum` modules that have a compiled extension beside their source."""
    names = []
    for path in _PACKAGE.iterdir():
        for suffix in _SUFFIXES:
            stem = path.name[:-len(suffix)]
            if path.name.endswith(suffix) and (_PACKAGE / f"{stem}.py").exists():
                names.append(stem)
    return sorted(names)


def is_compiled() -> bool:
    """Whether the connection core runs as compiled code (what benchmarks should report)."""
    from quantum import connection

    return connection.__file__ is not None and connection.__file__.endswith(_SUFFIXES)


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
            digest, _, filename = line.partition("  ")
            recorded[filename] = digest
    except OSError:
        return built
    return [name for name in built
            if recorded.get(f"{name}.py")
            != hashlib.sha256((_PACKAGE / f"{name}.py").read_bytes()).hexdigest()]


REBUILD_HINT = ("rebuild with `pip install -e .` (or `python setup.py build_ext --inplace`), or "
                "delete quantum/*.so to run the sources as plain Python")

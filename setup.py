"""Build script: compiles the per-packet modules with mypyc.

Everything else about the project is declared in pyproject.toml. The modules below are plain,
fully typed Python (mypy --strict clean); mypyc turns them into C extensions that run the same
code two to three times faster. Set QUANTUM_PURE_PYTHON=1 at install time to skip compilation
(the project then runs as ordinary Python, slower but identical in behaviour).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: the modules every packet passes through, from the socket callback in server.py to the session
#: store; the handshake, listener, client and the etcd store are not on the per-packet path and
#: stay interpreted
COMPILED_MODULES = [
    "quantum/config.py",
    "quantum/serial.py",
    "quantum/packet.py",
    "quantum/frames.py",
    "quantum/events.py",
    "quantum/crypto.py",
    "quantum/reliability.py",
    "quantum/bbr.py",
    "quantum/fec.py",
    "quantum/channels.py",
    "quantum/connection.py",
    "quantum/timers.py",
    "quantum/keepalive.py",
    "quantum/endpoint.py",
    "quantum/pmtu.py",
    "session/clock.py",
    # the Store contract: compiled so that the heartbeat's `store.touch_nowait(...)` is a native
    # call into MemoryStore (through the contract, not a check for the concrete class)
    "session/store.py",
    "session/memory.py",
    "session/heartbeat.py",
    "server.py",
    # read at every metrics scrape, adding up every live connection's counters (O(n)), and
    # added to once per closed connection
    "quantum_server/transport.py",
]
# (the heartbeat benchmark's load generator is not the product: the benchmark compiles it
# itself, on first use; see benchmarks/loadgen_build.py)


#: written into the quantum package: the SHA-256 of each source compiled (by its path from the
#: project root), so that `quantum.build.stale_modules` can tell when one changed after the build
STAMP = "compiled-sources.sha256"


#: where an in-place build may have left extensions of modules it no longer compiles
#: (benchmarks/loadgen.py was compiled here once): Python would import those over the source
_OLD_BUILD_DIRS = ("quantum", "session", "benchmarks", ".")


def _remove_leftover_extensions() -> None:
    """Delete in-place extensions whose module is not in COMPILED_MODULES any more."""
    compiled = {Path(m).with_suffix("") for m in COMPILED_MODULES}
    for directory in _OLD_BUILD_DIRS:
        for extension in Path(directory).glob("*.so"):
            stem = extension.with_name(extension.name.split(".", 1)[0])
            if stem.with_suffix(".py").exists() and Path(os.path.normpath(stem)) not in compiled:
                extension.unlink()


class BuildExtWithStamp(build_ext):  # type: ignore[misc]  # setuptools ships no stubs here
    def run(self) -> None:
        # the sources as they are when the build starts: one edited while mypyc and the C
        # compiler run must show as stale, not be stamped as built
        lines = [f"{hashlib.sha256(Path(m).read_bytes()).hexdigest()}  {m}\n"
                 for m in COMPILED_MODULES]
        super().run()
        if not self.extensions:
            return
        if self.inplace:
            _remove_leftover_extensions()
        target = Path("quantum") if self.inplace else Path(self.build_lib) / "quantum"
        target.mkdir(parents=True, exist_ok=True)
        (target / STAMP).write_text("".join(lines))


def _ext_modules() -> list[object]:
    if os.environ.get("QUANTUM_PURE_PYTHON", "") not in ("", "0"):
        return []
    from mypyc.build import mypycify

    # one fixed name for the shared library, inside the package: editable installs find it
    return list(mypycify(COMPILED_MODULES, opt_level="3", debug_level="0",
                         group_name="quantum._compiled"))


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": BuildExtWithStamp})

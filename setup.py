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
    "session/clock.py",
    # the Store contract: compiled so that the heartbeat's `store.touch_nowait(...)` is a native
    # call into MemoryStore (through the contract, not a check for the concrete class)
    "session/store.py",
    "session/memory.py",
    "session/heartbeat.py",
    "server.py",
    # not the product: the heartbeat benchmark's load generator drives its clients through the
    # compiled core, and its own per-datagram glue must not cost more than the server it loads
    "benchmarks/loadgen.py",
]


#: written into the quantum package: the SHA-256 of each source compiled (by its path from the
#: project root), so that `quantum.build.stale_modules` can tell when one changed after the build
STAMP = "compiled-sources.sha256"


class BuildExtWithStamp(build_ext):  # type: ignore[misc]  # setuptools ships no stubs here
    def run(self) -> None:
        super().run()
        if not self.extensions:
            return
        target = Path("quantum") if self.inplace else Path(self.build_lib) / "quantum"
        lines = [f"{hashlib.sha256(Path(m).read_bytes()).hexdigest()}  {m}\n"
                 for m in COMPILED_MODULES]
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

"""The C# binding (clients/csharp) built with Debian's Mono and run against the real server.

Needs `mcs` and `mono` (Debian: mono-mcs, mono-runtime) besides the C toolchain; they skip
with a message where missing, and fail in CI (QUANTUM_REQUIRE_NATIVE=1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_c_client import ROOT, c_build, echo_server, missing, run_make, run_tool
from tests.test_server import HOST

CS_DIR = ROOT / "clients" / "csharp"

__all__ = ["c_build"]  # the session fixture, shared with tests/test_c_client.py


@pytest.fixture(scope="session")
def csharp_build(c_build: Path) -> Path:
    for tool in ("mcs", "mono"):
        if shutil.which(tool) is None:
            missing(f"`{tool}` (Debian: mono-mcs, mono-runtime)")
    done = run_make(CS_DIR)
    assert done.returncode == 0, done.stdout + done.stderr
    return CS_DIR / "build"


def mono_env(c_build: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(c_build), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


async def test_the_csharp_example_echoes_against_the_server(csharp_build: Path, c_build: Path,
                                                            tmp_path: Path) -> None:
    async with echo_server(tmp_path) as (port, _public, fingerprint):
        code, out, err = await run_tool(
            ["mono", csharp_build / "QuantumEcho.exe", HOST, str(port), fingerprint, "csharp"],
            env=mono_env(c_build))
    assert code == 0, out + err
    for step in ("connected session ", "echo ok: 8 messages", "big ok: 1048576 bytes",
                 "heartbeat ok", "close ok"):
        assert step in out, out


async def test_a_refused_connection_is_a_clear_exception(csharp_build: Path, c_build: Path,
                                                         tmp_path: Path) -> None:
    async with echo_server(tmp_path) as (port, _public, _fingerprint):
        code, out, err = await run_tool(
            ["mono", csharp_build / "QuantumEcho.exe", HOST, str(port), "SHA256:" + "B" * 43,
             "csharp"], env=mono_env(c_build))
    assert code == 1
    assert "connect refused (BadServerKey)" in err, out + err


def test_bad_arguments_exit_2(csharp_build: Path, c_build: Path) -> None:
    done = subprocess.run(["mono", str(csharp_build / "QuantumEcho.exe"), "h"],
                          capture_output=True, text=True, timeout=30, env=mono_env(c_build))
    assert done.returncode == 2 and "usage: QuantumEcho" in done.stderr

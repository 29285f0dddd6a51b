"""The real server process restarted in the middle of a chat (examples/chat_room.py, which is
`quantum-server` with an application: the same command line and shutdown path), over real UDP:
after SIGTERM and a start on the same port and key file every client resumes its session, in
its room; after SIGKILL there is no snapshot, the sessions are gone and a resume is refused
with BAD_RESUME; with --no-snapshot a clean stop writes nothing either. The clients resume by
hand (`connect(resume=...)`, reconnect off); tests/test_reconnect.py has the client that
reconnects by itself across a restart."""

from __future__ import annotations

import asyncio
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from quantum.client import ConnectError, QuantumClient, connect
from quantum.errors import CloseCode
from quantum_server.cli import _snapshot_flag_problem, build_parser
from tests.test_examples import READY
from tests.test_server import HOST, client_config
from tests.test_server_cli import ROOT, cli_env


class ChatServer:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, key: str) -> None:
        self.proc, self.port, self.key = proc, port, key

    async def stop(self, sig: signal.Signals) -> str:
        """Signal it, wait for its exit (0 unless killed); its log."""
        self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 10)
        assert code == (0 if sig != signal.SIGKILL else -signal.SIGKILL)
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()


@asynccontextmanager
async def chat_server(tmp_path: Path, port: int = 0, *extra: str) -> AsyncIterator[ChatServer]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "examples/chat_room.py", "--host", HOST, "--port", str(port),
        "--allow-anonymous", "--key-file", str(tmp_path / "server.key"), "--no-grpc",
        "--no-metrics", *extra, cwd=ROOT, env=cli_env(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        ready = READY.search(line)
        assert ready is not None, f"no ready line, got {line!r}"
        yield ChatServer(proc, int(ready["port"]), ready["public"])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def recv(client: QuantumClient) -> bytes:
    return await asyncio.wait_for(client.recv(), 5)


async def join(server: ChatServer, user: str, **kwargs: object) -> QuantumClient:
    return await asyncio.wait_for(connect(
        HOST, server.port, user_id=user, server_key=server.key,
        configuration=client_config(), reconnect=False, **kwargs), 10)  # type: ignore[arg-type]


async def test_a_sigterm_restart_mid_chat_keeps_every_session_and_sigkill_loses_them(
        tmp_path: Path) -> None:
    async with chat_server(tmp_path) as first:
        alice = await join(first, "alice", metadata={"room": "games"})
        assert await recv(alice) == b"* welcome to games; here: nobody yet"
        bob = await join(first, "bob", metadata={"room": "games"})
        assert await recv(bob) == b"* welcome to games; here: alice"
        assert await recv(alice) == b"* bob joined"
        await alice.send(b"before the deploy")
        assert await recv(bob) == b"alice: before the deploy"
        resume = {c: (c.session_id or "", c.session_token or "") for c in (alice, bob)}
        log = await first.stop(signal.SIGTERM)
        port = first.port
    for client in (alice, bob):
        await asyncio.wait_for(client.wait_closed(), 3)
        assert client.close_code == CloseCode.SERVER_SHUTDOWN
    snapshot = tmp_path / "server.snapshot"  # beside the key file
    assert "session snapshot written" in log and "sessions=2" in log
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600

    async with chat_server(tmp_path, port) as second:
        assert not snapshot.exists()  # taken back and deleted before the ready line
        alice2 = await join(second, "alice", resume=resume[alice])
        bob2 = await join(second, "bob", resume=resume[bob])
        for old, new in ((alice, alice2), (bob, bob2)):
            assert new.resumed and new.session_id == old.session_id
        # back in their room (the session's metadata came through the restart)
        assert await recv(alice2) == b"* welcome to games; here: nobody yet"
        assert await recv(bob2) == b"* welcome to games; here: alice"
        assert await recv(alice2) == b"* bob joined"
        await alice2.send(b"after the deploy")
        assert await recv(bob2) == b"alice: after the deploy"
        log = await second.stop(signal.SIGKILL)  # no graceful stop: nothing written
    assert not snapshot.exists()

    # (--no-snapshot changes nothing here, there is no file to load: it is checked on the stop)
    async with chat_server(tmp_path, port, "--no-snapshot") as third:
        with pytest.raises(ConnectError) as refused:
            await join(third, "alice", resume=resume[alice])
        assert refused.value.code == CloseCode.BAD_RESUME
        # the clear way back: a new session
        fresh = await join(third, "alice", resume=resume[alice], resume_fallback=True)
        assert not fresh.resumed and fresh.session_id != alice.session_id
        log = await third.stop(signal.SIGTERM)
    assert "session snapshot" not in log and not snapshot.exists()  # --no-snapshot: forgotten
    await asyncio.wait_for(fresh.wait_closed(), 3)


def test_a_snapshot_flag_that_cannot_work_exits_2(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "server.py", "--store", "etcd", "--snapshot",
                           str(tmp_path / "s")], cwd=ROOT, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert "--snapshot is for --store memory: with etcd the sessions are already shared" in (
        done.stderr)
    key = tmp_path / "server.key"
    for args, problem in [
        (["--snapshot", "x", "--no-snapshot"], "--snapshot contradicts --no-snapshot"),
        (["--snapshot", str(key)], "--snapshot must not be the key file"),
        (["--snapshot", str(tmp_path)], "is a folder: name a file"),
        (["--snapshot", str(tmp_path / "fine")], None),
        ([], None),
    ]:
        found = _snapshot_flag_problem(build_parser().parse_args(args), key)
        assert found == problem or (problem is not None and found is not None
                                    and problem in found)

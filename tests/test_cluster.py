"""Several server nodes sharing one etcd cluster (real etcd, real UDP on loopback).

A session lives in etcd: any node finds it; a session deleted through node B closes its
connection on node A (etcd watch -> manager listeners -> the server's bridge); a client whose
node was killed resumes its session on another node with its token; sessions nobody resumes
expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from benchmarks.etcd_util import EtcdCluster
from quantum.auth import AnonymousAuthenticator
from quantum.client import ConnectError, QuantumClient, connect
from quantum.config import QuantumConfiguration
from quantum.errors import CloseCode
from quantum.keys import ServerKeyFile
from server import QuantumServer, ServerConfig
from session.errors import SessionNotFound
from session.etcd import EtcdStore
from session.manager import ManagerConfig, SessionManager
from session.model import State
from tests.etcd_cluster import etcd_endpoints, etcd_prefix, etcd_private  # noqa: F401  (fixtures)
from tests.test_server_cli import EPHEMERAL_SERVICES

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def node(endpoints: list[str], prefix: str, key: ServerKeyFile,
               session_timeout: float = 30.0) -> AsyncIterator[QuantumServer]:
    store = EtcdStore(endpoints, prefix=prefix)
    manager = SessionManager(ManagerConfig(store=store, default_timeout=session_timeout,
                                           cleanup_interval=0.2))
    server = QuantumServer(manager, key, AnonymousAuthenticator(),
                           ServerConfig(host=HOST, port=0, keepalive_interval=1.0,
                                        idle_timeout=5.0, stats_interval=0.2))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def client_config() -> QuantumConfiguration:
    return QuantumConfiguration(keepalive_interval=1.0, idle_timeout=5.0)


async def dial(port: int, **kwargs: object) -> QuantumClient:
    return await asyncio.wait_for(
        connect(HOST, port, user_id="alice", configuration=client_config(), **kwargs),  # type: ignore[arg-type]
        timeout=10)


async def test_a_session_made_on_node_a_is_visible_on_node_b(
        etcd_endpoints: list[str], etcd_prefix: str) -> None:
    key = ServerKeyFile.new()
    async with node(etcd_endpoints, etcd_prefix, key) as a, \
            node(etcd_endpoints, etcd_prefix, key) as b:
        client = await dial(a.port, metadata={"room": "7"})
        assert client.session_id is not None
        seen = await b.manager.get_session(client.session_id)
        assert (seen.user_id, seen.state, seen.metadata) == ("alice", State.ACTIVE, {"room": "7"})
        assert seen.server_addr == a.address_text
        await client.close()

        async def gone() -> bool:
            try:
                await b.manager.get_session(client.session_id or "")
            except SessionNotFound:
                return True
            return False

        await eventually(gone, 5.0, "the FIN's deletion to reach etcd")


async def test_deleting_on_node_b_closes_the_connection_on_node_a(
        etcd_endpoints: list[str], etcd_prefix: str) -> None:
    key = ServerKeyFile.new()
    async with node(etcd_endpoints, etcd_prefix, key) as a, \
            node(etcd_endpoints, etcd_prefix, key) as b:
        client = await dial(a.port)
        assert client.session_id is not None
        await b.manager.delete_session(client.session_id, "kicked by an operator")
        await asyncio.wait_for(client.wait_closed(), timeout=5.0)
        assert client.close_reason is not None and "session" in client.close_reason
        assert client.session_id not in a.by_session


def _start_node_process(endpoints: list[str], prefix: str, key_path: Path,
                        session_timeout: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--host", HOST, "--port", "0",
         "--store", "etcd", "--etcd-endpoints", ",".join(endpoints), "--etcd-prefix", prefix,
         "--key-file", str(key_path), "--allow-anonymous", "--keepalive-interval", "1",
         "--idle-timeout", "5", "--session-timeout", str(session_timeout),
         "--log-level", "warning", *EPHEMERAL_SERVICES],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    for line in proc.stdout:
        match = re.search(r"ready on [\d.]+:(\d+)", line)
        if match:
            return proc, int(match.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    pytest.fail("node process did not print its ready line")


async def test_a_node_stopped_by_sigterm_leaves_its_sessions_disconnecting_in_etcd(
        etcd_endpoints: list[str], etcd_prefix: str, tmp_path: Path) -> None:
    key_path = tmp_path / "server.key"
    key = ServerKeyFile.generate(key_path)
    proc, port = await asyncio.to_thread(_start_node_process, etcd_endpoints, etcd_prefix,
                                         key_path, 30.0)
    try:
        client = await dial(port)
        sid, token = client.session_id or "", client.session_token or ""
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
        await asyncio.wait_for(client.wait_closed(), 3)
        assert client.close_code == CloseCode.SERVER_SHUTDOWN
    finally:
        if proc.poll() is None:
            proc.kill()
    # the graceful shutdown wrote the state before the process exited: the session outlives
    # its node, resumable (from etcd: no restart snapshot beside the key file)
    assert not (tmp_path / "server.snapshot").exists()
    async with node(etcd_endpoints, etcd_prefix, key) as b:
        assert (await b.manager.get_session(sid)).state is State.DISCONNECTING
        again = await dial(b.port, resume=(sid, token), server_key=key.public_key)
        assert again.session_id == sid and again.resumed
        await again.close()


async def test_client_of_a_killed_node_resumes_on_another_and_orphans_expire(
        etcd_endpoints: list[str], etcd_prefix: str, tmp_path: Path) -> None:
    key_path = tmp_path / "server.key"
    key = ServerKeyFile.generate(key_path)  # every node shares the key file
    proc, port = await asyncio.to_thread(_start_node_process, etcd_endpoints, etcd_prefix,
                                         key_path, 3.0)
    try:
        resumer = await dial(port)
        orphan = await dial(port)
        sid, token = resumer.session_id or "", resumer.session_token or ""
        orphan_sid = orphan.session_id or ""
        proc.send_signal(signal.SIGKILL)  # the node dies: no FIN, no session updates
        await asyncio.to_thread(proc.wait, 10)
        resumer.abort()
        orphan.abort()
        async with node(etcd_endpoints, etcd_prefix, key, session_timeout=3.0) as b:
            again = await dial(b.port, resume=(sid, token), server_key=key.public_key)
            assert again.session_id == sid and again.resumed
            session = await b.manager.get_session(sid)
            assert session.state is State.ACTIVE
            assert session.connection_id != orphan_sid
            assert session.server_addr == b.address_text

            async def orphan_expired() -> bool:
                try:
                    await b.manager.get_session(orphan_sid)
                except SessionNotFound:
                    return True
                except Exception:  # SessionExpired until the sweep removes it
                    return False
                return False

            await eventually(orphan_expired, 15.0, "the orphaned session to expire")
            # the resumed one is kept alive by the keepalives of its new connection
            assert (await b.manager.get_session(sid)).state is State.ACTIVE
            await again.close()
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_etcd_outage_spares_established_connections_and_refuses_new_ones_clearly(
        etcd_private: EtcdCluster) -> None:
    key = ServerKeyFile.new()
    async with node(etcd_private.endpoints, "/outage", key) as a:
        client = await dial(a.port)
        etcd_private.kill_all()
        # heartbeats are answered from the node's cache while no lease refresh is due
        for _ in range(3):
            assert await client.heartbeat(timeout=3.0) == pytest.approx(30.0)
        await client.send(b"still here")
        with pytest.raises(ConnectError) as refused:
            await dial(a.port)
        assert refused.value.code == CloseCode.STORE_UNAVAILABLE
        etcd_private.restart()

        async def accepts_again() -> bool:
            try:
                late = await dial(a.port)
            except ConnectError:
                return False
            await late.close()
            return True

        await eventually(accepts_again, 20.0, "new sessions once etcd is back")
        assert await client.heartbeat(timeout=3.0) == pytest.approx(30.0)
        await client.close()

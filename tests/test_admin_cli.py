"""`quantum-server sessions ...` and `quantum-server api-token` as operators run them: real
processes against a real `quantum-server` process, on both stores; and the server's API flags.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from quantum.client import connect
from quantum.errors import CloseCode
from quantum_server.api_token import load_token
from session.api import session_pb2 as pb
from session.api import session_pb2_grpc
from session.api.auth import bearer_metadata
from tests.etcd_cluster import shared_etcd, unique_prefix
from tests.test_api_health_tls import self_signed
from tests.test_server import HOST, client_config
from tests.test_server_cli import ROOT, cli_env

READY = re.compile(r"ready on [\d.]+:(?P<udp>\d+) .* public-key=(?P<public>\S+) "
                   r"api=(?P<api>\S+) metrics=(?P<metrics>\S+)")


def run(args: Sequence[str], tmp_path: Path,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "server.py", *args], cwd=ROOT, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    udp_port: int
    public_key: str
    api: str
    metrics: str


@asynccontextmanager
async def server(tmp_path: Path, *flags: str, store: str = "memory") -> AsyncIterator[Running]:
    extra = ["--store", "etcd", "--etcd-endpoints", ",".join(shared_etcd().endpoints),
             "--etcd-prefix", unique_prefix("cli")] if store == "etcd" else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "server.py", "--host", HOST, "--port", "0", "--allow-anonymous",
        "--grpc", f"{HOST}:0", "--metrics", f"{HOST}:0", *extra, *flags, cwd=ROOT,
        env=cli_env(tmp_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        # a generous wait: at a load average of 14 on 2 cores the process (imports, the
        # shared etcd's first lease) once took over 20 s to say it was ready
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        ready = READY.search(line)
        assert ready is not None, f"no ready line, got {line!r}"
        yield Running(proc, int(ready["udp"]), ready["public"], ready["api"], ready["metrics"])
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)


def default_token(tmp_path: Path) -> str:
    return load_token(tmp_path / "config" / "quantum" / "server.api-token")


async def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run, args, tmp_path)


def test_api_token_creates_a_private_file_beside_the_key_and_prints_it(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "node.key"
    first = run(["api-token", "--key-file", str(key_file)], tmp_path)
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    path = tmp_path / "keys" / "node.api-token"
    assert f"created {path}" in first.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_token(path) == token and len(token) == 43
    again = run(["api-token", "--key-file", str(key_file)], tmp_path)
    assert (again.returncode, again.stdout.strip(), again.stderr) == (0, token, "")
    path.chmod(0o644)
    loose = run(["api-token", "--key-file", str(key_file)], tmp_path)
    assert loose.returncode == 2 and "too open" in loose.stderr and token not in loose.stderr


@pytest.mark.parametrize("store", ["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
async def test_sessions_commands_against_a_running_server(tmp_path: Path, store: str) -> None:
    async with server(tmp_path, store=store) as running:
        token = default_token(tmp_path)
        api = ("--api", running.api)
        async with grpc.aio.insecure_channel(running.api) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            created = await stub.CreateSession(pb.CreateSessionRequest(
                user_id="alice", client_ip="198.51.100.1", metadata={"room": "lobby"}),
                metadata=bearer_metadata(token))
        sid = created.session.session_id
        client = await connect(HOST, running.udp_port, user_id="bob",
                               server_key=running.public_key, configuration=client_config())
        assert client.session_id is not None

        stats = json.loads((await cli(tmp_path, "sessions", "stats", *api, "--json")).stdout)
        assert stats == {"total": 2, "connecting": 1, "active": 1, "idle": 0,
                         "disconnecting": 0, "closed": 0}
        table = await cli(tmp_path, "sessions", "stats", *api)
        assert re.search(r"^CONNECTING\s+1$", table.stdout, re.M), table.stdout

        listed = await cli(tmp_path, "sessions", "list", *api)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].split() == ["SESSION", "ID", "USER", "STATE", "CLIENT", "LAST", "ACTIVE",
                                    "EXPIRES", "IN"]
        assert sid in lines[1] and "alice" in lines[1] and "CONNECTING" in lines[1]
        assert lines[-1] == "page 1 of 1: 2 of 2 sessions"
        only_bob = json.loads((await cli(tmp_path, "sessions", "list", *api, "--user", "bob",
                                         "--state", "ACTIVE", "--json")).stdout)
        assert [s["session_id"] for s in only_bob["sessions"]] == [client.session_id]
        second = await cli(tmp_path, "sessions", "list", *api, "--page", "2",
                           "--page-size", "1")
        assert client.session_id in second.stdout
        assert second.stdout.splitlines()[-1] == "page 2 of 2: 1 of 2 sessions"

        shown = await cli(tmp_path, "sessions", "get", sid, *api)
        assert f"session:       {sid}" in shown.stdout
        assert "connection:    (none yet)" in shown.stdout and "room = lobby" in shown.stdout
        as_json = json.loads((await cli(tmp_path, "sessions", "get", sid, *api,
                                        "--json")).stdout)
        assert (as_json["user_id"], as_json["state"], as_json["metadata"]) == (
            "alice", "SESSION_STATE_CONNECTING", {"room": "lobby"})

        watcher = await asyncio.create_subprocess_exec(
            sys.executable, "server.py", "sessions", "watch", *api, "--json", cwd=ROOT,
            env=cli_env(tmp_path), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert watcher.stdout is not None and watcher.stderr is not None
        banner = await asyncio.wait_for(watcher.stderr.readline(), 20)
        assert banner.startswith(b"watching session changes at ")

        kicked = await cli(tmp_path, "sessions", "kick", client.session_id, *api,
                           "--reason", "maintenance")
        assert kicked.returncode == 0, kicked.stderr
        assert kicked.stdout.strip() == f"kicked {client.session_id} (maintenance)"
        await asyncio.wait_for(client.wait_closed(), 5)
        assert client.close_code == CloseCode.SESSION_ENDED
        assert client.close_reason == "session maintenance"

        event = json.loads(await asyncio.wait_for(watcher.stdout.readline(), 10))
        assert (event["type"], event["session"]["session_id"], event["reason"]) == (
            "TYPE_DELETED", client.session_id, "maintenance")
        watcher.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(watcher.wait(), 10) == 0

        missing = await cli(tmp_path, "sessions", "get", str(uuid.uuid4()), *api)
        assert missing.returncode == 1 and "NOT_FOUND: session not found" in missing.stderr
        bad = await cli(tmp_path, "sessions", "kick", "not-an-id", *api)
        assert bad.returncode == 1
        assert "INVALID_ARGUMENT: session_id is not a UUID" in bad.stderr
        (tmp_path / "wrong.api-token").write_text("w" * 43 + "\n")
        (tmp_path / "wrong.api-token").chmod(0o600)
        wrong = await cli(tmp_path, "sessions", "stats", *api, "--token-file",
                          str(tmp_path / "wrong.api-token"))
        assert wrong.returncode == 4 and "UNAUTHENTICATED: invalid API token" in wrong.stderr

        assert running.proc.stderr is not None
        running.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.proc.wait(), 10) == 0
        logs = (await running.proc.stderr.read()).decode()
        assert "session API listening" in logs and token not in logs


def test_the_cli_reports_usage_and_unreachable_apis(tmp_path: Path) -> None:
    for args, message in [
            (["sessions"], "the following arguments are required: COMMAND"),
            (["sessions", "list", "--page", "0"], "must be positive, got 0"),
            (["sessions", "stats", "--timeout", "nan"], "must be a finite number, got nan"),
            (["sessions", "list", "--state", "sleepy"], "invalid choice: 'sleepy'"),
            (["sessions", "stats", "--api", "nowhere"], "expected HOST:PORT, got 'nowhere'"),
            (["sessions", "stats"], "no API token file")]:
        result = run(args, tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    run(["api-token"], tmp_path)  # the token exists now; nothing listens on this port:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    unreachable = run(["sessions", "stats", "--api", f"{HOST}:{port}", "--timeout", "1"],
                      tmp_path)
    assert unreachable.returncode == 3, unreachable.stderr
    assert "UNAVAILABLE" in unreachable.stderr or "DEADLINE_EXCEEDED" in unreachable.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--grpc", "0.0.0.0:0"], "is not a loopback address: the API needs TLS there"),
    (["--grpc", "nope"], "expected HOST:PORT, got 'nope'"),
    (["--metrics", "127.0.0.1:99999"], "port must be 0-65535, got 99999"),
    (["--grpc-tls-cert", "cert.pem"], "--grpc-tls-cert and --grpc-tls-key go together"),
    (["--grpc-tls-cert", "a.pem", "--grpc-tls-key", "b.pem", "--grpc-insecure"],
     "--grpc-insecure contradicts"),
    (["--grpc-tls-cert", "missing.pem", "--grpc-tls-key", "missing.key"],
     "cannot read missing.pem"),
])
def test_bad_api_flags_exit_2(flags: list[str], message: str, tmp_path: Path) -> None:
    result = run(["--port", "0", *flags], tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def test_a_tls_file_that_is_not_pem_exits_2(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    self_signed(tmp_path)
    for cert, key, message in [("junk.pem", "api.key", "not a PEM certificate"),
                               ("api.crt", "junk.pem", "not an unencrypted PEM private key")]:
        result = run(["--port", "0", "--grpc-tls-cert", str(tmp_path / cert),
                      "--grpc-tls-key", str(tmp_path / key)], tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr


async def test_an_api_port_in_use_stops_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await asyncio.to_thread(
            run, ["--host", HOST, "--port", "0", "--grpc", f"{HOST}:{port}", "--metrics",
                  f"{HOST}:0"], tmp_path)
    assert result.returncode == 1, result.stderr
    assert "cannot start: cannot listen on" in result.stderr


async def test_the_cli_speaks_tls_to_a_tls_api(tmp_path: Path) -> None:
    self_signed(tmp_path)
    async with server(tmp_path, "--grpc-tls-cert", str(tmp_path / "api.crt"),
                      "--grpc-tls-key", str(tmp_path / "api.key")) as running:
        secure = await cli(tmp_path, "sessions", "stats", "--api", running.api, "--ca-cert",
                           str(tmp_path / "api.crt"), "--json")
        assert secure.returncode == 0, secure.stderr
        assert json.loads(secure.stdout)["total"] == 0
        plain = await cli(tmp_path, "sessions", "stats", "--api", running.api, "--timeout", "2")
        assert plain.returncode == 3, plain.stderr


def test_the_default_environment_leaves_no_key_file_behind(tmp_path: Path) -> None:
    # the CLI reads; only the server and api-token create files
    run(["sessions", "stats", "--api", f"{HOST}:1", "--timeout", "1"], tmp_path)
    assert not (tmp_path / "config").exists()

"""The command lines as users run them: `python server.py ...` and `python -m quantum.client_cli`.

Every test starts real processes (`sys.executable`), with HOME-like paths pointed at tmp_path so
that nothing touches the user's configuration.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import pytest

from quantum.auth import AuthError, TicketAuthenticator, issue_ticket
from quantum.client import ConnectError, connect
from quantum.config import QuantumConfiguration
from quantum.errors import CloseCode
from quantum.frames import Delivery
from quantum.keys import ServerKeyFile
from quantum_server.cli import _ticket_parser, build_parser
from server import Application, Peer
from tests.test_server import HOST, Echo, client_config, eventually, running_server

ROOT = Path(__file__).resolve().parents[1]
#: the API and metrics on ephemeral ports: the defaults (9091, 9100) would collide between
#: servers running at once (this machine is shared)
EPHEMERAL_SERVICES = ("--grpc", "127.0.0.1:0", "--metrics", "127.0.0.1:0")
READY = re.compile(r"quantum-server ready on (?P<host>[\d.]+):(?P<port>\d+) store=memory "
                   r"fingerprint=(?P<fingerprint>SHA256:\S+) public-key=(?P<public>\S+)")


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "QUANTUM_KEY_FILE"}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), PYTHONUNBUFFERED="1")
    return env


def run_cli(args: Sequence[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "server.py", *args], cwd=ROOT, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=30)


# ------------------------------------------------------------------------------ flags


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "notaport"], "not a port number: 'notaport'"),
    (["--port", "70000"], "port must be 0-65535, got 70000"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--session-timeout", "-5"], "must be positive, got -5"),
    (["--idle-timeout", "soon"], "not a number: 'soon'"),
    (["--store", "redis"], "invalid choice: 'redis'"),
    (["--ciphers", "aes-128-cbc"], "unknown cipher 'aes-128-cbc'; choose among aes-256-gcm, "
                                   "chacha20-poly1305"),
    (["--ciphers", "aes-256-gcm,aes-256-gcm"], "a cipher is named twice"),
    (["issue-ticket"], "the following arguments are required: --user"),
    (["issue-ticket", "--user", "alice", "--ttl", "0"], "must be positive, got 0"),
])
def test_bad_flags_exit_2_with_a_clear_message(args: list[str], message: str,
                                               tmp_path: Path) -> None:
    result = run_cli(args, tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "usage: quantum-server" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("args", "message"), [
    (["--session-timeout", "nan"], "must be a finite number, got nan"),
    (["--host", ""], "argument --host: must not be empty"),
    (["issue-ticket", "--user", "alice", "--ttl", "1e308"], "must be at most 31536000"),
])
def test_out_of_range_flags_exit_2_with_a_clear_message(args: list[str], message: str,
                                                        tmp_path: Path) -> None:
    result = run_cli(args, tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--idle-timeout", "inf"], "must be a finite number, got inf"),
    (["--keepalive-interval", "1e309"], "must be a finite number, got 1e309"),
    (["--idle-timeout", "5000000"], "must be at most 4294967.295, got 5000000"),
    (["--keepalive-interval", "0.0001"], "must be at least 0.001, got 0.0001"),
    (["--session-timeout", "1e308"], "must be at most 31536000, got 1e308"),
    (["--host", "  "], "argument --host: must not be empty"),
    (["--max-sessions-per-user", "0"], "must be positive, got 0"),
    (["--max-connections-per-address", "many"], "not a number: 'many'"),
    (["--handshake-burst", "0.5"], "must be at least 1, got 0.5"),
    (["--retry-above-rate", "-1"], "must be positive, got -1"),
    (["--retain-session-bytes", "-1"], "must be 0 to 2**40 bytes, got -1"),
    (["--retain-total-bytes", "2e3"], "not a whole number of bytes: '2e3'"),
    (["--retain-total-bytes", str((1 << 40) + 1)], "must be 0 to 2**40 bytes"),
    (["--gc-young-threshold", "-1"], "must be 0 to 10000000, got -1"),
    (["--gc-young-threshold", "1e4"], "not a whole number: '1e4'"),
])
def test_every_bound_of_the_server_flags(args: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_retention_flags_reach_the_server_config() -> None:
    args = build_parser().parse_args(["--retain-session-bytes", "0",
                                      "--retain-total-bytes", "1048576"])
    assert (args.retain_session_bytes, args.retain_total_bytes) == (0, 1 << 20)
    defaults = build_parser().parse_args([])
    assert (defaults.retain_session_bytes, defaults.retain_total_bytes) == (1 << 20, 256 << 20)


def test_the_ticket_ttl_is_capped_at_a_year() -> None:
    parse = _ticket_parser().parse_args
    assert parse(["--user", "a", "--ttl", "31536000"]).ttl == 31536000.0
    with pytest.raises(SystemExit):
        parse(["--user", "a", "--ttl", "31536001"])
    with pytest.raises(SystemExit):
        parse(["--user", "a", "--ttl", "inf"])


def test_the_limit_flags_reach_the_server_and_its_manager() -> None:
    args = build_parser().parse_args([
        "--max-connections-per-user", "3", "--max-connections-per-address", "100",
        "--max-sessions-per-user", "5", "--max-sessions", "1000", "--handshake-rate", "7.5",
        "--handshake-burst", "9", "--retry-above-rate", "50"])
    assert (args.max_connections_per_user, args.max_connections_per_address) == (3, 100)
    assert (args.max_sessions_per_user, args.max_sessions) == (5, 1000)
    assert (args.handshake_rate, args.handshake_burst, args.retry_above_rate) == (7.5, 9.0, 50.0)


def test_keygen_refuses_a_folder_others_can_write_to(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = run_cli(["keygen", "--key-file", str(shared / "server.key")], tmp_path)
    assert result.returncode == 2
    assert "let group or others replace the key file" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(shared.iterdir()) == []


def test_keygen_writes_a_private_file_and_prints_its_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "server.key"
    result = run_cli(["keygen", "--key-file", str(path)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = ServerKeyFile.load(path)
    assert f"fingerprint: {key.fingerprint}" in result.stdout
    assert f"public key:  {key.public_key_text}" in result.stdout

    again = run_cli(["keygen", "--key-file", str(path)], tmp_path)
    assert again.returncode == 2
    assert "exists; use --force to replace it" in again.stderr
    assert ServerKeyFile.load(path).fingerprint == key.fingerprint

    forced = run_cli(["keygen", "--key-file", str(path), "--force"], tmp_path)
    assert forced.returncode == 0
    assert ServerKeyFile.load(path).fingerprint != key.fingerprint


def test_issue_ticket_prints_a_ticket_the_authenticator_accepts(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    ServerKeyFile.generate(path)
    result = run_cli(["issue-ticket", "--user", "alice", "--ttl", "3600", "--key-file",
                      str(path)], tmp_path)
    assert result.returncode == 0, result.stderr
    ticket = result.stdout.strip()
    authenticator = TicketAuthenticator(ServerKeyFile.load(path).ticket_secret)
    now = time.time()
    assert authenticator.authenticate("alice", ticket, now) == "alice"
    with pytest.raises(AuthError) as other_user:
        authenticator.authenticate("bob", ticket, now)
    assert other_user.value.code == CloseCode.BAD_TICKET
    with pytest.raises(AuthError) as later:
        authenticator.authenticate("alice", ticket, now + 3601)
    assert later.value.code == CloseCode.EXPIRED_TICKET

    missing = run_cli(["issue-ticket", "--user", "alice", "--key-file",
                       str(tmp_path / "nope.key")], tmp_path)
    assert missing.returncode == 2
    assert "no such key file" in missing.stderr


# ------------------------------------------------------------------------- the server process


@asynccontextmanager
async def server_process(tmp_path: Path, *extra: str) -> AsyncIterator[
        tuple[asyncio.subprocess.Process, re.Match[str]]]:
    key_file = tmp_path / "server.key"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "server.py", "--host", HOST, "--port", "0", "--key-file", str(key_file),
        "--keepalive-interval", "1", *EPHEMERAL_SERVICES, *extra, cwd=ROOT, env=cli_env(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        ready = READY.search(line)
        assert ready is not None, f"no ready line, got {line!r}"
        yield proc, ready
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_server_prints_ready_serves_and_stops_on_signal(sig: signal.Signals,
                                                              tmp_path: Path) -> None:
    async with server_process(tmp_path, "--log-format", "json") as (proc, ready):
        key = ServerKeyFile.load(tmp_path / "server.key")  # created on first start
        assert ready["fingerprint"] == key.fingerprint
        assert ready["public"] == key.public_key_text
        client = await connect(HOST, int(ready["port"]), user_id="alice",
                               ticket=issue_ticket(key.ticket_secret, "alice", 60, time.time()),
                               server_key=ready["public"], configuration=client_config(),
                               reconnect=False)  # what the stopping server does is tested
        assert await client.heartbeat() == pytest.approx(1800.0)

        proc.send_signal(sig)
        # a generous wall-clock bound (a loaded machine can delay the interpreter's exit)...
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await asyncio.wait_for(client.wait_closed(), 10)
        assert client.close_code == CloseCode.SERVER_SHUTDOWN
        assert proc.stderr is not None
        records = [json.loads(line) for line in (await proc.stderr.read()).decode().splitlines()]
    # ...and the README's "exits within 5 s" by the server's own clock: from the signal heard
    # to the server stopped
    at = {r["event"]: datetime.fromisoformat(r["timestamp"]) for r in records}
    assert (at["server stopped"] - at["shutting down"]).total_seconds() < 5.0


async def test_ciphers_flag_restricts_what_the_server_accepts(tmp_path: Path) -> None:
    async with server_process(tmp_path, "--ciphers", "chacha20-poly1305") as (_proc, ready):
        key = ServerKeyFile.load(tmp_path / "server.key")
        ticket = issue_ticket(key.ticket_secret, "alice", 60, time.time())
        # the default offer puts AES-256-GCM first: this server has only ChaCha20-Poly1305
        client = await connect(HOST, int(ready["port"]), user_id="alice", ticket=ticket,
                               server_key=ready["public"], configuration=client_config())
        assert client.cipher == "chacha20-poly1305"
        assert await client.heartbeat() == pytest.approx(1800.0)
        await client.close()
        only_aes = QuantumConfiguration(keepalive_interval=None, handshake_timeout=1.0,
                                        ciphers=("aes-256-gcm",))
        with pytest.raises(ConnectError) as refused:
            await connect(HOST, int(ready["port"]), user_id="alice", ticket=ticket,
                          server_key=ready["public"], configuration=only_aes)
        assert refused.value.code == CloseCode.CIPHER_NOT_SUPPORTED


#: runs the server with a stdout that signals the process itself the moment the ready line is
#: written: the signal lands in the narrowest window there is, deterministically (a signal sent
#: to oneself is delivered before os.kill returns), where a test reading the line could only
#: hit it by luck
SIGNAL_ON_READY = """
import os, signal, sys
import server

class SignalOnReady:
    def __init__(self, out):
        self.out = out
    def write(self, text):
        written = self.out.write(text)
        if " ready on " in text:
            self.out.flush()
            os.kill(os.getpid(), signal.SIGTERM)
        return written
    def __getattr__(self, name):
        return getattr(self.out, name)

sys.stdout = SignalOnReady(sys.stdout)
sys.exit(server.main(sys.argv[1:]))
"""


def test_a_sigterm_the_instant_the_ready_line_is_out_shuts_down_gracefully(
        tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_ON_READY, "--host", HOST, "--port", "0",
         "--key-file", str(tmp_path / "server.key")],
        cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert READY.search(done.stdout), done.stdout
    # not -15 (killed by the default action: the handlers were not installed yet)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert "shutting down" in done.stderr and "server stopped" in done.stderr


async def test_server_refuses_anonymous_users_unless_allowed(tmp_path: Path) -> None:
    from quantum.client import ConnectError

    async with server_process(tmp_path) as (proc, ready):
        with pytest.raises(ConnectError) as refused:
            await connect(HOST, int(ready["port"]), user_id="alice",
                          configuration=client_config())
        assert refused.value.code == CloseCode.BAD_TICKET
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
    async with server_process(tmp_path, "--allow-anonymous") as (proc, ready):
        client = await connect(HOST, int(ready["port"]), user_id="alice",
                               configuration=client_config())
        assert client.session_id is not None
        await client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0


# ----------------------------------------------------------------------------- quantum-client


async def client_process(port: int, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quantum.client_cli", HOST, str(port), *args, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def read_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().rstrip("\n")


async def test_client_cli_sends_lines_prints_replies_and_heartbeats() -> None:
    async with running_server(app=Echo()) as h:
        proc = await client_process(h.port, "--user", "bob", "--keepalive-interval", "0.3")
        assert proc.stdin is not None
        proc.stdin.write(b"hello\n")
        assert await read_line(proc) == "hello"
        # keepalives go out on their own: each answer is printed
        assert await read_line(proc) == "heartbeat: remaining 30s"
        proc.stdin.write("/heartbeat\nwörld\n".encode())
        lines = {await read_line(proc) for _ in range(2)}
        assert "wörld" in lines and lines <= {"wörld", "heartbeat: remaining 30s"}
        sessions, total = await h.manager.list_sessions()
        assert total == 1 and sessions[0].user_id == "bob"
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert h.ended == [(sessions[0].session_id, "client closed")]


class Recorder(Application):
    def __init__(self) -> None:
        self.got: list[tuple[bytes, int, Delivery]] = []

    def on_message(self, peer: Peer, message: bytes, channel: int, mode: Delivery) -> None:
        self.got.append((message, channel, mode))


async def test_client_cli_channel_mode_and_piped_input_until_eof() -> None:
    recorder = Recorder()
    async with running_server(app=recorder) as h:
        proc = await client_process(h.port, "--user", "carol", "--channel", "3", "--mode",
                                    "reliable-unordered", "--metadata", "team=red")
        _, err = await asyncio.wait_for(proc.communicate(b"one\ntwo\nthree\n"), 15)
        assert proc.returncode == 0, err
        assert sorted(recorder.got) == sorted(
            (m, 3, Delivery.RELIABLE_UNORDERED) for m in (b"one", b"two", b"three"))
        assert len(h.ended) == 1 and h.ended[0][1] == "client closed"


async def test_client_cli_reports_a_refused_login() -> None:
    key = ServerKeyFile.new()
    async with running_server(key=key, authenticator=TicketAuthenticator(key.ticket_secret)) as h:
        proc = await client_process(h.port, "--user", "dave", "--ticket", "v1.bad")
        _, err = await asyncio.wait_for(proc.communicate(b""), 15)
        assert proc.returncode == 1
        assert "cannot connect" in err.decode() and "BAD_TICKET" in err.decode()

        ticket = issue_ticket(key.ticket_secret, "dave", 60, time.time())
        proc = await client_process(h.port, "--user", "dave", "--ticket", ticket,
                                    "--server-key", ServerKeyFile.new().public_key_text)
        _, err = await asyncio.wait_for(proc.communicate(b""), 15)
        assert proc.returncode == 1 and "BAD_SERVER_KEY" in err.decode()


async def test_client_cli_exits_1_when_the_server_ends_the_session() -> None:
    async with running_server(app=Echo()) as h:
        proc = await client_process(h.port, "--user", "erin")
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(b"ping\n")
        assert await read_line(proc) == "ping"

        async def one_session() -> bool:
            return (await h.manager.get_stats())["total"] == 1

        await eventually(one_session, what="the CLI's session")
        sessions, _ = await h.manager.list_sessions()
        await h.manager.delete_session(sessions[0].session_id, "kicked")
        assert await asyncio.wait_for(proc.wait(), 10) == 1
        err = (await proc.stderr.read()).decode()
        assert "connection closed: session kicked" in err


def test_client_cli_bad_flags_exit_2() -> None:
    for args, message in (
        (["127.0.0.1", "9090"], "the following arguments are required: --user"),
        (["127.0.0.1", "0", "--user", "a"], "port must be 1-65535, got 0"),
        (["127.0.0.1", "9090", "--user", "a", "--mode", "fast"], "invalid choice: 'fast'"),
        (["127.0.0.1", "9090", "--user", "a", "--channel", "256"], "channel must be 0-255"),
        (["127.0.0.1", "9090", "--user", "a", "--metadata", "novalue"], "KEY=VALUE"),
    ):
        result = subprocess.run([sys.executable, "-m", "quantum.client_cli", *args], cwd=ROOT,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, args
        assert message in result.stderr, args


async def test_a_shutdown_over_its_budget_says_so_and_exits_1_without_a_traceback(
        tmp_path: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import quantum_server.cli as cli

    async def no_time(server: object) -> float:
        return 0.0  # asyncio.wait_for gives a zero budget no time at all: it always runs out

    monkeypatch.setattr(cli, "_stop_budget", no_time)
    # serve() configures structlog process-wide, onto this test's captured stderr: later tests
    # in this process would log to a closed file. The library's default output is kept.
    monkeypatch.setattr("session.logs.configure_logging", lambda *args, **kwargs: None)
    # --gc-young-threshold 0: the collector of this (test) process is left alone, unfrozen
    args = build_parser().parse_args(["--host", HOST, "--port", "0", "--no-grpc",
                                      "--no-metrics", "--no-snapshot", "--gc-young-threshold", "0",
                                      "--key-file", str(tmp_path / "server.key")])
    serving = asyncio.ensure_future(cli.serve(args))
    out = ""
    for _ in range(200):  # the ready line: the signal handlers are in
        await asyncio.sleep(0.05)
        out += capfd.readouterr().out
        if "ready on" in out:
            break
    assert "ready on" in out
    os.kill(os.getpid(), signal.SIGTERM)  # handled by serve's loop handler, not the default
    assert await asyncio.wait_for(serving, 30) == 1
    err = capfd.readouterr().err
    assert "shutdown did not finish within" in err and "stopped anyway" in err
    assert "Traceback" not in err

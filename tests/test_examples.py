"""The examples run as users run them (`python examples/<name>.py ...`) and answer a real client;
every Python snippet in the README is an excerpt of one of them, and every command line in it
parses."""

from __future__ import annotations

import asyncio
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from quantum.client import QuantumClient, connect
from quantum.errors import CloseCode
from quantum.frames import Delivery
from tests.test_server import HOST, client_config
from tests.test_server_cli import EPHEMERAL_SERVICES, ROOT, cli_env

READY = re.compile(r"(?P<name>[\w-]+) ready on [\d.]+:(?P<port>\d+) (?:store=\S+ )?fingerprint=\S+ "
                   r"public-key=(?P<public>\S+)")
#: the session API's address of each example server started (by its UDP port), from the ready line
API_ADDRESS: dict[int, str] = {}


@asynccontextmanager
async def example(name: str, tmp_path: Path) -> AsyncIterator[
        tuple[int, str, asyncio.subprocess.Process]]:
    """Start examples/<name>.py on an ephemeral port; yields (port, public key, process);
    stops it with SIGTERM, which must end it gracefully."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, f"examples/{name}.py", "--host", HOST, "--port", "0", "--allow-anonymous",
        "--key-file", str(tmp_path / "server.key"), *EPHEMERAL_SERVICES, cwd=ROOT,
        env=cli_env(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        ready = READY.search(line)
        assert ready is not None, f"no ready line, got {line!r}"
        api = re.search(r" api=(\S+)", line)
        if api is not None:
            API_ADDRESS[int(ready["port"])] = api.group(1)
        yield int(ready["port"]), ready["public"], proc
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def join(port: int, key: str, user: str,
               metadata: dict[str, str] | None = None, reconnect: bool = True) -> QuantumClient:
    return await connect(HOST, port, user_id=user, server_key=key, metadata=metadata,
                         configuration=client_config(), reconnect=reconnect)


async def recv(client: QuantumClient) -> bytes:
    return await asyncio.wait_for(client.recv(), 5)


async def test_echo_server_answers_on_the_same_channel_and_mode(tmp_path: Path) -> None:
    async with example("echo_server", tmp_path) as (port, key, _):
        client = await join(port, key, "alice")
        big = bytes(range(256)) * 20
        await client.send(b"hello")
        await client.send(big, 5, Delivery.RELIABLE_UNORDERED)
        first = await asyncio.wait_for(client.recv_message(), 5)
        second = await asyncio.wait_for(client.recv_message(), 5)
        got = {(m.data, m.channel, m.mode) for m in (first, second)}
        assert got == {(b"hello", 0, Delivery.RELIABLE_ORDERED),
                       (big, 5, Delivery.RELIABLE_UNORDERED)}
        await client.close()


async def test_chat_room_broadcasts_within_a_room(tmp_path: Path) -> None:
    async with example("chat_room", tmp_path) as (port, key, _):
        alice = await join(port, key, "alice", metadata={"room": "games"})
        assert await recv(alice) == b"* welcome to games; here: nobody yet"
        bob = await join(port, key, "bob", metadata={"room": "games"})
        assert await recv(bob) == b"* welcome to games; here: alice"
        assert await recv(alice) == b"* bob joined"
        # another room: hears none of it (and, not reconnecting, sees the shutdown below)
        carol = await join(port, key, "carol", reconnect=False)
        assert await recv(carol) == b"* welcome to lobby; here: nobody yet"

        await alice.send(b"gg")
        assert await recv(bob) == b"alice: gg"
        await bob.close()
        assert await recv(alice) == b"* bob left (client closed)"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(carol.recv(), 0.3)
        await alice.close()
    # the example stopped: carol's connection was closed by the shutdown
    await asyncio.wait_for(carol.wait_closed(), 3)
    assert carol.close_code == CloseCode.SERVER_SHUTDOWN


async def test_hello_server_and_the_client_example_from_connect_to_resume(
        tmp_path: Path) -> None:
    async with example("hello_server", tmp_path) as (port, key, server):
        client = await asyncio.create_subprocess_exec(
            sys.executable, "examples/client.py", HOST, str(port), "--user", "alice",
            "--server-key", key, cwd=ROOT, env=cli_env(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(client.communicate(), 30)
        assert client.returncode == 0, err.decode()
        first, second = out.decode().splitlines()
        sid = re.fullmatch(r"session ([0-9a-f-]{36}): reply b'hello', 1800 s left, "
                           r"srtt 0\.\d{4} s", first)
        assert sid is not None, first
        # the token from the first connection resumed the same session on the second
        assert second == f"resumed {sid[1]}: True"
        assert server.stdout is not None
        lines = [(await asyncio.wait_for(server.stdout.readline(), 5)).decode().rstrip()
                 for _ in range(3)]
        assert lines == [f"hello alice {sid[1]} {{'room': 'blue'}}"] * 2 + [
            "bye alice client closed"]


def test_the_session_service_example_logs_info_unless_asked_for_debug() -> None:
    def run(*args: str) -> tuple[str, str]:
        done = subprocess.run([sys.executable, "examples/session_service.py", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr

    out, err = run()
    created, resumed = out.splitlines()
    assert re.fullmatch(r"created [0-9a-f-]{36} for alice: 300 s left", created)
    assert resumed == "resumed from 198.51.100.4:40001, state ACTIVE"
    events = [line.split("]", 1)[1].split("[")[0].strip() for line in err.splitlines()]
    assert events == ["session created", "session resumed", "session deleted"]
    _, debug = run("--debug")
    assert "[debug    ] session heartbeat" in debug


# ---------------------------------------------------------------------------- the README

README = ROOT / "README.md"
FENCED = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
#: every example, and the test module that runs it
RUN_BY = {"echo_server.py": "test_examples", "chat_room.py": "test_examples",
          "hello_server.py": "test_examples", "client.py": "test_examples",
          "session_service.py": "test_examples", "session_demo.py": "test_session_demo",
          "login_then_join.py": "test_examples"}


def readme_blocks(language: str) -> list[str]:
    return [m[2] for m in FENCED.finditer(README.read_text()) if m[1] == language]


def test_every_code_block_in_the_readme_says_its_language() -> None:
    assert {m[1] for m in FENCED.finditer(README.read_text())} == {"python", "sh"}


def test_every_example_is_run_by_a_test() -> None:
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == set(RUN_BY)


def test_every_python_snippet_in_the_readme_is_an_excerpt_of_a_runnable_example() -> None:
    snippets = readme_blocks("python")
    assert len(snippets) >= 4
    for snippet in snippets:
        first, *rest = snippet.splitlines()
        named = re.fullmatch(r"# (examples/(\w+\.py))(?:, excerpt)?", first)
        assert named, f"a README snippet must start with '# examples/<file>.py': {first!r}"
        assert named[2] in RUN_BY
        # its lines, in this order, without their indentation ("..." stands for left-out ones)
        source = iter(line.strip() for line in (ROOT / named[1]).read_text().splitlines())
        for line in rest:
            wanted = line.strip()
            if wanted and wanted != "...":
                assert wanted in source, f"{named[1]} has no line {wanted!r} (in this order)"


def readme_commands() -> list[list[str]]:
    """The quantum-server and quantum-client command lines of the README's shell blocks."""
    commands = []
    for block in readme_blocks("sh"):
        for line in block.splitlines():
            for part in line.split(" # ")[0].split("&&"):
                argv = shlex.split(part)
                if argv and argv[0] in ("quantum-server", "quantum-client"):
                    commands.append(argv)
    return commands


def test_every_command_line_in_the_readme_parses() -> None:
    from quantum.client_cli import build_parser as client_parser
    from quantum_server.admin import _token_parser, sessions_parser
    from quantum_server.cli import _keygen_parser, _ticket_parser, build_parser

    commands = readme_commands()
    assert len(commands) >= 6
    for program, *args in commands:
        if program == "quantum-client":
            client_parser().parse_args(args)
        elif args[:1] == ["keygen"]:
            _keygen_parser().parse_args(args[1:])
        elif args[:1] == ["issue-ticket"]:
            _ticket_parser().parse_args(args[1:])
        elif args[:1] == ["sessions"]:
            sessions_parser().parse_args(args[1:])
        elif args[:1] == ["api-token"]:
            _token_parser().parse_args(args[1:])
        else:
            build_parser().parse_args(args)


async def test_login_over_grpc_then_join_over_udp(tmp_path: Path) -> None:
    """examples/login_then_join.py against a real server with its session API."""
    async with example("echo_server", tmp_path) as (port, key, _):
        token_file = tmp_path / "server.api-token"  # created beside the key on first start
        address = API_ADDRESS.get(port)
        assert address is not None, "the ready line named no API address"
        result = await asyncio.create_subprocess_exec(
            sys.executable, "examples/login_then_join.py", "--api", address,
            "--token-file", str(token_file), "--server", f"{HOST}:{port}",
            "--server-key", key, "--user", "alice", cwd=ROOT, env=cli_env(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(result.communicate(), 30)
        assert result.returncode == 0, err.decode()
        lines = out.decode().splitlines()
        assert lines[0].endswith("SESSION_STATE_CONNECTING"), lines
        assert "claimed over UDP: SESSION_STATE_ACTIVE, remaining 600.0 s" in lines[1], lines

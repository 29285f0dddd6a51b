"""The examples run as users run them (`python examples/<name>.py ...`) and answer a real client."""

from __future__ import annotations

import asyncio
import re
import signal
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


@asynccontextmanager
async def example(name: str, tmp_path: Path) -> AsyncIterator[tuple[int, str]]:
    """Start examples/<name>.py on an ephemeral port; yields (port, public key); stops it."""
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
        yield int(ready["port"]), ready["public"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def join(port: int, key: str, user: str,
               metadata: dict[str, str] | None = None) -> QuantumClient:
    return await connect(HOST, port, user_id=user, server_key=key, metadata=metadata,
                         configuration=client_config())


async def recv(client: QuantumClient) -> bytes:
    return await asyncio.wait_for(client.recv(), 5)


async def test_echo_server_answers_on_the_same_channel_and_mode(tmp_path: Path) -> None:
    async with example("echo_server", tmp_path) as (port, key):
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
    async with example("chat_room", tmp_path) as (port, key):
        alice = await join(port, key, "alice", metadata={"room": "games"})
        assert await recv(alice) == b"* welcome to games; here: nobody yet"
        bob = await join(port, key, "bob", metadata={"room": "games"})
        assert await recv(bob) == b"* welcome to games; here: alice"
        assert await recv(alice) == b"* bob joined"
        carol = await join(port, key, "carol")  # another room: hears none of it
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

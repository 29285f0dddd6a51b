"""IPv6 and dual stack on the real server over real UDP (issue 13): a server on ::1 with the
Python client and the CLIs, a server on :: serving IPv4 and IPv6 clients on one socket, each
seen under its own address, a client that moves from IPv4 to IPv6, and a name that resolves to
several addresses. Needs the kernel's IPv6 loopback (skipped, saying so, without it)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from quantum.auth import TicketAuthenticator
from quantum.client import ConnectError, QuantumClient, connect, server_addresses
from quantum.config import QuantumConfiguration
from quantum.connection import Connection
from quantum.errors import CloseCode
from quantum.handshake import Credentials
from quantum.keys import ServerKeyFile
from tests.test_server import Echo, client_config, eventually, running_server
from tests.test_server_cli import ROOT, cli_env
from tests.test_server_migration import echoed, established, open_path


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _ipv6_loopback(),
                                reason="this kernel has no IPv6 loopback (::1 cannot be bound)")


async def dial(host: str, port: int, user_id: str = "alice", **kwargs: Any) -> QuantumClient:
    kwargs.setdefault("configuration", client_config())
    return await asyncio.wait_for(connect(host, port, user_id=user_id, **kwargs), timeout=10)


def local_port(client: QuantumClient) -> int:
    transport = client._transport
    assert transport is not None
    port: int = transport.get_extra_info("sockname")[1]
    return port


# -------------------------------------------------------------------- the in-process server


async def test_a_server_on_ipv6_loopback_echoes_heartbeats_and_resumes() -> None:
    async with running_server(app=Echo(), host="::1") as h:
        assert h.server.address_text == f"[::1]:{h.port}" and h.port > 0
        first = await dial("::1", h.port, metadata={"room": "6"})
        await first.send(b"over IPv6")
        assert await first.recv() == b"over IPv6"
        assert await first.heartbeat() == pytest.approx(30.0)
        sid, token = first.session_id or "", first.session_token or ""
        s = await h.manager.get_session(sid)
        assert (s.client_ip, s.client_port) == ("::1", local_port(first))
        assert s.server_addr == f"[::1]:{h.port}"
        first.abort()

        second = await dial("::1", h.port, resume=(sid, token))
        assert (second.session_id, second.resumed) == (sid, True)
        await second.send(b"resumed")
        assert await second.recv() == b"resumed"
        s = await h.manager.get_session(sid)
        assert (s.client_ip, s.client_port, s.metadata) == ("::1", local_port(second),
                                                            {"room": "6"})
        await second.close()


async def test_a_dual_stack_server_serves_ipv4_and_ipv6_clients_on_one_socket() -> None:
    async with running_server(app=Echo(), host="::", max_connections_per_address=1) as h:
        transport = h.server._transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert h.server.address_text == f"[::]:{h.port}"

        v4, v6 = await asyncio.gather(dial("127.0.0.1", h.port, "four"),
                                      dial("::1", h.port, "six"))
        for client, text in ((v4, b"by IPv4"), (v6, b"by IPv6")):
            await client.send(text)
            assert await client.recv() == text
        sessions = {s.user_id: s for s in (await h.manager.list_sessions())[0]}
        # the IPv4 client arrived as ::ffff:127.0.0.1, and is shown and stored as IPv4
        assert (sessions["four"].client_ip, sessions["four"].client_port) == (
            "127.0.0.1", local_port(v4))
        assert (sessions["six"].client_ip, sessions["six"].client_port) == ("::1", local_port(v6))
        assert h.server.peers[v4.connection_id].address[0] == "::ffff:127.0.0.1"  # replies go
        # ... and counted as IPv4 by the per-address limit (1 here): a second IPv4 client is
        # refused, whichever way it is spelled; IPv6 is another source
        per_address = h.server.listener.per_address
        assert (per_address.count("127.0.0.1"), per_address.count("::/64")) == (1, 1)
        with pytest.raises(ConnectError) as refused:
            await dial("127.0.0.1", h.port, "four-again")
        assert refused.value.code == CloseCode.ADDRESS_FULL
        await asyncio.gather(v4.close(), v6.close())


async def test_a_client_moving_from_ipv4_to_ipv6_migrates_and_the_session_follows() -> None:
    async with running_server(app=Echo(), host="::") as h:
        loop = asyncio.get_running_loop()
        conn = Connection.client(("127.0.0.1", h.port), Credentials(user_id="mover"),
                                 loop.time(),
                                 configuration=QuantumConfiguration(keepalive_interval=None))
        first, old = await open_path(conn, ("127.0.0.1", 0), socket.AF_INET,
                                     server=("127.0.0.1", h.port))
        session_id = await established(conn, old)
        (s,), _ = await h.manager.list_sessions()
        assert (s.client_ip, s.client_port) == ("127.0.0.1", first.get_extra_info("sockname")[1])

        # the client's network changes: from now on it sends over IPv6
        second, new = await open_path(conn, ("::1", 0), socket.AF_INET6, server=("::1", h.port))
        first.close()
        new_port = second.get_extra_info("sockname")[1]
        await echoed(conn, new, b"after the move")

        async def followed() -> bool:
            (moved,), _ = await h.manager.list_sessions()
            return (moved.client_ip, moved.client_port) == ("::1", new_port)

        await eventually(followed, 5.0, "the session's client address to follow to IPv6")
        (moved,), _ = await h.manager.list_sessions()
        assert moved.session_id == s.session_id == str(uuid.UUID(bytes=session_id))
        assert moved.state.name == "ACTIVE"
        second.close()


V6 = (socket.AF_INET6, ("::1", 0, 0, 0))
V4 = (socket.AF_INET, ("127.0.0.1", 0))


def resolving(monkeypatch: pytest.MonkeyPatch, name: str,
              *addresses: tuple[socket.AddressFamily, tuple[Any, ...]]) -> None:
    """`name` resolves to `addresses`, in that order, on the running loop (the machine's
    resolver is not ours to configure; its `localhost` is IPv4 only); other names as usual."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, **kwargs: Any) -> list[Any]:
        if host != name:
            return await real(host, port, **kwargs)
        return [(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", (addr[0], port, *addr[2:]))
                for family, addr in addresses]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize(("listen", "order"), [
    ("127.0.0.1", "IPv6 first"),  # nothing on ::1: ICMP says so, and IPv4 is tried at once
    ("::1", "IPv4 first"),
])
async def test_connect_tries_every_address_the_name_resolves_to(
        monkeypatch: pytest.MonkeyPatch, listen: str, order: str) -> None:
    async with running_server(app=Echo(), host=listen) as h:
        resolving(monkeypatch, "dual.test", *((V6, V4) if order == "IPv6 first" else (V4, V6)))
        # a handshake timeout far above what a loaded machine's handshake takes: had the
        # unreachable address been given up on only at its timeout, the dial would take 30 s
        patient = dataclasses.replace(client_config(), handshake_timeout=30.0, handshake_tries=120)
        started = time.monotonic()
        client = await asyncio.wait_for(
            connect("dual.test", h.port, user_id="alice", configuration=patient), timeout=60)
        # far below the 30 s handshake timeout: the unreachable address failed at once
        assert time.monotonic() - started < 15.0
        await client.send(b"found it")
        assert await client.recv() == b"found it"
        (s,), _ = await h.manager.list_sessions()
        assert s.client_ip == listen
        await client.close()


async def test_a_refusal_from_the_first_address_is_not_retried_at_the_next(
        monkeypatch: pytest.MonkeyPatch) -> None:
    key = ServerKeyFile.new()
    async with running_server(app=Echo(), host="::", key=key,
                              authenticator=TicketAuthenticator(key.ticket_secret)) as h:
        resolving(monkeypatch, "dual.test", V6, V4)
        with pytest.raises(ConnectError) as refused:
            await dial("dual.test", h.port, ticket="v1.not-a-ticket")
        assert refused.value.code == CloseCode.BAD_TICKET
        # the handshake at ::1 completed and was refused; none was tried at 127.0.0.1
        assert h.server.listener.stats.handshakes_completed == 1
        assert h.server.counters.auth_failures == 1


def test_server_addresses_are_every_getaddrinfo_result_once() -> None:
    async def main() -> None:
        assert await server_addresses("::1", 9097) == [(socket.AF_INET6, ("::1", 9097, 0, 0))]
        assert await server_addresses("127.0.0.1", 9097) == [(socket.AF_INET,
                                                              ("127.0.0.1", 9097))]
        with pytest.raises(ConnectError, match=r"cannot resolve no-such-host\.invalid"):
            await server_addresses("no-such-host.invalid", 9097)

    asyncio.run(main())


# -------------------------------------------------------------------- the command lines


READY = re.compile(r"quantum-server ready on \[::1\]:(?P<port>\d+) store=memory "
                   r"fingerprint=\S+ public-key=(?P<public>\S+) api=\[::1\]:(?P<api>\d+) "
                   r"metrics=\[::1\]:(?P<metrics>\d+)")


async def test_the_command_lines_over_ipv6(tmp_path: Path) -> None:
    """`quantum-server --host ::1 --port 0` prints `[::1]:PORT` with the real port;
    `quantum-client ::1 PORT` talks to it; `sessions list` over the API on [::1] shows the
    client as `[::1]:port`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "server.py", "--host", "::1", "--port", "0", "--allow-anonymous",
        "--grpc", "[::1]:0", "--metrics", "[::1]:0", "--key-file", str(tmp_path / "k.key"),
        cwd=ROOT, env=cli_env(tmp_path), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    client = None
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        ready = READY.search(line)
        assert ready is not None, f"no IPv6 ready line, got {line!r}"
        port = int(ready["port"])
        assert port > 0
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quantum.client_cli", "::1", str(port), "--user", "ada",
            "--server-key", ready["public"], cwd=ROOT, env=cli_env(tmp_path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"/heartbeat\n")
        answer = (await asyncio.wait_for(client.stdout.readline(), 15)).decode()
        assert answer.strip() == "heartbeat: remaining 1800s"

        listed = await asyncio.to_thread(
            subprocess.run, [sys.executable, "server.py", "sessions", "list", "--api",
                             f"[::1]:{ready['api']}", "--key-file", str(tmp_path / "k.key")],
            cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0, listed.stderr
        assert re.search(r"\bada\s+ACTIVE\s+\[::1\]:\d+\s", listed.stdout), listed.stdout

        client.stdin.close()
        assert await asyncio.wait_for(client.wait(), 10) == 0
    finally:
        for p in (client, proc):
            if p is not None and p.returncode is None:
                p.send_signal(signal.SIGTERM)
                await asyncio.wait_for(p.wait(), 10)


async def test_the_examples_over_ipv6(tmp_path: Path) -> None:
    """examples/echo_server.py on ::1; examples/client.py and examples/login_then_join.py
    (whose --server takes `[::1]:PORT`) against it."""
    key_file = tmp_path / "k.key"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "examples/echo_server.py", "--host", "::1", "--port", "0",
        "--allow-anonymous", "--grpc", "[::1]:0", "--no-metrics", "--key-file", str(key_file),
        cwd=ROOT, env=cli_env(tmp_path), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        ready = re.search(r"ready on \[::1\]:(?P<port>\d+) .*public-key=(?P<public>\S+) "
                          r"api=(?P<api>\S+)", line)
        assert ready is not None, f"no IPv6 ready line, got {line!r}"

        def example(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, *args], cwd=ROOT, env=cli_env(tmp_path),
                                  capture_output=True, text=True, timeout=30)

        client, joined = await asyncio.gather(
            asyncio.to_thread(example, "examples/client.py", "::1", ready["port"], "--user",
                              "alice", "--server-key", ready["public"]),
            asyncio.to_thread(example, "examples/login_then_join.py", "--api", ready["api"],
                              "--token-file", str(tmp_path / "k.api-token"), "--server",
                              f"[::1]:{ready['port']}", "--server-key", ready["public"],
                              "--user", "bob"))
        assert client.returncode == 0, client.stderr
        assert "reply b'hello'" in client.stdout and ": True" in client.stdout
        assert joined.returncode == 0, joined.stderr
        assert "claimed over UDP: SESSION_STATE_ACTIVE" in joined.stdout
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)

"""What the `quantum-server` flags do, seen from outside the process (README flags table).

test_server_cli.py checks that flags are parsed and refused; here each flag's effect is seen on
the wire: `--fec`/`--no-fec` and `--keepalive-interval`/`--idle-timeout` in the ServerParams a
client is given, `--max-connections` in the next handshake refused SERVER_FULL,
`--idle-timeout` in a silent client's slot being freed no earlier than it says,
`--log-format json` in every line of the log, and the shutdown's duration in that log's own
timestamps.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from quantum.client import ConnectError, QuantumClient, connect
from quantum.config import QuantumConfiguration
from quantum.errors import CloseCode
from tests.test_server import HOST
from tests.test_server_attacks import RawClient
from tests.test_server_cli import server_process

IDLE = 3.0  # the server's --idle-timeout in the test below


def quiet_client(tries: int) -> QuantumConfiguration:
    return QuantumConfiguration(keepalive_interval=0.3, idle_timeout=30.0,
                                handshake_timeout=4.0, handshake_tries=tries)


async def dial(port: int, user: str, public: str, fec: bool = True,
               tries: int = 8) -> QuantumClient:
    """A connected client; `tries=1` to hear a refusal at once (a plaintext REJECT ends the
    handshake only when it answers the last SYN: before that it could be spoofed)."""
    return await asyncio.wait_for(connect(HOST, port, user_id=user, server_key=public, fec=fec,
                                          configuration=quiet_client(tries)), 15)


async def test_no_fec_keepalive_idle_timeout_max_connections_and_json_logs(
        tmp_path: Path) -> None:
    async with server_process(tmp_path, "--allow-anonymous", "--no-fec",
                              "--keepalive-interval", "0.5", "--idle-timeout", str(IDLE),
                              "--max-connections", "2", "--log-format", "json") as (proc, ready):
        port, public = int(ready["port"]), ready["public"]
        alice = await dial(port, "alice", public)
        params = alice._conn.params
        assert params is not None
        assert params.fec is None  # --no-fec: the client asked for FEC and was told no
        assert params.keepalive_interval == pytest.approx(0.5)  # --keepalive-interval
        assert params.idle_timeout == pytest.approx(IDLE)  # --idle-timeout
        assert alice._conn._fec is None

        # --max-connections 2: the second is admitted, the third refused SERVER_FULL
        # (the server hears the mute client last after this instant: its slot cannot come
        # free before first_heard + IDLE)
        first_heard = time.monotonic()
        mute = await RawClient.start(port, public, user="mute")
        mute.outgoing = lambda data: None  # from now on it says nothing
        with pytest.raises(ConnectError) as full:
            await dial(port, "carol", public, tries=1)
        assert full.value.code == CloseCode.SERVER_FULL

        # --idle-timeout: the silent client's slot comes free, and never before IDLE seconds
        deadline = time.monotonic() + IDLE + 20
        while True:
            try:
                carol = await dial(port, "carol", public, tries=1)
                break
            except ConnectError as refused:
                assert refused.code == CloseCode.SERVER_FULL
                assert time.monotonic() < deadline, "the silent client was never dropped"
                await asyncio.sleep(0.05)
        assert time.monotonic() - first_heard >= IDLE
        assert await alice.heartbeat() is not None  # alice kept talking: still connected
        await carol.close()
        await alice.close()

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert proc.stderr is not None
        lines = (await proc.stderr.read()).decode().splitlines()
    # --log-format json: every line is one JSON object with the fields structlog adds
    records = [json.loads(line) for line in lines]
    assert records and all({"event", "level", "timestamp"} <= set(r) for r in records)
    events = [r["event"] for r in records]
    assert "server started" in events and "server stopped" in events
    # the README's "exits within 5 s", by the server's own clock (a loaded machine can delay
    # the process's start and exit, not what the server does after the signal)
    at = {r["event"]: datetime.fromisoformat(r["timestamp"]) for r in records}
    assert (at["server stopped"] - at["shutting down"]).total_seconds() < 5.0


async def test_fec_is_negotiated_by_default(tmp_path: Path) -> None:
    async with server_process(tmp_path, "--allow-anonymous") as (proc, ready):
        port, public = int(ready["port"]), ready["public"]
        with_fec = await dial(port, "alice", public)
        params = with_fec._conn.params
        assert params is not None and params.fec == (10, 3)
        assert with_fec._conn._fec is not None
        # a client that does not want FEC is not given it
        without = await dial(port, "bob", public, fec=False)
        assert without._conn.params is not None and without._conn.params.fec is None
        await with_fec.close()
        await without.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0

"""A MemoryStore server's sessions across a restart (quantum_server/restart.py), in process:
`stop` writes them and what their connections still owed to the snapshot file (0600, atomic),
`start` puts them back (expired ones dropped, connected ones DISCONNECTING) and deletes the file;
a bad file is reported with its path and reason and the server starts empty, never half full.
The real `quantum-server` process across SIGTERM and SIGKILL: tests/test_restart_process.py."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from quantum.auth import AnonymousAuthenticator
from quantum.client import ConnectError
from quantum.errors import CloseCode
from quantum.keys import ServerKeyFile
from quantum_server import restart
from quantum_server.restart import RestartSnapshot, default_snapshot_path, snapshot_key
from server import QuantumServer, ServerConfig
from session import snapshot as snapshot_module
from session.errors import SessionExists
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.model import Session, State
from session.snapshot import Retained, Snapshot, encode
from tests.test_server import HOST, dial


def make_server(key: ServerKeyFile, path: Path | None,
                store: MemoryStore | None = None) -> QuantumServer:
    manager = SessionManager(ManagerConfig(store=store or MemoryStore(), default_timeout=300.0))
    server = QuantumServer(manager, key, AnonymousAuthenticator(),
                           ServerConfig(host=HOST, port=0, keepalive_interval=1.0,
                                        idle_timeout=30.0, stats_interval=0.2))
    if path is not None:
        server.restart_snapshot = RestartSnapshot(path, key)
    return server


def warnings_of(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["log_level"] in ("warning", "error")]


def a_session(n: int, expires_at: datetime, state: State = State.DISCONNECTING) -> Session:
    now = datetime.now(UTC)
    return Session(f"0192e4a0-0000-7000-8000-{n:012d}", f"user-{n}",
                   f"0192e4a0-0000-4000-8000-{n:012d}", "192.0.2.1", 4000, state, now, now,
                   expires_at, token_hash=bytes(32))


async def test_a_stop_writes_the_sessions_and_a_start_takes_every_client_back(
        tmp_path: Path) -> None:
    key, path = ServerKeyFile.new(), tmp_path / "server.snapshot"
    server = make_server(key, path)
    await server.start()
    # resumed by hand below, after the restart: no automatic reconnect into the stopped server
    clients = [await dial(server.port, f"user-{i}", metadata={"room": str(i)}, reconnect=False)
               for i in range(3)]
    resume = [(c.session_id or "", c.session_token or "") for c in clients]
    # what lost connections owed (the resume track fills this): written with the sessions
    server.retained.put(resume[0][0], b"owed to user-0", time.time() + 60)
    server.retained.put("0192e4a0-0000-7000-8000-00000000dead", b"orphan", time.time() + 60)
    await server.stop()
    for client in clients:
        await asyncio.wait_for(client.wait_closed(), 5)
        assert client.close_code == CloseCode.SERVER_SHUTDOWN

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["server.snapshot"]  # no temporary file left behind
    data = path.read_bytes()
    for _, token in resume:
        assert token.encode() not in data  # the tokens' hashes only

    again = make_server(key, path)  # a new process: a new, empty store
    with capture_logs() as logs:
        await again.start()
    try:
        assert not path.exists()  # loaded, then deleted: a crash later cannot bring it back
        assert next(e for e in logs if e["event"] == "session snapshot loaded")["sessions"] == 3
        for sid, _ in resume:
            stored = await again.manager.store.get(sid)
            assert stored.state is State.DISCONNECTING
        assert len(again.retained) == 1  # the orphan blob was not written
        assert again.retained.take(resume[0][0], time.time()) == b"owed to user-0"
        for i, (sid, token) in enumerate(resume):
            back = await dial(again.port, f"user-{i}", resume=(sid, token))
            assert back.resumed and back.session_id == sid
            stored = await again.manager.store.get(sid)
            assert (stored.state, stored.metadata) == (State.ACTIVE, {"room": str(i)})
            await back.close()
        with pytest.raises(ConnectError) as refused:  # a token is still needed
            await dial(again.port, "user-1", resume=(resume[1][0], resume[0][1]))
        assert refused.value.code == CloseCode.BAD_RESUME
    finally:
        await again.stop()


async def test_what_expired_while_the_server_was_down_is_dropped(tmp_path: Path) -> None:
    key, path = ServerKeyFile.new(), tmp_path / "server.snapshot"
    now = datetime.now(UTC)
    live = a_session(1, now + timedelta(seconds=60), State.ACTIVE)
    dead = a_session(2, now - timedelta(seconds=1))
    unclaimed = a_session(3, now + timedelta(seconds=60), State.CONNECTING)
    unclaimed.connection_id = ""
    ts = now.timestamp()
    path.write_bytes(encode(Snapshot((live, dead, unclaimed), (
        Retained(live.session_id, b"kept", ts + 60), Retained(unclaimed.session_id, b"x", ts - 1),
        Retained(dead.session_id, b"gone", ts + 60))), snapshot_key(key)))
    server = make_server(key, path)
    with capture_logs() as logs:
        await server.start()
    try:
        loaded = next(e for e in logs if e["event"] == "session snapshot loaded")
        assert (loaded["sessions"], loaded["expired"], loaded["retained"],
                loaded["retained_expired"]) == (2, 1, 1, 2)
        store = server.manager.store
        assert await store.count() == 2
        assert (await store.get(live.session_id)).state is State.DISCONNECTING
        assert (await store.get(unclaimed.session_id)).state is State.CONNECTING
        assert next(iter(server.retained.items()))[:2] == (live.session_id, b"kept")
    finally:
        server.restart_snapshot = None
        await server.stop()


def _bad_snapshots(key: ServerKeyFile) -> Iterator[tuple[str, bytes, str]]:
    good = encode(Snapshot((a_session(1, datetime.now(UTC) + timedelta(seconds=60)),)),
                  snapshot_key(key))
    yield "truncated", good[:-7], "truncated"
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0x40
    yield "corrupt", bytes(damaged), "integrity check failed"
    yield "foreign", encode(Snapshot(()), snapshot_key(ServerKeyFile.new())), "another server key"
    yield "future", good[:8] + b"\x00\x09" + good[10:], "format version 9"
    yield "not a snapshot", b"hello\n", "no snapshot magic"


async def test_a_bad_snapshot_is_reported_and_the_server_starts_empty(tmp_path: Path) -> None:
    key, path = ServerKeyFile.new(), tmp_path / "server.snapshot"
    for what, data, reason in _bad_snapshots(key):
        path.write_bytes(data)
        server = make_server(key, path)
        with capture_logs() as logs:
            await server.start()
        try:
            warned = warnings_of(logs)
            assert len(warned) == 1, what
            assert warned[0]["event"] == "session snapshot not loaded: starting with no sessions"
            assert warned[0]["path"] == str(path) and reason in warned[0]["reason"], what
            assert await server.manager.store.count() == 0 and len(server.retained) == 0
            assert path.read_bytes() == data  # left for the operator to look at
            client = await dial(server.port, "alice")  # and it serves
            await client.close()
        finally:
            server.restart_snapshot = None
            await server.stop()


async def test_an_unreadable_snapshot_path_is_reported_not_fatal(tmp_path: Path) -> None:
    key = ServerKeyFile.new()
    fifo = tmp_path / "fifo.snapshot"
    os.mkfifo(fifo)  # would block a plain open() for reading forever
    server = make_server(key, fifo)
    with capture_logs() as logs:
        await asyncio.wait_for(server.start(), 5)
    server.restart_snapshot = None
    await server.stop()
    assert "not a regular file" in warnings_of(logs)[0]["reason"]


async def test_no_snapshot_file_is_a_quiet_empty_start(tmp_path: Path) -> None:
    server = make_server(ServerKeyFile.new(), tmp_path / "none.snapshot")
    with capture_logs() as logs:
        await server.start()
    server.restart_snapshot = None
    await server.stop()
    assert not warnings_of(logs)
    assert [e["event"] for e in logs if "snapshot" in e["event"]] == ["no session snapshot to load"]


async def test_a_store_that_already_holds_sessions_is_not_mixed_with_a_snapshot(
        tmp_path: Path) -> None:
    key, path = ServerKeyFile.new(), tmp_path / "server.snapshot"
    later = datetime.now(UTC) + timedelta(seconds=60)
    path.write_bytes(encode(Snapshot((a_session(1, later),)), snapshot_key(key)))
    store = MemoryStore()
    await store.create(a_session(2, later))
    server = make_server(key, path, store)
    with capture_logs() as logs:
        await server.start()
    server.restart_snapshot = None
    await server.stop()
    assert warnings_of(logs)[0]["event"] == ("session snapshot not loaded: the store already "
                                             "holds sessions")
    assert await store.count() == 1 and path.exists()


async def test_a_failed_write_keeps_the_old_snapshot_and_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, path = ServerKeyFile.new(), tmp_path / "server.snapshot"
    path.write_bytes(b"the previous snapshot")

    def failing(snapshot: Snapshot, key: object, progress: object = None) -> Iterator[bytes]:
        yield b"the first part"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(restart, "encode_parts", failing)
    server = make_server(key, path)
    server.restart_snapshot = None  # nothing to load
    await server.start()
    server.restart_snapshot = RestartSnapshot(path, key)
    with capture_logs() as logs:
        await server.stop()
    assert "No space left on device" in warnings_of(logs)[0]["error"]
    assert path.read_bytes() == b"the previous snapshot"
    assert os.listdir(tmp_path) == ["server.snapshot"]


def test_the_default_snapshot_is_beside_the_key_file() -> None:
    assert default_snapshot_path(Path("/etc/q/server.key")) == Path("/etc/q/server.snapshot")
    assert default_snapshot_path(Path("/etc/q/key")) == Path("/etc/q/key.snapshot")
    assert default_snapshot_path(Path("/etc/q/a.snapshot")) == Path("/etc/q/a.snapshot.snapshot")


async def test_the_memory_store_takes_a_snapshot_whole_or_not_at_all() -> None:
    later = datetime.now(UTC) + timedelta(seconds=60)
    first, second = a_session(1, later), a_session(2, later, State.ACTIVE)
    store = MemoryStore()
    twin = a_session(3, later)
    twin.connection_id = first.connection_id
    for bad in ([first, first], [first, twin]):
        with pytest.raises(SessionExists, match="share an id or a connection id"):
            store.restore(bad)
        assert await store.count() == 0
    store.restore([first, second])
    # indexed as `create` would: by connection, user and state, and filed for expiry
    assert (await store.get_by_connection_id(second.connection_id)).session_id == (
        second.session_id)
    assert [s.session_id for s in await store.get_by_user_id("user-1")] == [first.session_id]
    assert (await store.count_by_state())[State.ACTIVE] == 1
    assert [s.session_id for s in await store.expire(later)] == [first.session_id,
                                                                  second.session_id]
    store.restore([a_session(4, later)])  # empty again
    with pytest.raises(SessionExists, match="already holds 1 sessions"):
        store.restore([a_session(5, later)])


async def test_a_big_snapshot_logs_its_progress_both_ways(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_module, "PROGRESS_EVERY", 4)  # every 10,000 in earnest
    key, path = ServerKeyFile.new(), tmp_path / "server.snapshot"
    later = datetime.now(UTC) + timedelta(seconds=60)
    server = make_server(key, path)
    await server.start()
    server.manager.store.restore([a_session(n, later) for n in range(10)])
    with capture_logs() as logs:
        await server.stop()
    again = make_server(key, path)
    with capture_logs() as more:
        await again.start()
    again.restart_snapshot = None
    await again.stop()
    for events, event in ((logs, "writing the session snapshot"),
                          (more, "loading the session snapshot")):
        steps = [(e["sessions_done"], e["of"]) for e in events
                 if e["event"] == event and "sessions_done" in e]
        assert steps == [(4, 10), (8, 10), (10, 10)]
    assert await again.manager.store.count() == 10

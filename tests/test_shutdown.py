"""Graceful shutdown on the real server (README, "The server"): stopping closes every connection
with reason `server shutdown`, marks the sessions DISCONNECTING and deletes none, so each can be
resumed afterwards (here: by a server started on the same store, as after a restart); while it
stops, new handshakes are refused with SERVER_SHUTDOWN and the reason, not left to time out.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from quantum.auth import AnonymousAuthenticator
from quantum.client import ConnectError, connect
from quantum.config import QuantumConfiguration
from quantum.errors import CloseCode
from quantum.keys import ServerKeyFile
from server import QuantumServer, ServerConfig
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.model import State
from session.watch import EventKind, SessionEvent
from tests.test_server import HOST, dial
from tests.test_server_attacks import RawClient

REASON = "server shutdown"


def make_server(store: MemoryStore, key: ServerKeyFile) -> tuple[QuantumServer, SessionManager,
                                                                  list[SessionEvent]]:
    manager = SessionManager(ManagerConfig(store=store, default_timeout=300.0))
    events: list[SessionEvent] = []
    manager.add_watcher(events.append)
    server = QuantumServer(manager, key, AnonymousAuthenticator(),
                           ServerConfig(host=HOST, port=0, keepalive_interval=1.0,
                                        idle_timeout=30.0, stats_interval=0.2))
    return server, manager, events


async def test_stopping_closes_with_the_reason_and_keeps_every_session_resumable() -> None:
    store, key = MemoryStore(), ServerKeyFile.new()
    server, _, events = make_server(store, key)
    await server.start()
    # these clients do not reconnect: what the server does to a connection is what is tested
    clients = [await dial(server.port, f"user-{i}", reconnect=False) for i in range(3)]
    resume = [(c.session_id or "", c.session_token or "") for c in clients]
    await server.stop()

    for client in clients:
        await asyncio.wait_for(client.wait_closed(), 5)
        assert (client.close_code, client.close_reason) == (CloseCode.SERVER_SHUTDOWN, REASON)
    # every session went to DISCONNECTING, and nothing was deleted or expired
    changes = {(e.session.session_id, e.kind, e.session.state) for e in events}
    for sid, _ in resume:
        assert (sid, EventKind.STATE_CHANGED, State.DISCONNECTING) in changes
    assert not [e for e in events if e.kind in (EventKind.DELETED, EventKind.EXPIRED)]
    for sid, _ in resume:
        stored = await store.get(sid)
        assert stored is not None and stored.state is State.DISCONNECTING
        assert stored.connection_id  # still names the connection it had: nothing cleared it

    # a server started again on the same store takes each client back into its session
    again, _, _ = make_server(store, key)
    await again.start()
    try:
        for i, (sid, token) in enumerate(resume):
            back = await dial(again.port, f"user-{i}", resume=(sid, token))
            assert back.resumed and back.session_id == sid
            stored = await store.get(sid)
            assert stored is not None and stored.state is State.ACTIVE
            await back.close()
    finally:
        await again.stop()


async def test_while_stopping_a_new_handshake_is_refused_with_server_shutdown() -> None:
    store, key = MemoryStore(), ServerKeyFile.new()
    server, _, _ = make_server(store, key)
    await server.start()
    # a client that never answers keeps the server in its wait for closing connections
    mute = await RawClient.start(server.port, key.public_key_text, user="mute")
    mute.outgoing = lambda data: None
    stopping = asyncio.ensure_future(server.stop())
    try:
        await asyncio.sleep(0)  # stop() has begun: the listener refuses from here on
        started = time.monotonic()
        with pytest.raises(ConnectError) as refused:
            await connect(HOST, server.port, user_id="late", configuration=QuantumConfiguration(
                keepalive_interval=None, handshake_timeout=1.0, handshake_tries=4))
        assert refused.value.code == CloseCode.SERVER_SHUTDOWN
        assert refused.value.reason == f"{REASON}: not accepting connections"
        assert time.monotonic() - started < 30  # told, not left to time out for good
        assert server.snapshot()["handshakes_rejected"].get("server_shutdown", 0) >= 1
    finally:
        await asyncio.wait_for(stopping, 15)
    assert server.peers == {}  # the mute client was given up on, not waited for forever


async def test_a_session_held_across_a_stop_is_not_resumed_by_another_user() -> None:
    store, key = MemoryStore(), ServerKeyFile.new()
    server, _, _ = make_server(store, key)
    await server.start()
    client = await dial(server.port, "alice")
    sid, token = client.session_id or "", client.session_token or ""
    await server.stop()
    again, _, _ = make_server(store, key)
    await again.start()
    try:
        with pytest.raises(ConnectError) as refused:
            await dial(again.port, "mallory", resume=(sid, token))
        assert refused.value.code == CloseCode.BAD_RESUME
        stored = await store.get(sid)
        assert stored is not None and stored.user_id == "alice"
        assert stored.state is State.DISCONNECTING  # the refused resume changed nothing
    finally:
        await again.stop()


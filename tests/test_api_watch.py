"""WatchSessions over real gRPC: every change in order, the user filter, and a watcher too
slow to keep up dropped with RESOURCE_EXHAUSTED while the server carries on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from session.api import session_pb2 as pb
from session.api.service import ApiConfig
from session.memory import MemoryStore
from session.store import Store
from tests.api_harness import Stack, api_store, running_stack  # noqa: F401  (fixture)
from tests.test_api import create
from tests.test_server import client_config, dial

E = pb.SessionEvent
S = pb.SessionState


async def open_watch(stack: Stack, user: str = "") -> Any:
    call = stack.stub.WatchSessions(pb.WatchSessionsRequest(user_id=user), metadata=stack.auth)
    await asyncio.wait_for(call.initial_metadata(), 5)  # sent once the watch is registered
    return call


async def next_events(call: Any, count: int) -> list[tuple[int, str, int, int, str]]:
    out = []
    for _ in range(count):
        event = await asyncio.wait_for(call.read(), 5)
        assert event is not grpc.aio.EOF
        out.append((event.type, event.session.session_id, event.session.state,
                    event.previous_state, event.reason))
    return out


async def test_watch_streams_every_change_in_order(api_store: Store, tmp_path: Path) -> None:
    # a long keepalive interval: the server's idle sweep stays out of the sequence
    async with running_stack(api_store, tmp_path, keepalive_interval=5.0,
                             cleanup_interval=0.1) as stack:
        watch = await open_watch(stack)
        created = await create(stack, "alice")
        sid = created.session.session_id
        client = await dial(stack.udp_port, "alice", resume=(sid, created.token),
                            server_key=stack.key.public_key_text,
                            configuration=client_config(keepalive=None, idle_timeout=20.0))
        await stack.stub.UpdateSession(pb.UpdateSessionRequest(
            session_id=sid, state=S.SESSION_STATE_IDLE), metadata=stack.auth)
        assert await client.heartbeat() is not None  # a keepalive over UDP wakes it
        await stack.stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid, reason="bye"),
                                       metadata=stack.auth)
        short = (await create(stack, "bob", timeout_seconds=1)).session.session_id
        events = await next_events(watch, 7)
        assert events == [
            (E.TYPE_CREATED, sid, S.SESSION_STATE_CONNECTING, S.SESSION_STATE_UNSPECIFIED, ""),
            (E.TYPE_STATE_CHANGED, sid, S.SESSION_STATE_ACTIVE, S.SESSION_STATE_CONNECTING, ""),
            (E.TYPE_STATE_CHANGED, sid, S.SESSION_STATE_IDLE, S.SESSION_STATE_ACTIVE, ""),
            (E.TYPE_STATE_CHANGED, sid, S.SESSION_STATE_ACTIVE, S.SESSION_STATE_IDLE, ""),
            (E.TYPE_DELETED, sid, S.SESSION_STATE_ACTIVE, S.SESSION_STATE_UNSPECIFIED, "bye"),
            (E.TYPE_CREATED, short, S.SESSION_STATE_CONNECTING, S.SESSION_STATE_UNSPECIFIED, ""),
            (E.TYPE_EXPIRED, short, S.SESSION_STATE_CONNECTING, S.SESSION_STATE_UNSPECIFIED,
             "expired"),
        ]
        await asyncio.wait_for(client.wait_closed(), 5)  # the delete closed it
        watch.cancel()


async def test_watch_filtered_by_user(api_store: Store, tmp_path: Path) -> None:
    async with running_stack(api_store, tmp_path) as stack:
        watch = await open_watch(stack, user="bob")
        await create(stack, "alice")
        bob = (await create(stack, "bob", metadata={"seat": "3"})).session.session_id
        await create(stack, "alice")
        await stack.stub.DeleteSession(pb.DeleteSessionRequest(session_id=bob),
                                       metadata=stack.auth)
        events = await next_events(watch, 2)
        assert [(t, s, r) for t, s, _, _, r in events] == [
            (E.TYPE_CREATED, bob, ""), (E.TYPE_DELETED, bob, "deleted over the API")]
        first = await asyncio.wait_for(stack.stub.ListSessions(
            pb.ListSessionsRequest(), metadata=stack.auth), 5)
        assert first.total == 2  # and no alice event is waiting on the watch:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(watch.read(), 0.3)
        watch.cancel()


async def test_a_slow_watcher_is_dropped_and_never_blocks_the_server(tmp_path: Path) -> None:
    config = ApiConfig(watch_buffer=50)
    async with running_stack(MemoryStore(), tmp_path, api_config=config) as stack:
        assert stack.services.api is not None
        service = stack.services.api.service
        client = await dial(stack.udp_port, "zoe", server_key=stack.key.public_key_text)
        slow = await open_watch(stack)  # and never read while the changes pour in
        brisk = await open_watch(stack, user="nobody")
        assert service.watchers == 2
        # ~60 KB per event: far more than HTTP/2 flow control lets the server send unread
        metadata = {f"k{i}": "v" * 900 for i in range(64)}
        for i in range(400):
            await stack.manager.create_session(f"user-{i}", "10.0.0.1", 1, "",
                                               metadata=metadata)
            if i % 100 == 0:
                started = time.monotonic()
                await stack.stub.GetStats(pb.GetStatsRequest(), metadata=stack.auth)
                assert await client.heartbeat() is not None
                assert time.monotonic() - started < 2.0  # the API and UDP keep answering

        received = 0
        with pytest.raises(grpc.aio.AioRpcError) as dropped:
            while (await asyncio.wait_for(slow.read(), 10)) is not grpc.aio.EOF:
                received += 1
        assert dropped.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "watcher too slow: more than 50 events" in (dropped.value.details() or "")
        assert 0 < received < 400
        assert service.watchers == 1  # the brisk one lives on
        await stack.manager.create_session("nobody", "10.0.0.1", 1, "")
        event = await asyncio.wait_for(brisk.read(), 5)
        assert event.type == E.TYPE_CREATED and event.session.user_id == "nobody"
        brisk.cancel()
        await client.close()


async def test_watchers_beyond_the_limit_are_refused(tmp_path: Path) -> None:
    async with running_stack(MemoryStore(), tmp_path,
                             api_config=ApiConfig(max_watchers=2)) as stack:
        first, second = await open_watch(stack), await open_watch(stack)
        third = stack.stub.WatchSessions(pb.WatchSessionsRequest(), metadata=stack.auth)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await third.read()
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 watchers are open already" in (refused.value.details() or "")
        first.cancel()

        assert stack.services.api is not None
        service = stack.services.api.service

        async def closed() -> None:
            while service.watchers != 1:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(closed(), 5)  # a cancelled watch frees its place
        again = await open_watch(stack)
        again.cancel()
        second.cancel()

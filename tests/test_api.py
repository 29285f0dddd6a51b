"""The gRPC session API against a real server over real gRPC, on both stores.

Every RPC, every status code and the message naming the bad field, paging and filters, the
bearer token (none, wrong, right), sessions created over the API and claimed by a real UDP
client, kicks closing live connections, and health and reflection.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import capture_logs

from quantum.client import ConnectError
from quantum.errors import CloseCode
from session.api import session_pb2 as pb
from session.api.service import UNKNOWN_CLIENT_IP
from session.errors import SessionExists
from session.memory import MemoryStore
from session.model import Session, State
from session.store import Store
from tests.api_harness import Stack, api_store, running_stack  # noqa: F401  (fixture)
from tests.test_server import cid_text, client_config, dial, eventually

S = pb.SessionState


async def create(stack: Stack, user: str = "alice", **fields: Any) -> pb.CreateSessionResponse:
    fields.setdefault("client_ip", "203.0.113.7")
    fields.setdefault("client_port", 40000)
    reply: pb.CreateSessionResponse = await stack.stub.CreateSession(
        pb.CreateSessionRequest(user_id=user, **fields), metadata=stack.auth)
    return reply


async def failure(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def get(stack: Stack, session_id: str) -> pb.Session:
    reply = await stack.stub.GetSession(pb.GetSessionRequest(session_id=session_id),
                                        metadata=stack.auth)
    session: pb.Session = reply.session
    return session


def seconds(stamp: Any) -> float:
    return float(stamp.seconds) + stamp.nanos / 1e9


# ------------------------------------------------------------------ the original six RPCs


async def test_create_get_update_delete(api_store: Store, tmp_path: Path) -> None:
    async with running_stack(api_store, tmp_path, session_timeout=30.0) as stack:
        created = await create(stack, metadata={"room": "1", "device": "phone"})
        s = created.session
        assert len(created.token) >= 43
        assert s.state == S.SESSION_STATE_CONNECTING and s.connection_id == ""
        assert (s.user_id, s.client_ip, s.client_port) == ("alice", "203.0.113.7", 40000)
        assert dict(s.metadata) == {"room": "1", "device": "phone"}
        assert s.timeout_seconds == 30
        assert seconds(s.expires_at) - seconds(s.created_at) == pytest.approx(30.0, abs=0.01)
        assert uuid.UUID(s.session_id).version == 7
        assert await get(stack, s.session_id) == s

        updated = (await stack.stub.UpdateSession(pb.UpdateSessionRequest(
            session_id=s.session_id, state=S.SESSION_STATE_IDLE, metadata={"room": "2"},
            stats=pb.SessionStats(packets_sent=5, bytes_sent=700, current_rtt_ms=12)),
            metadata=stack.auth)).session
        assert updated.state == S.SESSION_STATE_IDLE
        assert dict(updated.metadata) == {"room": "2", "device": "phone"}  # merged
        assert (updated.stats.packets_sent, updated.stats.bytes_sent,
                updated.stats.current_rtt_ms) == (5, 700, 12)
        assert updated.expires_at == s.expires_at  # an update is activity, not a heartbeat

        # UNSPECIFIED state, no metadata, no stats: nothing changes but the activity time
        same = (await stack.stub.UpdateSession(pb.UpdateSessionRequest(session_id=s.session_id),
                                               metadata=stack.auth)).session
        assert (same.state, dict(same.metadata), same.stats) == (
            updated.state, dict(updated.metadata), updated.stats)

        deleted = await stack.stub.DeleteSession(
            pb.DeleteSessionRequest(session_id=s.session_id, reason="user logout"),
            metadata=stack.auth)
        assert deleted.success is True
        assert stack.ended == [(s.session_id, "user logout")]
        code, details = await failure(get(stack, s.session_id))
        assert code is grpc.StatusCode.NOT_FOUND and s.session_id in details


async def test_create_with_a_timeout_of_its_own_and_no_client_address(
        api_store: Store, tmp_path: Path) -> None:
    async with running_stack(api_store, tmp_path, session_timeout=30.0) as stack:
        s = (await create(stack, client_ip="", client_port=0, timeout_seconds=7)).session
        assert s.timeout_seconds == 7
        assert seconds(s.expires_at) - seconds(s.created_at) == pytest.approx(7.0, abs=0.01)
        assert (s.client_ip, s.client_port) == (UNKNOWN_CLIENT_IP, 0)

        beat = await stack.stub.Heartbeat(pb.HeartbeatRequest(session_id=s.session_id),
                                          metadata=stack.auth)
        assert beat.success is True and beat.remaining_seconds in (6, 7)
        assert abs(seconds(beat.server_timestamp) - time.time()) < 5
        again = await get(stack, s.session_id)
        # extended by its own 7 s; and nobody connected yet, so it is still CONNECTING
        assert seconds(again.expires_at) - seconds(again.last_active_at) == pytest.approx(7.0)
        assert again.state == S.SESSION_STATE_CONNECTING


async def test_list_sessions_pages_from_1_and_filters(api_store: Store, tmp_path: Path) -> None:
    async with running_stack(api_store, tmp_path) as stack:
        ids = []
        for i in range(7):
            ids.append((await create(stack, "alice" if i < 5 else "bob")).session.session_id)
        for sid in ids[:2]:
            await stack.stub.UpdateSession(pb.UpdateSessionRequest(
                session_id=sid, state=S.SESSION_STATE_IDLE), metadata=stack.auth)

        async def page(**fields: Any) -> pb.ListSessionsResponse:
            reply: pb.ListSessionsResponse = await stack.stub.ListSessions(
                pb.ListSessionsRequest(**fields), metadata=stack.auth)
            return reply

        everything = await page()
        assert (everything.total, everything.page, everything.page_size) == (7, 1, 50)
        assert [s.session_id for s in everything.sessions] == ids  # creation order

        pages = [await page(page=n, page_size=3) for n in (1, 2, 3)]
        assert [s.session_id for p in pages for s in p.sessions] == ids
        assert [(p.page, p.page_size, p.total, len(p.sessions)) for p in pages] == [
            (1, 3, 7, 3), (2, 3, 7, 3), (3, 3, 7, 1)]
        assert (await page(page=0, page_size=3)).sessions == pages[0].sessions  # 0 means 1
        beyond = await page(page=9, page_size=3)
        assert (len(beyond.sessions), beyond.total, beyond.page) == (0, 7, 9)
        capped = await page(page_size=5000)
        assert (capped.page_size, len(capped.sessions)) == (1000, 7)

        bob = await page(user_id="bob")
        assert [s.session_id for s in bob.sessions] == ids[5:] and bob.total == 2
        idle = await page(state=S.SESSION_STATE_IDLE)
        assert [s.session_id for s in idle.sessions] == ids[:2]
        alice_connecting = await page(user_id="alice", state=S.SESSION_STATE_CONNECTING,
                                      page_size=2, page=2)
        assert [s.session_id for s in alice_connecting.sessions] == ids[4:5]
        assert alice_connecting.total == 3
        assert (await page(user_id="nobody")).total == 0

        stats = await stack.stub.GetStats(pb.GetStatsRequest(), metadata=stack.auth)
        assert (stats.total, stats.connecting, stats.idle, stats.active, stats.disconnecting,
                stats.closed) == (7, 5, 2, 0, 0, 0)


# ------------------------------------------------------------------ errors


BAD_REQUESTS = [
    ("CreateSession", pb.CreateSessionRequest(user_id=""), "user_id"),
    ("CreateSession", pb.CreateSessionRequest(user_id="u" * 257), "user_id"),
    ("CreateSession", pb.CreateSessionRequest(user_id="a", client_ip="nope"), "client_ip"),
    ("CreateSession", pb.CreateSessionRequest(user_id="a", client_port=70000), "client_port"),
    ("CreateSession", pb.CreateSessionRequest(
        user_id="a", metadata={str(i): "" for i in range(65)}), "metadata"),
    ("CreateSession", pb.CreateSessionRequest(user_id="a", metadata={"k": "v" * 1025}),
     "metadata"),
    ("CreateSession", pb.CreateSessionRequest(user_id="a", timeout_seconds=10**7),
     "timeout_seconds"),
    ("GetSession", pb.GetSessionRequest(session_id=""), "session_id"),
    ("GetSession", pb.GetSessionRequest(session_id="not-a-uuid"), "session_id"),
    ("UpdateSession", pb.UpdateSessionRequest(session_id="x"), "session_id"),
    ("DeleteSession", pb.DeleteSessionRequest(session_id="x"), "session_id"),
    ("Heartbeat", pb.HeartbeatRequest(session_id=""), "session_id"),
    ("ListSessions", pb.ListSessionsRequest(state=99), "state"),  # type: ignore[arg-type]
    ("ListSessions", pb.ListSessionsRequest(user_id="u" * 257), "user_id"),
    ("GetSessionByConnection", pb.GetSessionByConnectionRequest(connection_id="x"),
     "connection_id"),
    ("GetSessionByConnection", pb.GetSessionByConnectionRequest(), "connection_id"),
]


async def test_bad_input_is_invalid_argument_naming_the_field_and_changes_nothing(
        api_store: Store, tmp_path: Path) -> None:
    async with running_stack(api_store, tmp_path) as stack:
        existing = (await create(stack, metadata={"a": "1"})).session
        for method, request, field in BAD_REQUESTS:
            code, details = await failure(getattr(stack.stub, method)(request,
                                                                      metadata=stack.auth))
            assert code is grpc.StatusCode.INVALID_ARGUMENT, (method, field, details)
            assert field in details, (method, details)
        sid = existing.session_id
        for request, field in [
                (pb.UpdateSessionRequest(session_id=sid, state=99,  # type: ignore[arg-type]
                                         metadata={"b": "2"}), "state"),
                (pb.UpdateSessionRequest(session_id=sid, metadata={"b": "v" * 1025}),
                 "metadata"),
                (pb.UpdateSessionRequest(session_id=sid, metadata={"": "empty key"}),
                 "metadata")]:
            code, details = await failure(stack.stub.UpdateSession(request,
                                                                   metadata=stack.auth))
            assert code is grpc.StatusCode.INVALID_ARGUMENT and field in details, details
        code, details = await failure(stack.stub.DeleteSession(pb.DeleteSessionRequest(
            session_id=sid, reason="é" * 129), metadata=stack.auth))  # 258 bytes of UTF-8
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "reason" in details
        # nothing half-done: no session created, the existing one untouched
        listed = await stack.stub.ListSessions(pb.ListSessionsRequest(), metadata=stack.auth)
        assert [s.session_id for s in listed.sessions] == [sid]
        assert await get(stack, sid) == existing


async def test_missing_and_expired_sessions(api_store: Store, tmp_path: Path) -> None:
    # a long sweep interval: the expired session stays stored, so it is found expired
    async with running_stack(api_store, tmp_path, cleanup_interval=60.0) as stack:
        unknown = str(uuid.uuid4())
        for method, request in [
                ("GetSession", pb.GetSessionRequest(session_id=unknown)),
                ("UpdateSession", pb.UpdateSessionRequest(session_id=unknown)),
                ("DeleteSession", pb.DeleteSessionRequest(session_id=unknown)),
                ("Heartbeat", pb.HeartbeatRequest(session_id=unknown)),
                ("GetSessionByConnection",
                 pb.GetSessionByConnectionRequest(connection_id=unknown))]:
            code, details = await failure(getattr(stack.stub, method)(request,
                                                                      metadata=stack.auth))
            assert code is grpc.StatusCode.NOT_FOUND, method
            assert unknown in details, details

        short = (await create(stack, timeout_seconds=1)).session
        await asyncio.sleep(1.1)
        sid = short.session_id
        for method, request in [
                ("GetSession", pb.GetSessionRequest(session_id=sid)),
                ("UpdateSession", pb.UpdateSessionRequest(session_id=sid,
                                                          state=S.SESSION_STATE_ACTIVE)),
                ("Heartbeat", pb.HeartbeatRequest(session_id=sid))]:
            code, details = await failure(getattr(stack.stub, method)(request,
                                                                      metadata=stack.auth))
            assert code is grpc.StatusCode.FAILED_PRECONDITION, method
            assert details == f"session expired: {sid}"


class DuplicateStore(MemoryStore):
    """A store that reports every new session as a duplicate (an id collision)."""

    async def create(self, session: Session, *, max_user_sessions: int | None = None) -> None:
        raise SessionExists(f"session already exists: {session.session_id}")


async def test_a_duplicate_is_already_exists(tmp_path: Path) -> None:
    async with running_stack(DuplicateStore(), tmp_path) as stack:
        code, details = await failure(create(stack))
        assert code is grpc.StatusCode.ALREADY_EXISTS
        assert details.startswith("session already exists: ")


# ------------------------------------------------------------------ authentication


ALL_CALLS = [
    ("CreateSession", pb.CreateSessionRequest(user_id="mallory")),
    ("GetSession", pb.GetSessionRequest(session_id=str(uuid.uuid4()))),
    ("UpdateSession", pb.UpdateSessionRequest(session_id=str(uuid.uuid4()))),
    ("DeleteSession", pb.DeleteSessionRequest(session_id=str(uuid.uuid4()))),
    ("ListSessions", pb.ListSessionsRequest()),
    ("Heartbeat", pb.HeartbeatRequest(session_id=str(uuid.uuid4()))),
    ("GetSessionByConnection", pb.GetSessionByConnectionRequest(connection_id=str(uuid.uuid4()))),
    ("GetStats", pb.GetStatsRequest()),
]


async def _first_result(stack: Stack, method: str, request: Any,
                        metadata: Any) -> grpc.StatusCode:
    """How a call ends; for the watch stream, whether it got past the start (its headers
    come once the watch is registered)."""
    call = getattr(stack.stub, method)(request, metadata=metadata)
    if method == "WatchSessions":
        await call.initial_metadata()
        if not call.done():
            call.cancel()
            return grpc.StatusCode.OK
        code: grpc.StatusCode = await call.code()
        return code
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_every_rpc_needs_the_bearer_token(api_store: Store, tmp_path: Path) -> None:
    async with running_stack(api_store, tmp_path) as stack:
        calls = [*ALL_CALLS, ("WatchSessions", pb.WatchSessionsRequest())]
        with capture_logs() as logs:
            for metadata, expected in [
                    ((), "missing credentials"),
                    ((("authorization", "Bearer " + "x" * 43),), "invalid API token"),
                    ((("authorization", f"Bearer {stack.token}x"),), "invalid API token"),
                    ((("authorization", f"Basic {stack.token}"),), "must be 'Bearer <token>'"),
                    ((("x-api-token", stack.token),), "missing credentials")]:
                for method, request in calls:
                    call = getattr(stack.stub, method)(request, metadata=metadata)
                    code, details = await failure(call.read() if method == "WatchSessions"
                                                  else call)
                    assert code is grpc.StatusCode.UNAUTHENTICATED, (method, metadata)
                    assert expected in details
            stats = await stack.manager.get_stats()
            assert stats["total"] == 0  # the unauthenticated CreateSession did nothing
            # right token, any case of the scheme: through to the service
            for scheme in ("Bearer", "bearer"):
                for method, request in calls:
                    code = await _first_result(stack, method, request,
                                               (("authorization", f"{scheme} {stack.token}"),))
                    assert code is not grpc.StatusCode.UNAUTHENTICATED, method
        assert stack.token not in repr(logs)
        assert stack.token not in repr(stack.services.api)


async def test_health_and_reflection_need_no_token(api_store: Store, tmp_path: Path) -> None:
    async with running_stack(api_store, tmp_path) as stack:
        health = health_pb2_grpc.HealthStub(stack.channel)
        for service in ("", "session.SessionService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
        call = reflect.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        answer = await call.read()
        names = {s.name for s in answer.list_services_response.service}
        assert {"session.SessionService", "grpc.health.v1.Health"} <= names
        await call.write(reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="session.SessionService"))
        described = await call.read()
        assert described.file_descriptor_response.file_descriptor_proto
        await call.done_writing()


# ------------------------------------------------------------------ the claim flow


async def test_a_session_created_over_grpc_is_claimed_by_a_udp_client(
        api_store: Store, tmp_path: Path) -> None:
    async with running_stack(api_store, tmp_path, session_timeout=30.0) as stack:
        created = await create(stack, "alice", timeout_seconds=9, metadata={"room": "7"})
        sid, token = created.session.session_id, created.token

        # a wrong token or another user's name claims nothing
        for user, presented in [("alice", "x" * 43), ("bob", token)]:
            with pytest.raises(ConnectError) as refused:
                await dial(stack.udp_port, user, resume=(sid, presented),
                           server_key=stack.key.public_key_text)
            assert refused.value.code == CloseCode.BAD_RESUME
        assert (await get(stack, sid)).state == S.SESSION_STATE_CONNECTING

        client = await dial(stack.udp_port, "alice", resume=(sid, token),
                            server_key=stack.key.public_key_text,
                            configuration=client_config(keepalive=None))
        try:
            assert client.resumed and client.session_id == sid
            claimed = await get(stack, sid)
            assert claimed.state == S.SESSION_STATE_ACTIVE
            assert claimed.connection_id == cid_text(client)
            assert claimed.client_ip == "127.0.0.1"
            assert claimed.server_addr == stack.server.address_text
            assert dict(claimed.metadata) == {"room": "7"}
            # the session's own timeout rules its keepalives over UDP too
            assert await client.heartbeat() == pytest.approx(9.0)
            claimed = await get(stack, sid)
            assert seconds(claimed.expires_at) - seconds(claimed.last_active_at) == (
                pytest.approx(9.0, abs=0.01))
            by_connection = await stack.stub.GetSessionByConnection(
                pb.GetSessionByConnectionRequest(connection_id=cid_text(client).upper()),
                metadata=stack.auth)
            assert by_connection.session.session_id == sid
        finally:
            await client.close()


async def test_an_unclaimed_session_expires_after_its_own_timeout(
        api_store: Store, tmp_path: Path) -> None:
    async with running_stack(api_store, tmp_path, session_timeout=30.0,
                             cleanup_interval=0.1) as stack:
        sid = (await create(stack, timeout_seconds=1)).session.session_id
        keep = (await create(stack)).session.session_id
        await eventually(lambda: _ended(stack, sid), timeout=5.0, what="expiry")
        assert stack.ended == [(sid, "expired")]
        code, _ = await failure(get(stack, sid))
        assert code is grpc.StatusCode.NOT_FOUND
        assert (await get(stack, keep)).state == S.SESSION_STATE_CONNECTING


async def _ended(stack: Stack, session_id: str) -> bool:
    return any(sid == session_id for sid, _ in stack.ended)


async def test_kick_over_grpc_closes_the_live_udp_connection(
        api_store: Store, tmp_path: Path) -> None:
    async with running_stack(api_store, tmp_path) as stack:
        client = await dial(stack.udp_port, "carol", server_key=stack.key.public_key_text)
        other = await dial(stack.udp_port, "dave", server_key=stack.key.public_key_text)
        assert client.session_id is not None
        try:
            await stack.stub.DeleteSession(pb.DeleteSessionRequest(
                session_id=client.session_id, reason="kicked for cheating"), metadata=stack.auth)
            await asyncio.wait_for(client.wait_closed(), timeout=5.0)
            assert client.close_code == CloseCode.SESSION_ENDED
            assert client.close_reason == "session kicked for cheating"

            async def gone() -> bool:
                return len(stack.server.peers) == 1
            await eventually(gone, what="the kicked connection to go")
            assert await other.heartbeat() is not None  # the others are untouched
        finally:
            await other.close()


async def test_an_update_over_grpc_reaches_the_session_of_a_live_connection(
        api_store: Store, tmp_path: Path) -> None:
    async with running_stack(api_store, tmp_path) as stack:
        client = await dial(stack.udp_port, "erin", server_key=stack.key.public_key_text,
                            metadata={"room": "1"})
        assert client.session_id is not None
        try:
            await stack.stub.UpdateSession(pb.UpdateSessionRequest(
                session_id=client.session_id, metadata={"team": "red"}), metadata=stack.auth)
            session = await stack.manager.get_session(client.session_id)
            assert session.metadata == {"room": "1", "team": "red"}
            assert session.state is State.ACTIVE
            assert await client.heartbeat() is not None  # the connection lives on
        finally:
            await client.close()


async def test_the_api_closes_its_watchers_and_calls_when_the_server_stops(
        tmp_path: Path) -> None:
    async with running_stack(MemoryStore(), tmp_path) as stack:
        watch = stack.stub.WatchSessions(pb.WatchSessionsRequest(), metadata=stack.auth)
        await watch.initial_metadata()
        assert stack.services.api is not None
        await stack.services.api.stop(grace=0.5)
        code, _ = await failure(watch.read())
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert stack.services.api.service.watchers == 0


async def test_the_per_user_session_limit_is_resource_exhausted(tmp_path: Path) -> None:
    async with running_stack(MemoryStore(), tmp_path,
                             manager_limits={"max_sessions_per_user": 1}) as stack:
        await create(stack)  # user "alice"'s one session, CONNECTING: held, not evictable
        code, details = await failure(create(stack))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "alice" in details or "session" in details

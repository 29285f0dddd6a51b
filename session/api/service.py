"""`SessionService`: the gRPC servicer of session.SessionService, acting on a `SessionManager`.

It knows nothing of UDP: a session it deletes reaches the connection holding it through the
manager's listeners, as every deletion does. Each RPC checks its whole request before it
changes anything, then makes one manager call; errors become status codes (docs/API.md):

| raised                           | status              |
|----------------------------------|---------------------|
| bad request field (`InvalidArgument`, `InvalidSession`) | INVALID_ARGUMENT (the field named) |
| `SessionNotFound`                | NOT_FOUND           |
| `SessionExpired`                 | FAILED_PRECONDITION |
| `SessionExists`                  | ALREADY_EXISTS      |
| `StoreUnavailable`               | UNAVAILABLE         |
| `SessionConflict` (etcd: another node changed it meanwhile) | ABORTED (retry) |
| a watcher too slow, too many watchers | RESOURCE_EXHAUSTED |

Authentication is the guard's (`session.api.auth`): a call reaches this class only with
the right bearer token.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import grpc

from quantum.limits import MAX_USER_ID_BYTES
from session.api import session_pb2 as pb
from session.api.convert import (
    InvalidArgument,
    event_to_pb,
    require_uuid,
    session_to_pb,
    state_from_pb,
    stats_from_pb,
    timestamp,
)
from session.errors import (
    InvalidSession,
    SessionError,
    SessionExists,
    SessionExpired,
    SessionLimitExceeded,
    SessionNotFound,
    StoreUnavailable,
)
from session.logs import LazyLogger
from session.manager import SessionManager
from session.model import SessionFilter, State, Stats
from session.watch import SessionEvent

__all__ = ["ApiConfig", "SessionService"]

T = TypeVar("T")
log = LazyLogger("session.api")  # quiet unless the application configured structlog

#: what an unknown client address is stored as until the client connects (the unspecified
#: address: "no address"); its connection then records the real one
UNKNOWN_CLIENT_IP = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The API's limits (docs/API.md)."""

    default_page_size: int = 50
    max_page_size: int = 1000
    #: the longest timeout a session created over the API may ask for (7 days)
    max_timeout_seconds: int = 7 * 24 * 3600
    #: a delete's reason travels in the connection's CLOSE frame (512 bytes with its prefix)
    max_reason_bytes: int = 256
    #: events a watcher may have unsent before it is dropped as too slow
    watch_buffer: int = 1024
    #: watch streams open at once; more are refused
    max_watchers: int = 32

    def __post_init__(self) -> None:
        for name in ("default_page_size", "max_page_size", "max_timeout_seconds",
                     "max_reason_bytes", "watch_buffer", "max_watchers"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode,
                 message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # it raises; this keeps mypy informed


def _status_of(exc: Exception) -> grpc.StatusCode | None:
    """The status code for an error the session service raises on purpose."""
    if isinstance(exc, (InvalidArgument, InvalidSession)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, SessionNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, SessionExpired):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, SessionExists):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(exc, StoreUnavailable):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, SessionLimitExceeded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED  # per-user or total session limit
    if isinstance(exc, SessionError):
        return grpc.StatusCode.ABORTED  # a concurrent change (etcd SessionConflict): retry
    return None


class _Watch:
    """One WatchSessions stream's buffer: the manager's watcher callback for it."""

    def __init__(self, user_id: str, limit: int) -> None:
        self.user_id = user_id
        self.limit = limit
        self.events: deque[SessionEvent] = deque()
        self.overflowed = False
        self.ready = asyncio.Event()
        self.writing: asyncio.Future[Any] | None = None

    def __call__(self, event: SessionEvent) -> None:
        if self.overflowed or (self.user_id and event.session.user_id != self.user_id):
            return
        if len(self.events) >= self.limit:
            # too slow: drop everything now (memory stays bounded) and end the stream, even
            # while a write to it is stuck behind the client's flow control
            self.overflowed = True
            self.events.clear()
            if self.writing is not None:
                self.writing.cancel()
        else:
            self.events.append(event)
        self.ready.set()


class SessionService:
    """The servicer; register it with `session_pb2_grpc.add_SessionServiceServicer_to_server`.

    `on_store_failure` is told whenever a call found the store unreachable (the health check
    then stops saying SERVING at once, without waiting for its next probe).
    """

    def __init__(self, manager: SessionManager, config: ApiConfig | None = None,
                 on_store_failure: Callable[[], None] | None = None) -> None:
        self.manager = manager
        self.config = config or ApiConfig()
        self._on_store_failure = on_store_failure
        self._watches: set[_Watch] = set()
        self._no_watches = asyncio.Event()
        self._no_watches.set()

    @property
    def default_timeout(self) -> float:
        return self.manager.config.default_timeout

    @property
    def watchers(self) -> int:
        """WatchSessions streams open now."""
        return len(self._watches)

    async def wait_watchers_closed(self, timeout: float = 2.0) -> bool:
        """Once the server stopped: wait until every watch stream has let go of the manager
        (a cancelled stream unregisters as its task unwinds). False if some did not in time."""
        try:
            async with asyncio.timeout(timeout):
                await self._no_watches.wait()
        except TimeoutError:
            return False
        return True

    async def _run(self, context: grpc.aio.ServicerContext, call: Awaitable[T]) -> T:
        """Await one manager call, turning its errors into the RPC's status."""
        try:
            return await call
        except Exception as exc:
            code = _status_of(exc)
            if code is None:
                raise  # a bug: grpc answers UNKNOWN, and the guard logs it
            if code is grpc.StatusCode.UNAVAILABLE and self._on_store_failure is not None:
                self._on_store_failure()
            await _abort(context, code, str(exc))

    async def _checked(self, context: grpc.aio.ServicerContext, check: Callable[[], T]) -> T:
        try:
            return check()
        except (InvalidArgument, InvalidSession) as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    # -- the original six

    async def CreateSession(self, request: pb.CreateSessionRequest,
                            context: grpc.aio.ServicerContext) -> pb.CreateSessionResponse:
        timeout = await self._checked(context, lambda: self._timeout(request.timeout_seconds))
        session, token = await self._run(context, self.manager.create_session(
            request.user_id, request.client_ip or UNKNOWN_CLIENT_IP, request.client_port, "",
            metadata=dict(request.metadata), timeout=timeout))
        return pb.CreateSessionResponse(session=session_to_pb(session, self.default_timeout),
                                        token=token)

    def _timeout(self, seconds: int) -> float | None:
        if seconds == 0:
            return None
        limit = self.config.max_timeout_seconds
        if seconds > limit:
            raise InvalidArgument(f"timeout_seconds must be at most {limit}, got {seconds}")
        return float(seconds)

    async def GetSession(self, request: pb.GetSessionRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetSessionResponse:
        sid = await self._checked(context, lambda: require_uuid(request.session_id, "session_id"))
        session = await self._run(context, self.manager.get_session(sid))
        return pb.GetSessionResponse(session=session_to_pb(session, self.default_timeout))

    async def UpdateSession(self, request: pb.UpdateSessionRequest,
                            context: grpc.aio.ServicerContext) -> pb.UpdateSessionResponse:
        def check() -> tuple[str, State | None, Stats | None]:
            sid = require_uuid(request.session_id, "session_id")
            state = state_from_pb(request.state, "state")
            stats = stats_from_pb(request.stats) if request.HasField("stats") else None
            return sid, state, stats

        sid, state, stats = await self._checked(context, check)
        session = await self._run(context, self.manager.update_session(
            sid, state=state, metadata=dict(request.metadata), stats=stats))
        return pb.UpdateSessionResponse(session=session_to_pb(session, self.default_timeout))

    async def DeleteSession(self, request: pb.DeleteSessionRequest,
                            context: grpc.aio.ServicerContext) -> pb.DeleteSessionResponse:
        def check() -> tuple[str, str]:
            sid = require_uuid(request.session_id, "session_id")
            size = len(request.reason.encode("utf-8"))
            if size > self.config.max_reason_bytes:
                raise InvalidArgument(f"reason is {size} bytes of UTF-8, at most "
                                      f"{self.config.max_reason_bytes} allowed")
            return sid, request.reason or "deleted over the API"

        sid, reason = await self._checked(context, check)
        await self._run(context, self.manager.delete_session(sid, reason))
        return pb.DeleteSessionResponse(success=True)

    async def ListSessions(self, request: pb.ListSessionsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListSessionsResponse:
        def check() -> tuple[SessionFilter, int, int]:
            if _too_long(request.user_id):
                raise InvalidArgument(f"user_id is longer than {MAX_USER_ID_BYTES} bytes of UTF-8")
            state = state_from_pb(request.state, "state")
            page = request.page or 1
            size = min(request.page_size or self.config.default_page_size,
                       self.config.max_page_size)
            return (SessionFilter(user_id=request.user_id or None, state=state, limit=size,
                                  offset=(page - 1) * size), page, size)

        filter, page, size = await self._checked(context, check)
        sessions, total = await self._run(context, self.manager.list_sessions(filter))
        default = self.default_timeout
        return pb.ListSessionsResponse(sessions=[session_to_pb(s, default) for s in sessions],
                                       total=min(total, 2**32 - 1), page=page, page_size=size)

    async def Heartbeat(self, request: pb.HeartbeatRequest,
                        context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        sid = await self._checked(context, lambda: require_uuid(request.session_id, "session_id"))
        remaining = await self._run(context, self.manager.keep_alive(sid))
        return pb.HeartbeatResponse(success=True, server_timestamp=timestamp(datetime.now(UTC)),
                                    remaining_seconds=math.floor(remaining))

    # -- added

    async def GetSessionByConnection(
            self, request: pb.GetSessionByConnectionRequest,
            context: grpc.aio.ServicerContext) -> pb.GetSessionByConnectionResponse:
        cid = await self._checked(
            context, lambda: require_uuid(request.connection_id, "connection_id"))
        session = await self._run(context, self.manager.get_session_by_connection(cid))
        return pb.GetSessionByConnectionResponse(
            session=session_to_pb(session, self.default_timeout))

    async def GetStats(self, request: pb.GetStatsRequest,
                       context: grpc.aio.ServicerContext) -> pb.GetStatsResponse:
        stats = await self._run(context, self.manager.get_stats())
        return pb.GetStatsResponse(**stats)

    async def WatchSessions(self, request: pb.WatchSessionsRequest,
                            context: grpc.aio.ServicerContext) -> None:
        if _too_long(request.user_id):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"user_id is longer than {MAX_USER_ID_BYTES} bytes of UTF-8")
        if len(self._watches) >= self.config.max_watchers:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"{self.config.max_watchers} watchers are open already")
        watch = _Watch(request.user_id, self.config.watch_buffer)
        self._watches.add(watch)
        self._no_watches.clear()
        self.manager.add_watcher(watch)
        try:
            # the response headers say the watch is registered: a client that waits for them
            # sees every change made after
            await context.send_initial_metadata(())
            await self._stream(watch, context)
        finally:
            self.manager.remove_watcher(watch)
            self._watches.discard(watch)
            if not self._watches:
                self._no_watches.set()

    async def _stream(self, watch: _Watch, context: grpc.aio.ServicerContext) -> None:
        default = self.default_timeout
        while True:
            while watch.events and not watch.overflowed:
                message = event_to_pb(watch.events.popleft(), default)
                writing = watch.writing = asyncio.ensure_future(context.write(message))
                try:
                    await asyncio.wait((writing,))
                except asyncio.CancelledError:  # the call ended (client gone, server stopping)
                    writing.cancel()
                    raise
                finally:
                    watch.writing = None
                if not writing.cancelled():  # only an overflow cancels it
                    writing.result()
            if watch.overflowed:
                log.warning("watcher dropped: too slow", peer=context.peer(),
                            buffered=self.config.watch_buffer)
                await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"watcher too slow: more than {self.config.watch_buffer} events "
                             "were waiting to be sent; list the sessions and watch again")
            watch.ready.clear()
            await watch.ready.wait()


def _too_long(user_id: str) -> bool:
    """A user id filter longer than any user id can be (`quantum.limits`)."""
    if len(user_id) > MAX_USER_ID_BYTES:
        return True
    return len(user_id.encode("utf-8", "replace")) > MAX_USER_ID_BYTES

"""The API's front door: bearer-token authentication and request accounting, as one interceptor.

Every call of session.SessionService must carry ``authorization: Bearer <token>`` metadata; the
token is compared with `hmac.compare_digest` (time independent of where a guess differs) and
never logged, not even in part. Health checking and server reflection stay open, so that load
balancers and `grpcurl` work without the secret; they reveal nothing but whether the store is
up and the (public) schema.

`RequestCounts` records each SessionService call's method and final status code; the metrics
endpoint reads it at scrape time.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import structlog

__all__ = ["SERVICE_PREFIX", "ApiInterceptor", "RequestCounts", "bearer_metadata"]

SERVICE_PREFIX = "/session.SessionService/"
_BEARER = "bearer "
log = structlog.get_logger("session.api")


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata a client sends: ``(("authorization", "Bearer <token>"),)``."""
    return (("authorization", f"Bearer {token}"),)


class RequestCounts:
    """Calls per (method, status code name), e.g. ``("GetSession", "NOT_FOUND")``."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, method: str, code: str) -> None:
        key = (method, code)
        self.counts[key] = self.counts.get(key, 0) + 1


Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]


class ApiInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no stubs
    """Authenticates and counts the calls of session.SessionService; other services pass."""

    def __init__(self, token: str, counts: RequestCounts | None = None) -> None:
        if not token:
            raise ValueError("the API token must not be empty")
        self._expected = token.encode("utf-8")
        self.counts = counts if counts is not None else RequestCounts()
        # method path -> wrapped handler: the service's methods are fixed, so wrapping each
        # once keeps the per-call cost to the token check
        self._wrapped: dict[str, Any] = {}

    def __repr__(self) -> str:
        return "ApiInterceptor(token=<hidden>)"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        method: str = details.method
        if not method.startswith(SERVICE_PREFIX):
            return await continuation(details)
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None:
            return None  # no such method: grpc answers UNIMPLEMENTED (and nothing is counted)
        wrapped = self._wrap(method.removeprefix(SERVICE_PREFIX), handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _refusal(self, context: grpc.aio.ServicerContext) -> str | None:
        """Why the call may not proceed, or None when its token is right."""
        presented: str | None = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                presented = value if isinstance(value, str) else None
                break
        if presented is None:
            return ("missing credentials: send 'authorization: Bearer <token>' metadata "
                    "(quantum-server api-token prints the token)")
        if presented[:len(_BEARER)].lower() != _BEARER:
            return "the authorization metadata must be 'Bearer <token>'"
        given = presented[len(_BEARER):].strip().encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(given, self._expected):
            return "invalid API token"
        return None

    def _wrap(self, name: str, handler: Any) -> Any:
        if handler.unary_unary is not None:
            inner: Behaviour = handler.unary_unary
            make = grpc.unary_unary_rpc_method_handler
        elif handler.unary_stream is not None:
            inner = handler.unary_stream
            make = grpc.unary_stream_rpc_method_handler
        else:  # the service has no client-streaming RPCs
            raise TypeError(f"unsupported RPC shape for {name}")

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            code = "OK"
            try:
                refusal = self._refusal(context)
                if refusal is not None:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
                return await inner(request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                status = context.code()
                code = status.name if status is not None else "UNKNOWN"
                raise
            except Exception:
                code = "UNKNOWN"
                log.exception("API call failed", method=name)
                raise
            finally:
                self.counts.add(name, code)

        return make(guarded, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

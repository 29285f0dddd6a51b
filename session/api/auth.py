"""The API's front door: bearer-token authentication and request accounting.

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
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import grpc
import grpc.aio

from session.logs import LazyLogger

__all__ = ["ApiGuard", "RequestCounts", "bearer_metadata"]

_BEARER = "bearer "
log = LazyLogger("session.api")  # quiet unless the application configured structlog


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


class ApiGuard:
    """Authenticates and counts the calls of session.SessionService.

    `guard(servicer)` returns an object with the servicer's RPC methods wrapped, for
    `add_SessionServiceServicer_to_server`. Wrapping at registration rather than in a gRPC
    interceptor keeps the per-call cost to one coroutine and the token check: grpc.aio runs
    interceptors as a chain of coroutines for every call, which measurably cut the API's
    throughput (benchmarks/grpc_bench.py). Health and reflection are registered unguarded.
    """

    def __init__(self, token: str, counts: RequestCounts | None = None) -> None:
        if not token:
            raise ValueError("the API token must not be empty")
        self._expected = token.encode("utf-8")
        self.counts = counts if counts is not None else RequestCounts()

    def __repr__(self) -> str:
        return "ApiGuard(token=<hidden>)"

    def guard(self, servicer: Any, methods: Iterable[str]) -> Any:
        """A stand-in for `servicer` whose `methods` need the token and are counted."""
        return SimpleNamespace(**{name: self._wrap(name, getattr(servicer, name))
                                  for name in methods})

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

    def _wrap(self, name: str, inner: Behaviour) -> Behaviour:
        counts, refusal_of = self.counts, self._refusal

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            code = "OK"
            try:
                refusal = refusal_of(context)
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
                counts.add(name, code)

        guarded.__name__ = name
        return guarded

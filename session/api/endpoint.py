"""`ApiServer`: the grpc.aio server that carries session.SessionService, health and reflection.

    api = ApiServer(manager, token, "127.0.0.1", 9091, health=StoreHealth(manager.store))
    await api.start()      # api.port is the bound port (useful with port 0)
    ...
    await api.stop()

Security rule: on a non-loopback address the API requires TLS (`tls=(cert_pem, key_pem)`)
unless `allow_insecure` is given, which is logged as a warning at every start. The bearer token
(session.api.auth) is required either way.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from session.api import session_pb2, session_pb2_grpc
from session.api.auth import ApiGuard, RequestCounts
from session.api.health import StoreHealth
from session.api.service import ApiConfig, SessionService
from session.logs import LazyLogger
from session.manager import SessionManager

__all__ = ["SESSION_SERVICE", "ApiServer", "InsecureListenError", "is_loopback"]

SESSION_SERVICE: str = session_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name
log = LazyLogger("session.api")  # quiet unless the application configured structlog

#: requests are small (the largest is an UpdateSession with 64 metadata entries of 1 KiB)
MAX_REQUEST_BYTES = 1024 * 1024


class InsecureListenError(ValueError):
    """A non-loopback address without TLS, and no explicit permission to go without."""


def is_loopback(host: str) -> bool:
    """True for loopback IP addresses and 'localhost'; any other name counts as remote."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiServer:
    """The network API of one `SessionManager`."""

    def __init__(
        self,
        manager: SessionManager,
        token: str,
        host: str = "127.0.0.1",
        port: int = 9091,
        *,
        tls: tuple[bytes, bytes] | None = None,
        allow_insecure: bool = False,
        config: ApiConfig | None = None,
        health: StoreHealth | None = None,
        counts: RequestCounts | None = None,
    ) -> None:
        if tls is None and not allow_insecure and not is_loopback(host):
            raise InsecureListenError(
                f"the API would listen on {host} without TLS: give a certificate and key "
                "(--grpc-tls-cert/--grpc-tls-key), or --grpc-insecure to accept the risk")
        self.manager = manager
        self.host = host
        self.requested_port = port
        self.port = 0
        self.tls = tls
        self.health = health or StoreHealth(manager.store)
        self._owns_health = health is None
        self.guard = ApiGuard(token, counts)
        self.service = SessionService(manager, config, on_store_failure=self.health.report_failure)
        self._health_service = health_aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._pending: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"ApiServer({self.address!r}, tls={self.tls is not None})"

    @property
    def counts(self) -> RequestCounts:
        return self.guard.counts

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port or self.requested_port}"

    async def start(self) -> None:
        """Listen and serve. Raises `OSError` when the address cannot be bound."""
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.so_reuseport", 0),
        ])
        methods = [m.name for m in session_pb2.DESCRIPTOR.services_by_name[
            "SessionService"].methods]
        session_pb2_grpc.add_SessionServiceServicer_to_server(
            self.guard.guard(self.service, methods), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health_service, server)
        reflection.enable_server_reflection(
            (SESSION_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
        host = f"[{self.host}]" if ":" in self.host else self.host
        address = f"{host}:{self.requested_port}"
        try:
            if self.tls is not None:
                cert, key = self.tls
                credentials = grpc.ssl_server_credentials([(key, cert)])
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc raises RuntimeError for an unbindable address
            raise OSError(f"cannot listen on {address}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        self.port = port
        if self._owns_health:
            await self.health.start()
        self.health.subscribe(self._serving)
        await server.start()
        self._server = server
        if self.tls is None and not is_loopback(self.host):
            log.warning("THE SESSION API IS LISTENING WITHOUT TLS ON A NON-LOOPBACK ADDRESS: "
                        "bearer tokens and sessions cross the network in the clear "
                        "(--grpc-insecure)", address=self.address)
        log.info("session API listening", address=self.address, tls=self.tls is not None)

    def _serving(self, ready: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SESSION_SERVICE):
            task = asyncio.get_running_loop().create_task(
                self._health_service.set(service, status))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def stop(self, grace: float = 1.0) -> None:
        """Stop taking calls; calls in flight get `grace` seconds (watch streams end)."""
        server, self._server = self._server, None
        if server is None:
            return
        await self._health_service.enter_graceful_shutdown()
        await server.stop(grace)
        if not await self.service.wait_watchers_closed():
            log.warning("watch streams still open after the API stopped",
                        watchers=self.service.watchers)
        if self._owns_health:
            await self.health.stop()

"""`MetricsServer`: Prometheus metrics, liveness and readiness over HTTP, on the event loop.

    GET /metrics   the registry in the format the scraper asks for (text or OpenMetrics)
    GET /healthz   200 "ok": the process is alive and its loop answers
    GET /readyz    200 "ready" while the session store is reachable, else 503 and why

It runs on the server's own event loop (asyncio streams), not in a thread: the collectors then
read the server's counters between two packets, never while one is half-processed. Requests
are bounded: at most `max_clients` at once, a request head of at most 8 KiB that must arrive
within `read_timeout` seconds, GET or HEAD only, no body. Each answer closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from session.logs import LazyLogger

__all__ = ["MetricsServer"]

log = LazyLogger("quantum.metrics")  # quiet unless the application configured structlog
MAX_HEAD_BYTES = 8192
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


class MetricsServer:
    """`ready()` says whether the store is reachable (and why not); `before_scrape` runs first
    on every /metrics request (to refresh values that need I/O)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
        host: str = "127.0.0.1",
        port: int = 9100,
        *,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
        max_clients: int = 16,
        read_timeout: float = 5.0,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.host = host
        self.requested_port = port
        self.port = 0
        self.before_scrape = before_scrape
        self.max_clients = max_clients
        self.read_timeout = read_timeout
        self.scrapes = 0
        #: CPU the loop's thread spent rendering /metrics answers (seconds, since start)
        self.render_cpu_seconds = 0.0
        self._clients = 0
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port or self.requested_port}"

    async def start(self) -> None:
        """Listen; raises `OSError` when the address cannot be bound."""
        self._server = await asyncio.start_server(self._serve, self.host, self.requested_port,
                                                  limit=MAX_HEAD_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics listening", address=self.address)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= self.max_clients:
            writer.close()
            return
        self._clients += 1
        try:
            status, content_type, body, head_only = await self._answer(reader)
            header = (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                      f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                      "Connection: close\r\n\r\n").encode("ascii")
            writer.write(header if head_only else header + body)
            async with asyncio.timeout(self.read_timeout):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading: nothing to tell it
        finally:
            self._clients -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        text = "text/plain; charset=utf-8"
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return 400, text, b"bad request\n", False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, text, b"bad request\n", False
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return 405, text, b"only GET and HEAD\n", False
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if path == "/healthz":
            return 200, text, b"ok\n", head_only
        if path == "/readyz":
            ready, why = self.ready()
            if ready:
                return 200, text, b"ready\n", head_only
            return 503, text, f"not ready: {why}\n".encode(), head_only
        if path == "/metrics":
            accept = next((line.split(":", 1)[1].strip() for line in lines[1:]
                           if line.lower().startswith("accept:")), "")
            if self.before_scrape is not None:
                await self.before_scrape()
            encoder, content_type = choose_encoder(accept)
            self.scrapes += 1
            started = time.thread_time()
            body = encoder(self.registry)
            self.render_cpu_seconds += time.thread_time() - started
            return 200, content_type, body, head_only
        return 404, text, b"not found: try /metrics, /healthz or /readyz\n", head_only

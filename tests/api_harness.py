"""A real server with its network services, for the API, metrics and watch tests.

`running_stack` starts a `QuantumServer` on 127.0.0.1 (ephemeral ports) on the given store,
with the gRPC API and the metrics endpoint wired exactly as `quantum-server` wires them
(`quantum_server.services.NetworkServices`), and yields a `Stack`: the server, its manager,
an authenticated grpc.aio stub, and helpers to scrape the metrics. `api_store` is a fixture
running each test once per store (memory, and etcd on the shared test server).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quantum.auth import AnonymousAuthenticator
from quantum.keys import ServerKeyFile
from quantum_server.cli import build_parser
from quantum_server.services import NetworkServices
from server import QuantumServer, ServerConfig
from session.api import session_pb2_grpc
from session.api.auth import bearer_metadata
from session.api.service import ApiConfig
from session.manager import ManagerConfig, SessionManager
from session.store import Store
from tests.conftest import STORE_FACTORIES
from tests.test_server import HOST, KEEPALIVE

__all__ = ["Stack", "api_store", "running_stack", "scrape"]


@pytest.fixture(params=STORE_FACTORIES)
async def api_store(request: pytest.FixtureRequest) -> Store:
    """A fresh store per test, once per kind (the server closes it)."""
    factory = request.param
    store: Store = await factory(request)
    return store


@dataclass
class Stack:
    server: QuantumServer
    manager: SessionManager
    services: NetworkServices
    key: ServerKeyFile
    channel: grpc.aio.Channel
    stub: Any  # session_pb2_grpc.SessionServiceStub
    auth: tuple[tuple[str, str], ...]
    ended: list[tuple[str, str]] = field(default_factory=list)

    @property
    def token(self) -> str:
        return self.services.token

    @property
    def api_address(self) -> str:
        assert self.services.api is not None
        return self.services.api.address

    @property
    def metrics_url(self) -> str:
        assert self.services.metrics is not None
        return f"http://{self.services.metrics.address}"

    @property
    def udp_port(self) -> int:
        return self.server.port


def _http_get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


async def http_get(url: str) -> tuple[int, str, str]:
    """GET `url` from a thread (the server answers on this test's event loop)."""
    return await asyncio.to_thread(_http_get, url)


async def scrape(stack: Stack) -> dict[str, float]:
    """Every sample of /metrics by its name and labels, e.g. ``quantum_drops_total{reason=x}``."""
    status, _, text = await http_get(stack.metrics_url + "/metrics")
    assert status == 200, text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@asynccontextmanager
async def running_stack(
    store: Store,
    tmp_path: Path,
    *,
    session_timeout: float = 30.0,
    cleanup_interval: float = 0.2,
    api_config: ApiConfig | None = None,
    keepalive_interval: float = KEEPALIVE,
    extra_flags: tuple[str, ...] = (),
    manager_limits: dict[str, int] | None = None,
) -> AsyncIterator[Stack]:
    """`keepalive_interval`: the server's; a session goes IDLE after 3 of them in silence;
    `manager_limits`: ManagerConfig's session limits."""
    manager = SessionManager(ManagerConfig(store=store, default_timeout=session_timeout,
                                           cleanup_interval=cleanup_interval,
                                           **(manager_limits or {})))
    key = ServerKeyFile.new()
    config = ServerConfig(host=HOST, port=0, keepalive_interval=keepalive_interval,
                          idle_timeout=max(5.0, 4 * keepalive_interval), stats_interval=0.1,
                          hibernate_after=5.0)
    server = QuantumServer(manager, key, AnonymousAuthenticator(), config)
    args = build_parser().parse_args(
        ["--grpc", f"{HOST}:0", "--metrics", f"{HOST}:0", *extra_flags])
    # fresh session gauges at every scrape, on etcd too (the tests compare them)
    services = NetworkServices(args, tmp_path / "server.key", api_config=api_config,
                               session_count_interval=0.0)
    await server.start()
    await services.start(server)
    assert services.api is not None
    channel = grpc.aio.insecure_channel(services.api.address)
    stack = Stack(server, manager, services, key, channel,
                  session_pb2_grpc.SessionServiceStub(channel), bearer_metadata(services.token))
    manager.add_listener(lambda s, reason: stack.ended.append((s.session_id, reason)))
    try:
        yield stack
    finally:
        await channel.close()
        await services.stop()
        await server.stop()

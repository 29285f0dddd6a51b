"""The server's network services beside the UDP socket: the gRPC API and the metrics endpoint.

`add_arguments` puts their flags on the server's parser; `NetworkServices(args, key_file)`
checks them (raising `ServiceConfigError`, which the CLI turns into exit status 2) and reads
the TLS files and the API token; `start(server)` listens (`OSError` when an address is taken),
`stop()` ends both. Both services watch one `StoreHealth`: gRPC health says SERVING and
``/readyz`` says ready only while the session store answers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from quantum_server.api_token import ApiTokenError, load_or_create_token
from session.logs import LazyLogger

if TYPE_CHECKING:
    from quantum_server.http import MetricsServer
    from quantum_server.metrics import SessionMetrics
    from quantum_server.transport import TransportSampler
    from server import QuantumServer
    from session.api.endpoint import ApiServer
    from session.api.health import StoreHealth
    from session.api.service import ApiConfig

__all__ = ["DEFAULT_GRPC", "DEFAULT_METRICS", "NetworkServices", "ServiceConfigError",
           "add_arguments", "host_port"]

DEFAULT_GRPC = "127.0.0.1:9091"
DEFAULT_METRICS = "127.0.0.1:9100"
#: seconds between two readings of the per-state session counts on a shared store (etcd reads
#: every session for them); the memory store's are read at every scrape
SHARED_STORE_COUNT_INTERVAL = 15.0
log = LazyLogger("quantum.server")  # quiet unless the application configured structlog


class ServiceConfigError(Exception):
    """The API or metrics flags cannot work as given; the message says why."""


def host_port(text: str) -> tuple[str, int]:
    """Parse HOST:PORT (IPv6 in brackets: [::1]:9091); an argparse type."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return host, port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("session API (gRPC) and metrics (HTTP)")
    group.add_argument("--grpc", type=host_port, default=host_port(DEFAULT_GRPC),
                       metavar="HOST:PORT",
                       help=f"gRPC session API address (default {DEFAULT_GRPC}; port 0 = any)")
    group.add_argument("--no-grpc", action="store_true", help="do not serve the gRPC API")
    group.add_argument("--grpc-tls-cert", type=Path, default=None, metavar="PEM",
                       help="TLS certificate (chain) for the API; required with --grpc-tls-key "
                            "on a non-loopback address")
    group.add_argument("--grpc-tls-key", type=Path, default=None, metavar="PEM",
                       help="the certificate's private key")
    group.add_argument("--grpc-insecure", action="store_true",
                       help="allow the API on a non-loopback address without TLS (logged as a "
                            "warning: tokens and sessions then cross the network in the clear)")
    group.add_argument("--metrics", type=host_port, default=host_port(DEFAULT_METRICS),
                       metavar="HOST:PORT",
                       help=f"Prometheus /metrics, /healthz and /readyz (default "
                            f"{DEFAULT_METRICS}; port 0 = any)")
    group.add_argument("--no-metrics", action="store_true", help="do not serve metrics")


def _read_tls(cert: Path, key: Path) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
    except OSError as exc:
        raise ServiceConfigError(f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ServiceConfigError(f"--grpc-tls-cert {cert}: not a PEM certificate") from None
    try:
        load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ServiceConfigError(f"--grpc-tls-key {key}: not an unencrypted PEM private "
                                 "key") from None
    return cert_pem, key_pem


class NetworkServices:
    """The API and metrics of one server, as its flags ask for. `api_config`: the API's
    limits (`session.api.service.ApiConfig`; its defaults when None). `session_count_interval`:
    seconds the per-state session gauges may be old (default: 0 on the memory store,
    SHARED_STORE_COUNT_INTERVAL on a shared one)."""

    def __init__(self, args: argparse.Namespace, key_file: Path,
                 api_config: ApiConfig | None = None,
                 session_count_interval: float | None = None) -> None:
        from session.api.endpoint import is_loopback

        self.grpc: tuple[str, int] | None = None if args.no_grpc else args.grpc
        self.metrics_address: tuple[str, int] | None = None if args.no_metrics else args.metrics
        self.tls: tuple[bytes, bytes] | None = None
        self.token = ""
        self.insecure = bool(args.grpc_insecure)
        self.api_config = api_config
        self.session_count_interval = session_count_interval
        self.api: ApiServer | None = None
        self.metrics: MetricsServer | None = None
        self.health: StoreHealth | None = None
        self.session_metrics: SessionMetrics | None = None
        self.transport_sampler: TransportSampler | None = None
        if self.grpc is None:
            return
        cert, key = args.grpc_tls_cert, args.grpc_tls_key
        if (cert is None) != (key is None):
            raise ServiceConfigError("--grpc-tls-cert and --grpc-tls-key go together")
        if cert is not None and self.insecure:
            raise ServiceConfigError("--grpc-insecure contradicts --grpc-tls-cert/--grpc-tls-key")
        if cert is not None and key is not None:
            self.tls = _read_tls(cert, key)
        elif not is_loopback(self.grpc[0]) and not self.insecure:
            raise ServiceConfigError(
                f"--grpc {self.grpc[0]} is not a loopback address: the API needs TLS there "
                "(--grpc-tls-cert/--grpc-tls-key), or --grpc-insecure to go without")
        try:
            self.token, path, created = load_or_create_token(key_file)
        except ApiTokenError as exc:
            raise ServiceConfigError(str(exc)) from None
        if created:
            log.warning("created a new API token file", path=str(path))

    async def start(self, server: QuantumServer) -> None:
        """Serve next to a started `server`; `OSError` if an address cannot be bound."""
        from prometheus_client import ProcessCollector

        from quantum_server.http import MetricsServer
        from quantum_server.metrics import (
            GrpcCollector,
            SessionMetrics,
            TransportCollector,
            build_registry,
        )
        from quantum_server.transport import TransportSampler
        from session.api.endpoint import ApiServer
        from session.api.health import StoreHealth
        from session.memory import MemoryStore

        manager = server.manager
        self.health = health = StoreHealth(manager.store)
        await health.start()
        try:
            if self.grpc is not None:
                self.api = ApiServer(manager, self.token, *self.grpc, tls=self.tls,
                                     allow_insecure=self.insecure, health=health,
                                     config=self.api_config)
                await self.api.start()
            if self.metrics_address is not None:
                interval = self.session_count_interval
                if interval is None:
                    interval = (0.0 if isinstance(manager.store, MemoryStore)
                                else SHARED_STORE_COUNT_INTERVAL)
                self.session_metrics = session_metrics = SessionMetrics(
                    manager, refresh_interval=interval)
                # the connections are summed before the scrape, a chunk at a time between
                # packets, not inside the collector in one stop of the loop
                self.transport_sampler = sampler = TransportSampler(server)

                async def before_scrape() -> None:
                    await session_metrics.refresh()
                    await sampler.refresh()

                collectors: list[object] = [
                    session_metrics,
                    TransportCollector(sampler.latest, cost=lambda: sampler.last_walk_seconds),
                    ProcessCollector(registry=None)]
                if self.api is not None:
                    collectors.append(GrpcCollector(self.api.counts))
                self.metrics = MetricsServer(
                    build_registry(*collectors), lambda: (health.ready, health.last_error),
                    *self.metrics_address, before_scrape=before_scrape)
                await self.metrics.start()
        except BaseException:
            await self.stop()
            raise

    def metrics_cpu_seconds(self) -> float:
        """CPU the loop's thread has spent serving /metrics since start: the connections'
        walks and the rendering (what metrics cost the server; 0.0 with metrics off)."""
        walks = self.transport_sampler.cpu_seconds if self.transport_sampler else 0.0
        return walks + (self.metrics.render_cpu_seconds if self.metrics else 0.0)

    def describe(self) -> str:
        """For the ready line: where each service listens ("off" when disabled)."""
        api = self.api.address if self.api is not None else "off"
        metrics = self.metrics.address if self.metrics is not None else "off"
        return f"api={api} metrics={metrics}"

    async def stop(self) -> None:
        api, self.api = self.api, None
        if api is not None:
            await api.stop()
        metrics, self.metrics = self.metrics, None
        if metrics is not None:
            await metrics.stop()
        if self.session_metrics is not None:
            self.session_metrics.close()
            self.session_metrics = None
        if self.health is not None:
            await self.health.stop()

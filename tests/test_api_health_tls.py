"""Readiness follows the store (gRPC health and /readyz flip when etcd stops and starts), and
the API's TLS rule: TLS or loopback, unless the risk is accepted out loud."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from benchmarks.etcd_util import EtcdCluster
from session.api import session_pb2 as pb
from session.api import session_pb2_grpc
from session.api.auth import bearer_metadata
from session.api.endpoint import ApiServer, InsecureListenError
from session.etcd import EtcdStore
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from tests.api_harness import http_get, running_stack
from tests.etcd_cluster import etcd_private, unique_prefix  # noqa: F401  (fixture)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def wait_for_status(health: health_pb2_grpc.HealthStub, wanted: int,
                          timeout: float = 10.0) -> float:
    """Seconds until both the server and the session service report `wanted`."""
    started = time.monotonic()
    while True:
        replies = [await health.Check(health_pb2.HealthCheckRequest(service=name))
                   for name in ("", "session.SessionService")]
        if all(r.status == wanted for r in replies):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"health never became {wanted} (last {replies})")
        await asyncio.sleep(0.1)


@pytest.mark.etcd
async def test_health_and_readiness_follow_etcd(etcd_private: EtcdCluster,
                                                tmp_path: Path) -> None:
    store = EtcdStore(etcd_private.endpoints, prefix=unique_prefix("health"), timeout=1.0)
    async with running_stack(store, tmp_path) as stack:
        health = health_pb2_grpc.HealthStub(stack.channel)
        await wait_for_status(health, SERVING, timeout=0)
        assert (await http_get(stack.metrics_url + "/readyz"))[0] == 200

        etcd_private.kill_all()
        assert await wait_for_status(health, NOT_SERVING) < 5.0
        status, _, body = await http_get(stack.metrics_url + "/readyz")
        assert status == 503 and body.startswith("not ready: ") and "etcd" in body
        assert (await http_get(stack.metrics_url + "/healthz"))[0] == 200  # alive all along
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await stack.stub.CreateSession(pb.CreateSessionRequest(user_id="a"),
                                           metadata=stack.auth)
        assert down.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "etcd" in (down.value.details() or "")

        etcd_private.restart()
        await wait_for_status(health, SERVING, timeout=20.0)
        assert (await http_get(stack.metrics_url + "/readyz"))[0] == 200
        await stack.stub.CreateSession(pb.CreateSessionRequest(user_id="a"),
                                       metadata=stack.auth)


def self_signed(tmp_path: Path) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quantum test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (tmp_path / "api.crt").write_bytes(cert_pem)
    (tmp_path / "api.key").write_bytes(key_pem)
    return cert_pem, key_pem


async def test_the_api_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    async with SessionManager(ManagerConfig(store=MemoryStore())) as manager:
        api = ApiServer(manager, "t" * 43, "127.0.0.1", 0, tls=(cert, key))
        await api.start()
        try:
            credentials = grpc.ssl_channel_credentials(root_certificates=cert)
            async with grpc.aio.secure_channel(api.address, credentials) as channel:
                stub = session_pb2_grpc.SessionServiceStub(channel)
                stats = await stub.GetStats(pb.GetStatsRequest(),
                                            metadata=bearer_metadata("t" * 43))
                assert stats.total == 0
            async with grpc.aio.insecure_channel(api.address) as plain:
                stub = session_pb2_grpc.SessionServiceStub(plain)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.GetStats(pb.GetStatsRequest(), metadata=bearer_metadata(
                        "t" * 43), timeout=3)
                assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        finally:
            await api.stop()


async def test_a_non_loopback_address_needs_tls_or_an_explicit_risk(tmp_path: Path) -> None:
    async with SessionManager(ManagerConfig(store=MemoryStore())) as manager:
        for host in ("0.0.0.0", "::", "192.0.2.10", "api.example"):
            with pytest.raises(InsecureListenError, match="without TLS"):
                ApiServer(manager, "t" * 43, host, 0)
        for host in ("127.0.0.1", "127.8.9.10", "::1", "localhost"):
            ApiServer(manager, "t" * 43, host, 0)  # loopback: fine without TLS

        api = ApiServer(manager, "t" * 43, "0.0.0.0", 0, allow_insecure=True)
        with capture_logs() as logs:
            await api.start()
        try:
            warnings = [e for e in logs if e["log_level"] == "warning"]
            assert any("WITHOUT TLS ON A NON-LOOPBACK ADDRESS" in e["event"] for e in warnings)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
                stub = session_pb2_grpc.SessionServiceStub(channel)
                await stub.GetStats(pb.GetStatsRequest(), metadata=bearer_metadata("t" * 43))
        finally:
            await api.stop()

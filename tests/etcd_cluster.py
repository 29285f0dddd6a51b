"""pytest fixtures that run real etcd for the tests marked ``etcd``.

Process handling lives in `benchmarks.etcd_util`; this module only decides lifetimes:

* one single-member server per test process, started on first use and shared by every test
  (each test gets a unique key prefix, so they never see each other's data);
* one three-member cluster per test module that asks for it (fault tests kill members, so it
  is not shared across modules);
* a dedicated single-member server for tests that stop all of etcd.

A missing etcd binary fails the test with `EtcdNotFound`'s message; it never skips.

Test modules import the fixtures they use, e.g.
``from tests.etcd_cluster import etcd_endpoints, etcd_prefix``.
"""

from __future__ import annotations

import atexit
import itertools
import os
from collections.abc import Iterator

import pytest

from benchmarks.etcd_util import EtcdCluster
from session.etcd import EtcdStore
from session.store import Store

__all__ = [
    "etcd_cluster3",
    "etcd_endpoints",
    "etcd_prefix",
    "etcd_private",
    "etcd_store_factory",
    "etcd_store_pair_factory",
    "shared_etcd",
    "unique_prefix",
]

_shared: EtcdCluster | None = None
_prefix_counter = itertools.count()


def shared_etcd() -> EtcdCluster:
    """The process-wide single-member server, started on first call, stopped at exit.

    A plain function rather than only a fixture so `tests/conftest.py`'s store factories can
    reach it without registering fixtures.
    """
    global _shared
    if _shared is None:
        cluster = EtcdCluster(1)
        cluster.start()
        atexit.register(cluster.stop)
        _shared = cluster
    elif not all(m.running for m in _shared.members):
        # A test that killed the shared server must not break the ones after it.
        _shared.restart()
    return _shared


def unique_prefix(label: str = "t") -> str:
    """A key prefix no other test in any process uses."""
    return f"/test-{os.getpid()}-{next(_prefix_counter)}-{label}"


@pytest.fixture(scope="session")
def etcd_endpoints() -> list[str]:
    return shared_etcd().endpoints


@pytest.fixture
def etcd_prefix(request: pytest.FixtureRequest) -> str:
    return unique_prefix(request.node.name[:40])


@pytest.fixture(scope="module")
def etcd_cluster3() -> Iterator[EtcdCluster]:
    """Three members; a test that kills one restarts it before returning (see tests)."""
    cluster = EtcdCluster(3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_private() -> Iterator[EtcdCluster]:
    """A server of this test's own, for tests that take all of etcd down."""
    cluster = EtcdCluster(1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def etcd_store_factory(request: pytest.FixtureRequest) -> Store:
    """`STORE_FACTORIES` entry: a started `EtcdStore` on the shared server, fresh prefix."""
    store = EtcdStore(shared_etcd().endpoints, prefix=unique_prefix("contract"), timeout=5.0)
    await store.start()
    return store


async def etcd_store_pair_factory(request: pytest.FixtureRequest) -> tuple[Store, Store]:
    """`STORE_PAIR_FACTORIES` entry: two started `EtcdStore`s sharing one fresh prefix (two
    nodes of one cluster)."""
    prefix = unique_prefix("pair")
    pair = (EtcdStore(shared_etcd().endpoints, prefix=prefix, timeout=5.0),
            EtcdStore(shared_etcd().endpoints, prefix=prefix, timeout=5.0))
    for store in pair:
        await store.start()
    return pair

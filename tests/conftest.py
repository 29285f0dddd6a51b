"""Shared fixtures for the session tests: a fake clock and the `store` fixture; the hypothesis
profile (`tests/profiles.py` defines them and `profiles.default_profile` picks one: ``ci`` in CI,
which `.ci/run` names with QUANTUM_HYPOTHESIS_PROFILE=ci, ``dev`` elsewhere, ``explore`` by hand
with ``--hypothesis-profile=explore``).

`store` runs each test once per entry of `STORE_FACTORIES`. A factory is an async callable
taking the pytest request (so it can pull in other fixtures, e.g. an etcd server) and
returning a fresh, empty store; wrap it in `pytest.param(factory, id=..., marks=...)`.
`store_pair` does the same for `STORE_PAIR_FACTORIES`: two stores over the same data (two
nodes of a shared store), for the parts of the contract only a shared store has.
Add factories to the list *before* the `store` fixture below is defined: pytest reads the
parameter list when the decorator runs.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import settings

from quantum.build import REBUILD_HINT, is_compiled, stale_modules
from session.memory import MemoryStore
from session.store import Store
from tests import profiles  # registers the hypothesis profiles
from tests.etcd_cluster import etcd_store_factory, etcd_store_pair_factory

# the default; `--hypothesis-profile=NAME` (hypothesis' pytest plugin) overrides it
settings.load_profile(profiles.default_profile(os.environ))


def pytest_configure(config: pytest.Config) -> None:
    # a compiled module older than its source would test the old code, silently
    if stale := stale_modules():
        raise pytest.UsageError(f"compiled modules were built from older sources: "
                                f"{', '.join(stale)}; {REBUILD_HINT}")


#: set by tools/mutation.py: the mutmut statistics whose recorded test durations order a run
MUTATION_ORDER_ENV = "QUANTUM_MUTATION_ORDER"


#: in a mutation run, a test may spend this many times its unmutated duration in CPU, plus
#: MUTATION_TEST_SLACK seconds, before it fails as looping (see pytest_runtest_call)
MUTATION_TEST_FACTOR = 10.0
MUTATION_TEST_SLACK = 2.0
_mutation_durations: dict[str, float] = {}


class MutantLooped(BaseException):
    """A test of a mutant ran far past its unmutated time. A BaseException, so that no
    `except Exception` in the code under test swallows it and loops on."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a mutation run only: the tests a mutant must pass, fastest first. mutmut stops at
    the first failure (-x) but hands the tests over in no order, so a mutant that any quick
    test kills could otherwise wait for the slow ones first."""
    stats = os.environ.get(MUTATION_ORDER_ENV)
    if not stats or not os.path.exists(stats):
        return
    with open(stats, encoding="utf-8") as f:
        durations: dict[str, float] = json.load(f).get("duration_by_test", {})
    _mutation_durations.update(durations)
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """In a mutation run only: a test that spends MUTATION_TEST_FACTOR times its recorded
    duration (+ MUTATION_TEST_SLACK s) of CPU fails, so a looping mutant is caught in
    seconds by the test it loops in, instead of holding a worker until mutmut's CPU limit
    for the whole run (minutes, for a function every test reaches). CPU time, not wall
    time: a loaded machine does not make a test look slower."""
    duration = _mutation_durations.get(item.nodeid)
    if duration is None:
        yield
        return
    limit = duration * MUTATION_TEST_FACTOR + MUTATION_TEST_SLACK

    def expired(signum: int, frame: object) -> None:
        raise MutantLooped(f"{item.nodeid} spent over {limit:.1f} s of CPU "
                           f"(unmutated: {duration:.2f} s)")

    previous = signal.signal(signal.SIGPROF, expired)
    signal.setitimer(signal.ITIMER_PROF, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def pytest_report_header(config: pytest.Config) -> str:
    return (f"quantum core: {'compiled (mypyc)' if is_compiled() else 'pure Python'}; "
            f"hypothesis profile: {settings._current_profile}")


StoreFactory = Callable[[pytest.FixtureRequest], Awaitable[Store]]


async def memory_store(request: pytest.FixtureRequest) -> Store:
    return MemoryStore()


STORE_FACTORIES: list[Any] = [
    pytest.param(memory_store, id="memory"),
    pytest.param(etcd_store_factory, id="etcd", marks=pytest.mark.etcd),
]


STORE_PAIR_FACTORIES: list[Any] = [
    pytest.param(etcd_store_pair_factory, id="etcd", marks=pytest.mark.etcd),
]


@pytest.fixture(params=STORE_FACTORIES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    factory: StoreFactory = request.param
    instance = await factory(request)
    try:
        yield instance
    finally:
        await instance.close()


@pytest.fixture(params=STORE_PAIR_FACTORIES)
async def store_pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, Store]]:
    factory: Callable[[pytest.FixtureRequest], Awaitable[tuple[Store, Store]]] = request.param
    pair = await factory(request)
    try:
        yield pair
    finally:
        for instance in pair:
            await instance.close()


class FakeClock:
    """An injectable clock (`clock()` returns aware UTC) that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2025, 11, 7, 14, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()

"""The heartbeat fast path drives the manager's coroutine by hand; `_resume` must finish one
that suspended exactly as a Task would: results, exceptions, bare yields, real futures."""

from __future__ import annotations

import asyncio

import pytest

from server import _resume


async def _waits_then_adds(x: int) -> int:
    await asyncio.sleep(0.001)
    await asyncio.sleep(0)  # a bare yield
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.001, fut.set_result, 5)
    return x + await fut


async def _fails_later() -> None:
    await asyncio.sleep(0.001)
    raise KeyError("boom")


async def _uses_current_task() -> bool:
    await asyncio.sleep(0)
    async with asyncio.timeout(1.0):  # needs a current task, as aetcd/grpc code may
        await asyncio.sleep(0.001)
    return asyncio.current_task() is not None


async def test_resume_returns_the_coroutine_result() -> None:
    coro = _waits_then_adds(1)
    assert await _resume(coro, coro.send(None)) == 6


async def test_resume_propagates_exceptions() -> None:
    coro = _fails_later()
    with pytest.raises(KeyError, match="boom"):
        await _resume(coro, coro.send(None))


async def test_resume_runs_inside_a_task() -> None:
    coro = _uses_current_task()
    assert await _resume(coro, coro.send(None)) is True

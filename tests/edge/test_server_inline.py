"""edge/fastpath/inline.py: a request coroutine's first step runs at once; a task only if it suspends."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import pytest

from streamgate.edge.fastpath import inline

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outside")


async def from_callback(fn: Callable[[], Any]) -> Any:
    """Call ``fn`` from a plain loop callback (no task running), as a protocol's data_received is."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def call() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:  # noqa: B036 - handed to the test
            done.set_exception(exc)

    loop.call_soon(call)
    return await done


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_inline_first_steps_on_both_loops(loop_kind: str) -> None:
    import uvloop

    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_scenarios())


async def _scenarios() -> None:
    loop = asyncio.get_running_loop()
    events: list[str] = []

    async def synchronous() -> None:
        assert asyncio.current_task() is not None, "code that needs a task has one"
        async with asyncio.timeout(5):  # noqa: ASYNC100 - the point: it needs a current task
            events.append("ran")
        VAR.set("inside")

    assert await from_callback(lambda: inline.start(loop, synchronous(), "t")) is None
    assert events == ["ran"], "finished before start() returned"
    assert VAR.get() == "outside", "context changes stay in the coroutine's own context"

    waiter: asyncio.Future[str] = loop.create_future()

    async def suspends() -> None:
        async with asyncio.timeout(5):
            events.append(await waiter)

    task = await from_callback(lambda: inline.start(loop, suspends(), "t"))
    assert isinstance(task, asyncio.Task) and not task.done()
    waiter.set_result("resumed")
    await task
    assert events[-1] == "resumed"

    # A timeout entered during the inline step fires after a task took over: TimeoutError inside.
    never: asyncio.Future[None] = loop.create_future()

    async def times_out() -> None:
        try:
            async with asyncio.timeout(0.05):
                await never
        except TimeoutError:
            events.append("timed out")

    task = await from_callback(lambda: inline.start(loop, times_out(), "t"))
    await asyncio.wait_for(task, 5)  # hangs if the stand-in did not hand the cancel to the task
    assert events[-1] == "timed out" and not task.cancelled()

    # An error set on the awaited future reaches the coroutine; cancelling the task cancels it.
    failing: asyncio.Future[None] = loop.create_future()

    async def fails() -> None:
        try:
            await failing
        except KeyError:
            events.append("got the error")

    task = await from_callback(lambda: inline.start(loop, fails(), "t"))
    failing.set_exception(KeyError("x"))
    await task
    assert events[-1] == "got the error"

    async def cancelled() -> None:
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    task = await from_callback(lambda: inline.start(loop, cancelled(), "t"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events[-1] == "cancelled"

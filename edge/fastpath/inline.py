"""Run a coroutine's first step right away; make a task only if it suspends.

This is what Python 3.12 calls an eager task, for 3.11. On the fast path a request's coroutine
(access check, cache lookup, response) almost always finishes without waiting on anything, and
scheduling a task for it costs a loop turn and about a fifth of the request's CPU. The first
step runs here with a :class:`StandIn` registered as the current task, so code that needs one
(``asyncio.timeout`` in a Redis client) works; if the coroutine suspends, a real task drives the
rest and the stand-in forwards ``cancel``/``uncancel`` to it, so a timeout entered during the
first step still cancels the right task.
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio import tasks as _tasks
from collections.abc import Coroutine
from typing import Any, cast


class StandIn:
    """The current task while a first step runs inline; then a proxy for the task that took over."""

    __slots__ = ("task", "_loop", "_cancels")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.task: asyncio.Task[Any] | None = None
        self._loop = loop
        self._cancels = 0

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def get_name(self) -> str:
        return self.task.get_name() if self.task is not None else "inline first step"

    def done(self) -> bool:
        return self.task.done() if self.task is not None else False

    def cancelled(self) -> bool:
        return self.task.cancelled() if self.task is not None else False

    def cancel(self, msg: Any = None) -> bool:
        if self.task is not None:
            return self.task.cancel(msg)
        self._cancels += 1  # timers fire from the loop, so only once a task has taken over
        return True

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else self._cancels

    def uncancel(self) -> int:
        if self.task is not None:
            return self.task.uncancel()
        self._cancels = max(0, self._cancels - 1)
        return self._cancels


def start(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None],
          name: str) -> asyncio.Task[None] | None:
    """Step ``coro`` now; None when it finished, else the task that finishes it.

    Call only from a loop callback (no task running). Exceptions of the first step propagate.
    """
    context = contextvars.copy_context()  # as a task would: the coroutine's context is its own
    stand_in = StandIn(loop)
    # asyncio's current-task registry stores any object; typeshed names it Task.
    as_task = cast("asyncio.Task[Any]", stand_in)
    _tasks._enter_task(loop, as_task)
    try:
        suspended = context.run(coro.send, None)
    except StopIteration:
        return None
    finally:
        _tasks._leave_task(loop, as_task)
    task = loop.create_task(_finish(coro, suspended), name=name, context=context)
    stand_in.task = task
    return task


async def _finish(coro: Coroutine[Any, Any, None], suspended: Any) -> None:
    """Drive ``coro`` from where its inline step suspended, as its task would."""
    while True:
        error: BaseException | None = None
        try:
            if suspended is None:  # a bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
            else:
                # Taken over from the coroutine's own await, as Task.__step does.
                suspended._asyncio_future_blocking = False
                await suspended
        except BaseException as exc:  # noqa: B036 - handed to the coroutine below
            error = exc
        try:
            if error is not None and not (suspended is not None and suspended.done()):
                # This task was cancelled while the awaited thing is still pending: say so.
                suspended = coro.throw(error)
            else:
                # The coroutine reads the outcome (result, error, cancellation) itself.
                suspended = coro.send(None)
        except StopIteration:
            return

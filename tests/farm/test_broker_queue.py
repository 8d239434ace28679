"""The broker's priority heap: higher priority first, FIFO within a priority, lazy removal."""

from __future__ import annotations

import pytest

from streamgate.farm.queue import JobQueue

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_higher_priority_first_fifo_within() -> None:
    queue = JobQueue()
    for job_id, priority in [("a", 0), ("b", 0), ("c", 5), ("d", 0), ("e", 5), ("f", -1)]:
        queue.push(job_id, priority)
    assert list(queue) == ["c", "e", "a", "b", "d", "f"]
    assert [queue.pop() for _ in range(6)] == ["c", "e", "a", "b", "d", "f"]
    assert queue.pop() is None and len(queue) == 0


def test_remove_and_front() -> None:
    queue = JobQueue()
    for job_id in "abc":
        queue.push(job_id, 1)
    assert queue.remove("b") and not queue.remove("b")
    assert "b" not in queue and len(queue) == 2
    queue.push("z", 1, front=True)  # a handed-back job goes ahead of its priority's FIFO
    queue.push("a", 9)  # already queued: unchanged
    assert queue.position("z") == 0 and queue.position("c") == 2
    assert [queue.pop(), queue.pop(), queue.pop()] == ["z", "a", "c"]

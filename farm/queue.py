"""The broker's job queue: a priority heap, higher priority first, FIFO within a priority.

Removal (cancel) is lazy: the entry stays in the heap and is skipped when popped, so cancel is
O(1) and pop stays O(log n) (the ``heapq`` documentation's "priority queue implementation notes").
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator


class JobQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._live: dict[str, tuple[int, int, str]] = {}
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._live

    def push(self, job_id: str, priority: int, *, front: bool = False) -> None:
        """Queue ``job_id``; ``front`` puts it ahead of its priority's FIFO (a handed-back job)."""
        if job_id in self._live:
            return
        # heapq is a min-heap: negate the priority; the counter keeps FIFO order within one.
        seq = -next(self._order) if front else next(self._order)
        entry = (-priority, seq, job_id)
        self._live[job_id] = entry
        heapq.heappush(self._heap, entry)

    def pop(self) -> str | None:
        while self._heap:
            entry = heapq.heappop(self._heap)
            if self._live.get(entry[2]) is entry:
                del self._live[entry[2]]
                return entry[2]
        return None

    def remove(self, job_id: str) -> bool:
        return self._live.pop(job_id, None) is not None

    def position(self, job_id: str) -> int | None:
        """0-based place in dispatch order (O(n): for queries, not the hot path)."""
        entry = self._live.get(job_id)
        if entry is None:
            return None
        return sum(1 for other in self._live.values() if other < entry)

    def __iter__(self) -> Iterator[str]:
        """Job ids in dispatch order."""
        return (entry[2] for entry in sorted(self._live.values()))

"""How many workers a farm should run, from the broker's queue and ``transcoder.scaling_policy``.

One function, used by the pool on a single node (and by the control plane for a fleet), so both
read the policy the same way:

* ``ratio = queue_length / workers / target_queue_len``: waiting jobs per worker, against the
  target. Running jobs are not in the queue.
* ``ratio >= scale_up_threshold``: grow to ``ceil(queue_length / target_queue_len)`` workers (at
  least one more), the count that brings the backlog per worker back to the target.
* ``ratio <= scale_down_threshold`` with idle workers: shrink by one per check (gently: a burst
  of uploads should not find the pool just emptied); busy workers are never retired.
* ``long_running`` workers (their job has run past ``long_job_after``) are not capacity for
  the jobs waiting: while any job waits, at least ``long_running + 1`` workers, so one long job
  (a 10 h clip) cannot hold every short one back at ``min_workers``. The pool, not the broker,
  does this: it already knows how long each of its workers has been busy, and a reserved worker
  would sit idle whenever only long jobs exist.
* always within ``[min_workers, max_workers]``.
"""

from __future__ import annotations

import math

from streamgate.common.config import ScalingPolicy


def desired_workers(policy: ScalingPolicy, *, queue_length: int, workers: int, busy: int,
                    long_running: int = 0) -> int:
    target = max(policy.target_queue_len, 1)
    ratio = queue_length / max(workers, 1) / target
    desired = workers
    if ratio >= policy.scale_up_threshold and queue_length > 0:
        desired = max(workers + 1, math.ceil(queue_length / target))
    elif ratio <= policy.scale_down_threshold and busy < workers:
        desired = max(workers - 1, busy)
    if queue_length > 0 and long_running > 0:
        desired = max(desired, long_running + 1)
    return max(policy.min_workers, min(policy.max_workers, desired))

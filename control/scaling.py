"""The farm worker count the whole fleet should run, from the queue and ``transcoder.scaling_policy``.

The rule itself is the farm's (``farm/scaling.py`` ``desired_workers``: waiting jobs per worker
against ``target_queue_len``, up at ``scale_up_threshold``, down by one at
``scale_down_threshold`` without retiring busy workers, clamped to ``[min_workers, max_workers]``),
so a single node's pool and the fleet read the policy the same way. Here it is applied to the
whole fleet's figures and wrapped in a :class:`ScalingDecision` that the control service publishes
(``GET /api/v1/scaling``, the gauge ``streamgate_scaling_farm_workers`` and the Consul KV key
``<kv_prefix>/scaling/farm_workers``), with the share of each farm.
"""

from __future__ import annotations

import math

from streamgate.common.config import ScalingPolicy
from streamgate.common.protocol import Action, ScalingDecision
from streamgate.farm.scaling import desired_workers


def decide(queue_length: int, current_workers: int, active_workers: int, policy: ScalingPolicy,
           farms: int = 1, decided_at: float = 0.0) -> ScalingDecision:
    """The fleet's target worker count for these figures (pure: no I/O, no clock)."""
    queue_length = max(queue_length, 0)
    current = max(current_workers, 0)
    active = min(max(active_workers, 0), current)
    target_len = max(policy.target_queue_len, 1)
    pressure = queue_length / max(current, 1) / target_len
    wanted = desired_workers(policy, queue_length=queue_length, workers=current, busy=active)
    action: Action = "scale_up" if wanted > current else "scale_down" if wanted < current else "hold"
    reason = (f"queue {queue_length} over {current} workers ({active} busy) is {pressure:.2f}x the target"
              f" {target_len} per worker (up at {policy.scale_up_threshold:g}, down at"
              f" {policy.scale_down_threshold:g}; {policy.min_workers}..{policy.max_workers} workers)")
    farms = max(farms, 1)
    return ScalingDecision(farm_workers=wanted, per_farm=math.ceil(wanted / farms),
                           current_workers=current, active_workers=active, queue_length=queue_length,
                           farms=farms, pressure=round(pressure, 3), action=action, reason=reason,
                           decided_at=decided_at)

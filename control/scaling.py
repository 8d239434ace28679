"""The farm worker count the whole fleet should run, from the queue and ``transcoder.scaling_policy``.

The rule (pure, so it is unit-tested on its own):

- pressure = queue length / ``target_queue_len``;
- pressure above ``scale_up_threshold``: add one worker per ``target_queue_len`` jobs waiting;
- pressure below ``scale_down_threshold``: remove one worker, never below the busy ones;
- otherwise hold; always clamp to ``[min_workers, max_workers]``.

The band between the thresholds is the hysteresis that keeps the count from flapping. The
decision is published by the control service (``GET /api/v1/scaling``, the Prometheus gauge
``streamgate_scaling_farm_workers`` and the Consul KV key ``<kv_prefix>/scaling/farm_workers``).
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from ..common.config import ScalingPolicy

Action = Literal["scale_up", "scale_down", "hold"]


class ScalingDecision(msgspec.Struct, frozen=True, kw_only=True):
    """What control answers on ``GET /api/v1/scaling`` and stores in Consul KV."""

    farm_workers: int  # the fleet-wide target
    per_farm: int  # the target of each farm (fleet target split across the farms, rounded up)
    current_workers: int
    active_workers: int
    queue_length: int
    farms: int
    pressure: float
    action: Action
    reason: str
    decided_at: float = 0.0


def decide(queue_length: int, current_workers: int, active_workers: int, policy: ScalingPolicy,
           farms: int = 1, decided_at: float = 0.0) -> ScalingDecision:
    """The fleet's target worker count for this queue (see the module docstring for the rule)."""
    queue_length = max(queue_length, 0)
    current = max(current_workers, 0)
    active = min(max(active_workers, 0), current)
    target_len = max(policy.target_queue_len, 1)
    pressure = queue_length / target_len
    if pressure > policy.scale_up_threshold:
        wanted = current + math.ceil(queue_length / target_len)
        action: Action = "scale_up"
        reason = (f"queue {queue_length} is {pressure:.2f}x the target {target_len}"
                  f" (above {policy.scale_up_threshold:g})")
    elif pressure < policy.scale_down_threshold and current > active:
        wanted = max(current - 1, active)
        action = "scale_down"
        reason = (f"queue {queue_length} is {pressure:.2f}x the target {target_len}"
                  f" (below {policy.scale_down_threshold:g}); {current - active} idle")
    else:
        wanted = current
        action = "hold"
        reason = f"queue {queue_length} within the band ({pressure:.2f}x the target {target_len})"
    clamped = min(max(wanted, policy.min_workers), policy.max_workers)
    if clamped != wanted:
        reason += f"; clamped to [{policy.min_workers}, {policy.max_workers}]"
    if clamped > current:
        action = "scale_up"
    elif clamped < current:
        action = "scale_down"
    else:
        action = "hold"
    farms = max(farms, 1)
    return ScalingDecision(farm_workers=clamped, per_farm=math.ceil(clamped / farms),
                           current_workers=current, active_workers=active, queue_length=queue_length,
                           farms=farms, pressure=round(pressure, 3), action=action, reason=reason,
                           decided_at=decided_at)

"""The fleet's scaling decision, as a pure function over the farm's rule (farm/scaling.py)."""

from __future__ import annotations

import pytest

from streamgate.common.config import ScalingPolicy
from streamgate.control.scaling import decide

POLICY = ScalingPolicy(min_workers=2, max_workers=16, target_queue_len=10, scale_up_threshold=2.5,
                       scale_down_threshold=0.5)


@pytest.mark.parametrize(("queue", "current", "active", "expected", "action"), [
    (0, 4, 4, 4, "hold"),  # nothing waits but everyone is busy: keep them
    (0, 4, 1, 3, "scale_down"),  # idle workers and an empty queue: one fewer per decision
    (4, 4, 0, 3, "scale_down"),  # 0.4x the target is below 0.5
    (10, 4, 4, 4, "hold"),  # below the target but every worker busy
    (80, 4, 4, 4, "hold"),  # 2.0x the target per worker: inside the band
    (100, 4, 4, 10, "scale_up"),  # 2.5x: as many workers as bring 10 per worker
    (1000, 4, 4, 16, "scale_up"),  # clamped to max_workers
    (0, 0, 0, 2, "scale_up"),  # an empty fleet gets min_workers
    (0, 2, 0, 2, "hold"),  # never below min_workers
    (0, 20, 0, 16, "scale_down"),  # above max (policy lowered): back to max
])
def test_decide(queue: int, current: int, active: int, expected: int, action: str) -> None:
    decision = decide(queue, current, active, POLICY)
    assert (decision.farm_workers, decision.action) == (expected, action), decision.reason


def test_split_across_farms_rounds_up() -> None:
    decision = decide(100, 4, 4, POLICY, farms=3)
    assert decision.farm_workers == 10 and decision.per_farm == 4


def test_reason_names_the_figures() -> None:
    decision = decide(1000, 4, 4, POLICY)
    assert "queue 1000 over 4 workers" in decision.reason and "2..16 workers" in decision.reason
    assert decision.pressure == 25.0 and decision.farm_workers == 16


def test_never_below_the_busy_workers() -> None:
    # Queue empty, 6 of 8 busy: scaling down removes idle workers only.
    assert decide(0, 8, 6, POLICY).farm_workers == 7
    assert decide(0, 7, 7, POLICY).farm_workers == 7


def test_same_rule_as_the_pool() -> None:
    from streamgate.farm.scaling import desired_workers

    for queue in (0, 5, 40, 99, 100, 400):
        for workers in (0, 1, 4, 16):
            for busy in {0, workers}:
                assert decide(queue, workers, busy, POLICY).farm_workers == desired_workers(
                    POLICY, queue_length=queue, workers=workers, busy=busy)


def test_bad_figures_are_bounded() -> None:
    decision = decide(-5, -1, 99, POLICY)
    assert decision.queue_length == 0 and decision.current_workers == 0 and decision.active_workers == 0
    assert decision.farm_workers == POLICY.min_workers

"""Recurring queue bursts (clumped arrivals) are demand; a single burst is a backlog."""

from __future__ import annotations

from gpufleet.api.pool import ServingPoolSpec
from gpufleet.planner import Reason, plan_fleet
from gpufleet.planner.bursts import (
    RECUR_COUNT,
    RECUR_SECONDS,
    BurstMemory,
    observe,
    recurring_queue,
)
from gpufleet.planner.types import (
    NodePoolKey,
    PlannerState,
    PoolObservation,
    PoolPlan,
    Snapshot,
    frozen_map,
)

from .builders import fleet, key, pool, provider


def _readings(queues: list[float], every: float = 15.0) -> BurstMemory:
    memory = BurstMemory()
    for i, queue in enumerate(queues):
        memory = observe(memory, i * every, queue)
    return memory


def test_one_burst_is_not_a_pattern() -> None:
    memory = _readings([0, 40, 30, 10, 0, 0, 0])

    assert len(memory.peaks) == 1 and memory.peaks[0][1] == 40
    assert recurring_queue(memory, 100.0) is None


def test_bursts_that_recur_size_for_a_typical_one_not_the_largest() -> None:
    memory = _readings([0, 30, 0, 50, 0, 400, 0, 40, 0])

    assert len(memory.peaks) == 4
    assert recurring_queue(memory, 120.0) == 50  # the 400 outlier does not size the pool


def test_bursts_are_forgotten_once_they_stop_recurring() -> None:
    memory = _readings([0, 30, 0, 50, 0, 40, 0])

    assert recurring_queue(memory, 90.0) == 40
    assert recurring_queue(memory, 90.0 + RECUR_SECONDS) is None


def test_a_queue_that_never_empties_is_one_burst() -> None:
    memory = _readings([5, 50, 500, 5000, 4000])

    assert len(memory.peaks) == 1 and recurring_queue(memory, 60.0) is None


def _chat() -> ServingPoolSpec:
    return pool(
        queue={"query": "q", "targetPerReplica": 1000, "arrivalRateQuery": "a"},
        serviceRates=[{"gpuType": "H100", "requestsPerMinute": 600}],  # 10 req/s a replica
        slo={"queueWaitSeconds": 2, "targetPercent": 99},
        behavior={"scaleUp": {"policies": [{"type": "Pods", "value": 100, "periodSeconds": 15}]}},
    )


def _replay(queues: list[float]) -> PoolPlan:
    """20 req/s on average, arriving as the queue readings say, on 4 replicas."""
    f = fleet({"model": _chat()}, {"p": provider()})
    state = PlannerState()
    replicas = frozen_map({NodePoolKey("p", "h100"): 4})
    plan = None
    for i, queue in enumerate(queues):
        seen = PoolObservation(queue, 20.0, replicas, ready_replicas=4)
        result = plan_fleet(f, Snapshot(frozen_map({key("model"): seen})), state, i * 15.0)
        state, plan = result.state, result.pools[key("model")]
    assert plan is not None
    return plan


def test_recurring_bursts_buy_the_replicas_to_serve_one_within_the_slo() -> None:
    clumped = _replay([0, 200, 0, 180, 0, 220, 0, 200, 0])
    smooth = _replay([0] * 9)

    assert Reason.SIZED_FOR_BURSTS in clumped.reasons
    assert clumped.recommended_replicas >= 10  # 200 requests within 2 s at 10 req/s each
    assert smooth.recommended_replicas < 5
    assert RECUR_COUNT <= 4

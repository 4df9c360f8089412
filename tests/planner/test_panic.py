"""A queue that grows past the SLO while every replica is busy: the model was wrong, so the
pool asks at once for what the queue shows, and for nodes that clear the backlog in time."""

from __future__ import annotations

from gpufleet.api.pool import ServingPoolSpec
from gpufleet.planner import FleetPlan, NodePoolKey, NodePoolObservation, Reason, plan_fleet
from gpufleet.planner.demand import demand
from gpufleet.planner.types import PoolObservation, Settings, frozen_map

from .builders import EMPTY, fleet, key, observe, pool, provider

H100 = NodePoolKey("p", "h100")
ONE_NODE = {("p", "h100"): NodePoolObservation(ready_nodes=1, target_nodes=1)}


def _chat() -> ServingPoolSpec:
    """10 requests/s per replica, a 2 s SLO, and HPA's default scale-up policies (double or
    add 4 every 15 s)."""
    return pool(
        queue={"query": "q", "targetPerReplica": 1000, "arrivalRateQuery": "a"},
        serviceRates=[{"gpuType": "H100", "requestsPerMinute": 600}],
        slo={"queueWaitSeconds": 2, "targetPercent": 99},
    )


def _step(spec: ServingPoolSpec, readings: int) -> FleetPlan:
    """A sudden step: 4 busy replicas on one node serve 40 requests/s, 100 arrive; the
    minute's arrival rate still reads 30 while the queue grows by 60 every second, read
    every 15 s."""
    f = fleet({"chat": spec}, {"p": provider()})
    state, queue = EMPTY, 200.0
    for i in range(readings):
        seen = observe({"chat": queue}, {"chat": {("p", "h100"): 4}}, ONE_NODE, {"chat": 30.0})
        plan = plan_fleet(f, seen, state, i * 15.0)
        state, queue = plan.state, queue + 60.0 * 15
    return plan


def test_a_queue_growing_past_the_slo_asks_for_every_replica_at_once() -> None:
    plan = _step(_chat(), readings=2)
    chat = plan.pools[key()]

    assert Reason.QUEUE_GROWING in chat.reasons
    assert Reason.LIMITED_BY_RATE not in chat.reasons  # the policies would allow 8
    # 72 requests/s seen arriving (40 served, the queue's growth) and 1,100 queued to clear
    # within the SLO: 63 replicas, asked for and given nodes in one step, not by doubling.
    assert chat.desired_replicas == chat.recommended_replicas == 63
    assert plan.node_pools[H100].desired_nodes == 8


def test_a_backlog_seen_once_still_scales_up_by_the_policies() -> None:
    # One reading: the queue may be a burst that existing replicas clear, not a step.
    plan = _step(_chat(), readings=1)
    chat = plan.pools[key()]

    assert Reason.QUEUE_GROWING not in chat.reasons
    assert Reason.LIMITED_BY_RATE in chat.reasons
    assert chat.desired_replicas == 8


def test_nodes_bought_in_a_panic_clear_the_projected_backlog_within_the_slo() -> None:
    # 100 queued, growing by 10/s over 4 busy replicas, nodes 345 s away: by the time they
    # serve, 3,550 wait, and every request behind them misses until they are cleared.
    seen = PoolObservation(100.0, 30.0, frozen_map({H100: 4}), ready_replicas=4)
    needed = demand(_chat(), seen, None, 345.0, 0.0, Settings(), growth=10.0)

    assert needed is not None and needed.panic
    assert needed.lasting_replicas == 183  # (40 + 10 + 3,550 / 2 s) / 10 per replica


def test_a_disabled_scale_up_holds_even_while_the_queue_grows() -> None:
    spec = pool(
        queue={"query": "q", "targetPerReplica": 1000, "arrivalRateQuery": "a"},
        serviceRates=[{"gpuType": "H100", "requestsPerMinute": 600}],
        slo={"queueWaitSeconds": 2, "targetPercent": 99},
        behavior={"scaleUp": {"selectPolicy": "Disabled"}},
    )
    chat = _step(spec, readings=2).pools[key()]

    assert Reason.QUEUE_GROWING in chat.reasons
    assert chat.desired_replicas == 4


def test_a_pools_own_scale_up_policies_hold_even_while_the_queue_grows() -> None:
    # Only the defaults give way: a rate the pool's owner chose is theirs to keep.
    spec = pool(
        queue={"query": "q", "targetPerReplica": 1000, "arrivalRateQuery": "a"},
        serviceRates=[{"gpuType": "H100", "requestsPerMinute": 600}],
        slo={"queueWaitSeconds": 2, "targetPercent": 99},
        behavior={"scaleUp": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 15}]}},
    )
    chat = _step(spec, readings=2).pools[key()]

    assert Reason.QUEUE_GROWING in chat.reasons
    assert Reason.LIMITED_BY_RATE in chat.reasons
    assert chat.desired_replicas <= 4 + 2 * 2

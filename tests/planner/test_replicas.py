"""Replicas from queue depth, the queueing model, activation and bounds."""

from __future__ import annotations

from gpufleet.api import ServingPoolSpec
from gpufleet.planner import NodePoolObservation, Reason, plan_fleet
from gpufleet.planner.demand import erlang_c_servers
from gpufleet.planner.types import FleetPlan, NodePoolKey

from .builders import EMPTY, fleet, key, observe, pool, provider

FAST_UP = {
    "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 1000, "periodSeconds": 15}]}}
}


def test_desired_replicas_are_queue_over_target_rounded_up() -> None:
    plan = plan_fleet(
        fleet({"chat": pool(**FAST_UP)}, {"p": provider()}), observe({"chat": 41}), EMPTY, 0.0
    )
    assert plan.pools[key()].desired_replicas == 5


def test_replicas_are_clamped_to_max_with_reason() -> None:
    spec = pool(maxReplicas=3, **FAST_UP)
    plan = plan_fleet(fleet({"chat": spec}, {"p": provider()}), observe({"chat": 1000}), EMPTY, 0.0)
    assert plan.pools[key()].desired_replicas == 3
    assert Reason.LIMITED_BY_MAX in plan.pools[key()].reasons


def test_never_below_min_replicas() -> None:
    spec = pool(minReplicas=2)
    plan = plan_fleet(fleet({"chat": spec}, {"p": provider()}), observe({"chat": 0}), EMPTY, 0.0)
    assert plan.pools[key()].desired_replicas == 2


def test_scale_from_zero_waits_for_the_activation_threshold() -> None:
    spec = pool(minReplicas=0, queue={"activationThreshold": 5})
    f = fleet({"chat": spec}, {"p": provider()})
    assert plan_fleet(f, observe({"chat": 5}), EMPTY, 0.0).pools[key()].desired_replicas == 0
    assert plan_fleet(f, observe({"chat": 6}), EMPTY, 0.0).pools[key()].desired_replicas == 1


def test_erlang_c_matches_a_hand_computed_case() -> None:
    # λ=1/s, μ=0.5/s: load 2. With 3 servers P(wait>0)=4/9; tail at 1 s = 4/9·e^-0.5 = 0.27.
    assert erlang_c_servers(1.0, 0.5, 1.0, 0.70) == 3
    assert erlang_c_servers(1.0, 0.5, 1.0, 0.99) > 3


def test_queueing_model_sizes_for_the_wait_slo_when_arrivals_are_known() -> None:
    spec = pool(
        slo={"queueWaitSeconds": 5, "targetPercent": 99},
        serviceRates=[{"gpuType": "H100", "requestsPerMinute": 60}],
        queue={"targetPerReplica": 1000},
        **FAST_UP,
    )
    f = fleet({"chat": spec}, {"p": provider()})
    plan = plan_fleet(f, observe({"chat": 0}, arrivals={"chat": 20.0}), EMPTY, 0.0)
    # 20 req/s at 1 req/s per replica needs more than 20 replicas to keep waits short.
    assert plan.pools[key()].desired_replicas > 20


def test_missing_metrics_hold_capacity_and_never_scale_down() -> None:
    f = fleet({"chat": pool()}, {"p": provider()})
    running = {"chat": {("p", "h100"): 6}}
    nodes = {("p", "h100"): NodePoolObservation(ready_nodes=1, target_nodes=1)}
    plan = plan_fleet(f, observe({"chat": None}, running, nodes), EMPTY, 0.0)
    assert plan.pools[key()].desired_replicas == 6
    assert Reason.METRICS_UNAVAILABLE in plan.pools[key()].reasons
    assert plan.node_pools[next(iter(plan.node_pools))].desired_nodes == 1


def test_nan_queue_is_treated_as_missing() -> None:
    f = fleet({"chat": pool()}, {"p": provider()})
    plan = plan_fleet(f, observe({"chat": float("nan")}, {"chat": {("p", "h100"): 3}}), EMPTY, 0.0)
    assert plan.pools[key()].desired_replicas == 3
    assert not plan.pools[key()].metrics_available


def _image_pool() -> ServingPoolSpec:
    return pool(
        slo={"queueWaitSeconds": 30, "targetPercent": 99},
        serviceRates=[{"gpuType": "H100", "requestsPerMinute": 5}],
        queue={"targetPerReplica": 1000},
        modelLoadSeconds=30,
        **FAST_UP,
    )


def _plan_with_backlog(queue: float) -> FleetPlan:
    """One ready node of 8 GPUs with 4 replicas; arrivals 0.2/s (steady need about 5)."""
    f = fleet({"chat": _image_pool()}, {"p": provider()})
    running = {"chat": {("p", "h100"): 4}}
    nodes = {("p", "h100"): NodePoolObservation(ready_nodes=1, target_nodes=1)}
    return plan_fleet(f, observe({"chat": queue}, running, nodes, {"chat": 0.2}), EMPTY, 0.0)


def test_a_backlog_that_clears_before_a_boot_fills_existing_nodes_but_buys_none() -> None:
    # 120 queued at 5 requests/min per replica: clearing them within the 30 s SLO takes 51
    # replicas, but new nodes serve only after 330 s (boot and load); by then 7 suffice.
    plan = _plan_with_backlog(120)
    pool_plan = plan.pools[key()]
    assert pool_plan.desired_replicas == 8  # every GPU of the existing node
    assert pool_plan.unplaced_replicas == 0  # not short: nothing to throttle for
    assert Reason.BACKLOG_CLEARS_BEFORE_BOOT in pool_plan.reasons
    assert plan.node_pools[NodePoolKey("p", "h100")].desired_nodes == 1


def test_a_backlog_that_outlasts_a_boot_still_buys_nodes() -> None:
    # 3,000 queued: even over the 330 s lead they need about 110 replicas.
    plan = _plan_with_backlog(3000)
    assert plan.node_pools[NodePoolKey("p", "h100")].desired_nodes == 10  # maxNodes
    assert Reason.BACKLOG_CLEARS_BEFORE_BOOT not in plan.pools[key()].reasons

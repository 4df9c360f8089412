"""HPA-style behaviour: stabilization windows and rate policies."""

from __future__ import annotations

from gpufleet.planner import NodePoolObservation, Reason, plan_fleet

from .builders import EMPTY, fleet, key, node_pool, observe, pool, provider

NODES = {("p", "h100"): NodePoolObservation(ready_nodes=2, target_nodes=2)}


def test_scale_down_waits_for_the_stabilization_window() -> None:
    spec = pool(behavior={"scaleDown": {"stabilizationWindowSeconds": 300}})
    f = fleet({"chat": spec}, {"p": provider()})
    high = plan_fleet(f, observe({"chat": 100}, {"chat": {("p", "h100"): 10}}, NODES), EMPTY, 0.0)
    low = plan_fleet(
        f, observe({"chat": 10}, {"chat": {("p", "h100"): 10}}, NODES), high.state, 60.0
    )
    assert low.pools[key()].desired_replicas == 10
    assert Reason.HELD_BY_STABILIZATION in low.pools[key()].reasons
    later = plan_fleet(
        f, observe({"chat": 10}, {"chat": {("p", "h100"): 10}}, NODES), low.state, 301.0
    )
    assert later.pools[key()].desired_replicas == 1


def test_scale_up_is_bounded_by_the_pods_policy() -> None:
    spec = pool(
        behavior={"scaleUp": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}}
    )
    f = fleet({"chat": spec}, {"p": provider()})
    first = plan_fleet(f, observe({"chat": 100}, {"chat": {("p", "h100"): 1}}, NODES), EMPTY, 0.0)
    assert first.pools[key()].desired_replicas == 3
    second = plan_fleet(
        f, observe({"chat": 100}, {"chat": {("p", "h100"): 3}}, NODES), first.state, 10.0
    )
    assert second.pools[key()].desired_replicas == 3
    assert Reason.LIMITED_BY_RATE in second.pools[key()].reasons


def test_disabled_scale_down_never_removes_replicas() -> None:
    spec = pool(
        behavior={"scaleDown": {"selectPolicy": "Disabled", "stabilizationWindowSeconds": 0}}
    )
    f = fleet({"chat": spec}, {"p": provider()})
    plan = plan_fleet(f, observe({"chat": 0}, {"chat": {("p", "h100"): 5}}, NODES), EMPTY, 0.0)
    assert plan.pools[key()].desired_replicas == 5


def test_forecast_scales_ahead_of_a_steady_ramp() -> None:
    spec = pool(
        maxReplicas=1000,
        behavior={"scaleUp": {"policies": [{"type": "Pods", "value": 1000, "periodSeconds": 15}]}},
    )
    f = fleet({"chat": spec}, {"p": provider(node_pools=[node_pool(maxNodes=100)])})
    state = EMPTY
    plan = None
    for step in range(90):  # need grows by one replica every 10 s for 15 minutes
        need = 20 + step
        replicas = {"chat": {("p", "h100"): need}}
        plan = plan_fleet(f, observe({"chat": need * 10.0}, replicas), state, step * 10.0)
        state = plan.state
    assert plan is not None
    assert plan.pools[key()].recommended_replicas > 20 + 89
    assert Reason.SCALED_AHEAD_OF_FORECAST in plan.pools[key()].reasons


def test_short_history_falls_back_to_reactive() -> None:
    f = fleet({"chat": pool()}, {"p": provider()})
    plan = plan_fleet(f, observe({"chat": 30}, {"chat": {("p", "h100"): 3}}, NODES), EMPTY, 0.0)
    assert plan.pools[key()].recommended_replicas == 3


def test_noise_on_a_flat_signal_buys_no_capacity_ahead() -> None:
    spec = pool(maxReplicas=1000)
    f = fleet({"chat": spec}, {"p": provider(node_pools=[node_pool(maxNodes=100)])})
    state = EMPTY
    plan = None
    for step in range(90):
        need = 50 if step % 2 else 60
        replicas = {"chat": {("p", "h100"): 60}}
        plan = plan_fleet(f, observe({"chat": need * 10.0}, replicas), state, step * 10.0)
        state = plan.state
        assert Reason.SCALED_AHEAD_OF_FORECAST not in plan.pools[key()].reasons
    assert plan is not None
    assert plan.pools[key()].recommended_replicas <= 60

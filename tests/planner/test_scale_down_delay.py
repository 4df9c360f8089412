"""A node demand stops needing stays for the node pool's scale-down delay, then goes."""

from __future__ import annotations

from typing import Any

from gpufleet.planner import FleetPlan, NodePoolKey, NodePoolObservation, Reason, plan_fleet

from .builders import EMPTY, fleet, key, node_pool, observe, pool, provider

A = NodePoolKey("p", "h100")
TWO = {("p", "h100"): NodePoolObservation(ready_nodes=2, target_nodes=2)}


def _plans(delay: int | None, spares: bool = False) -> list[FleetPlan]:
    overrides: dict[str, Any] = {} if delay is None else {"scaleDownDelaySeconds": delay}
    f = fleet(
        {"chat": pool(warmSpares={"enabled": spares})},
        {"p": provider(node_pools=[node_pool(bootSeconds=300, **overrides)])},
    )
    busy = plan_fleet(f, observe({"chat": 160}, {"chat": {("p", "h100"): 16}}, TWO), EMPTY, 0.0)
    plans = [busy]
    state = busy.state
    # Demand falls at 60 s: the second node stays until 60 + 300 s.
    for now in (60.0, 359.0, 361.0):
        quiet = observe({"chat": 30}, {"chat": {("p", "h100"): 3}}, TWO)
        plan = plan_fleet(f, quiet, state, now)
        plans.append(plan)
        state = plan.state
    return plans


def test_an_unneeded_node_stays_for_the_boot_time_by_default() -> None:
    busy, soon, before, after = _plans(None)
    assert busy.node_pools[A].desired_nodes == 2
    assert soon.node_pools[A].desired_nodes == 2
    assert Reason.SCALE_DOWN_DELAYED in {n.reason for n in soon.node_pools[A].notes}
    assert before.node_pools[A].desired_nodes == 2
    assert after.node_pools[A].desired_nodes == 1


def test_a_zero_delay_removes_unneeded_nodes_at_once() -> None:
    _, soon, _, _ = _plans(0)
    assert soon.node_pools[A].desired_nodes == 1


def test_kept_nodes_run_warm_spares() -> None:
    _, soon, _, after = _plans(None, spares=True)
    assert soon.pools[key()].desired_replicas == 16
    assert soon.pools[key()].spare_replicas == 13
    assert after.pools[key()].desired_replicas == 8


def test_the_delay_never_brings_back_a_node_that_is_gone() -> None:
    f = fleet({"chat": pool()}, {"p": provider()})
    busy = plan_fleet(f, observe({"chat": 160}, {"chat": {("p", "h100"): 16}}, TWO), EMPTY, 0.0)
    one = {("p", "h100"): NodePoolObservation(ready_nodes=1, target_nodes=1)}
    plan = plan_fleet(f, observe({"chat": 30}, {"chat": {("p", "h100"): 3}}, one), busy.state, 60)
    assert plan.node_pools[A].desired_nodes == 1


def test_spares_leave_a_kept_node_before_the_node_goes() -> None:
    """The replicas demand needs carry the load alone while the node can still take the
    others back in a model load: spares that served until the node went hid a shortfall
    until a boot was the only way back."""
    _, soon, before, after = _plans(None, spares=True)
    assert soon.pools[key()].spare_replicas == 13
    # 359 s is within the delay's last two minutes: the node stays, idle.
    assert before.node_pools[A].desired_nodes == 2
    assert before.pools[key()].desired_replicas == 8
    (delayed,) = before.node_pools[A].notes
    assert delayed.reason == Reason.SCALE_DOWN_DELAYED and "1 without spares" in delayed.message
    assert after.node_pools[A].desired_nodes == 1


def test_a_short_delay_keeps_spares_for_its_first_half() -> None:
    _, soon, _, _ = _plans(100, spares=True)  # kept until 160 s; spares until 110 s
    assert soon.pools[key()].desired_replicas == 16
    f = fleet(
        {"chat": pool(warmSpares={"enabled": True})},
        {"p": provider(node_pools=[node_pool(bootSeconds=300, scaleDownDelaySeconds=100)])},
    )
    quiet = observe({"chat": 30}, {"chat": {("p", "h100"): 3}}, TWO)
    late = plan_fleet(f, quiet, soon.state, 111.0)
    assert late.node_pools[A].desired_nodes == 2
    assert late.pools[key()].desired_replicas == 8

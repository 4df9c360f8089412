"""Warm spares: idle GPUs on the nodes a plan keeps run extra replicas, and cost nothing else."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from gpufleet.api.pool import WarmSpares
from gpufleet.planner import Fleet, NodePoolObservation, PlannerState, Reason, plan_fleet
from gpufleet.planner.types import frozen_map

from .builders import EMPTY, budget, fleet, key, node_pool, observe, pool, provider
from .test_properties import COMMON, fleets, planned_watts, queues, snapshot_of

ON = {"warmSpares": {"enabled": True}}


def with_spares(f: Fleet) -> Fleet:
    pools = {
        k: p.model_copy(update={"warm_spares": WarmSpares(enabled=True)})
        for k, p in f.pools.items()
    }
    return dataclasses.replace(f, pools=frozen_map(pools))


NODE = {("p", "h100"): NodePoolObservation(ready_nodes=1, target_nodes=1)}


def test_idle_gpus_on_a_kept_node_run_spare_replicas() -> None:
    snapshot = observe({"chat": 30}, {"chat": {("p", "h100"): 3}}, NODE)
    plain = plan_fleet(fleet({"chat": pool()}, {"p": provider()}), snapshot, EMPTY, 0.0)
    spared = plan_fleet(fleet({"chat": pool(**ON)}, {"p": provider()}), snapshot, EMPTY, 0.0)
    chat = spared.pools[key()]
    assert plain.pools[key()].desired_replicas == 3
    assert chat.desired_replicas == 8  # the whole 8-GPU node
    assert chat.spare_replicas == 5
    assert Reason.WARM_SPARES in chat.reasons
    assert set(spared.node_pools) == set(plain.node_pools)
    for k, node_plan in spared.node_pools.items():
        assert node_plan.desired_nodes == plain.node_pools[k].desired_nodes


def test_spares_never_pass_max_replicas_or_the_power_cap() -> None:
    capped = fleet({"chat": pool(maxReplicas=5, **ON)}, {"p": provider()})
    snapshot = observe({"chat": 30}, {"chat": {("p", "h100"): 3}}, NODE)
    assert plan_fleet(capped, snapshot, EMPTY, 0.0).pools[key()].desired_replicas == 5
    few = fleet({"chat": pool(warmSpares={"enabled": True, "maxReplicas": 2})}, {"p": provider()})
    assert plan_fleet(few, snapshot, EMPTY, 0.0).pools[key()].spare_replicas == 2
    # 1 kW node overhead + 8 x 100 W idle + 3 busy GPUs at +600 W: 3.6 kW; room for two more.
    powered = fleet({"chat": pool(**ON)}, {"p": provider()}, {"site": budget(5)})
    plan = plan_fleet(powered, snapshot, EMPTY, 0.0)
    assert plan.pools[key()].desired_replicas == 5
    assert plan.budgets["site"].planned_watts <= 5000


def test_idle_dry_run_blind_and_unasked_pools_get_no_spares() -> None:
    pools = {
        "idle": pool(minReplicas=0, **ON),
        "dry": pool(mode="DryRun", **ON),
        "blind": pool(**ON),
        "off": pool(),
    }
    f = fleet(pools, {"p": provider()})
    snapshot = observe(
        {"idle": 0, "dry": 30, "blind": None, "off": 10},
        {"dry": {("p", "h100"): 2}, "blind": {("p", "h100"): 2}, "off": {("p", "h100"): 1}},
        NODE,
    )
    plan = plan_fleet(f, snapshot, EMPTY, 0.0)
    assert all(p.spare_replicas == 0 for p in plan.pools.values())
    assert plan.pools[key("idle")].desired_replicas == 0


def test_the_higher_priority_pool_gets_the_spare_room_first() -> None:
    pools = {"chat": pool(**ON), "image": pool(**ON)}
    f = fleet(pools, {"p": provider()}, None, {"chat": 1000, "image": 1})
    snapshot = observe(
        {"chat": 20, "image": 20},
        {"chat": {("p", "h100"): 2}, "image": {("p", "h100"): 2}},
        NODE,
    )
    plan = plan_fleet(f, snapshot, EMPTY, 0.0)
    assert plan.pools[key("chat")].spare_replicas == 4
    assert plan.pools[key("image")].spare_replicas == 0


def test_spares_on_a_secondary_stay_within_burst_max_replicas() -> None:
    pools = {"chat": pool(burst={"enabled": True, "maxReplicas": 3}, **ON)}
    providers = {
        "p": provider(node_pools=[node_pool(maxNodes=0)]),
        "s": provider(role="Secondary", jurisdiction="NL"),
    }
    nodes = {("s", "h100"): NodePoolObservation(ready_nodes=1, target_nodes=1)}
    snapshot = observe({"chat": 20}, {"chat": {("s", "h100"): 2}}, nodes)
    plan = plan_fleet(fleet(pools, providers), snapshot, EMPTY, 0.0)
    assert plan.pools[key()].burst_replicas == 3
    assert plan.pools[key()].desired_replicas == 3


@COMMON
@given(st.data())
def test_spares_add_replicas_but_no_node_and_break_no_bound(data: st.DataObject) -> None:
    f = data.draw(fleets())
    snapshot = snapshot_of(data.draw(queues(f)))
    plain = plan_fleet(f, snapshot, PlannerState(), 0.0)
    spared = plan_fleet(with_spares(f), snapshot, PlannerState(), 0.0)
    for k, node_plan in spared.node_pools.items():
        assert node_plan.desired_nodes == plain.node_pools[k].desired_nodes
    for name, spec in f.budgets.items():
        allowed = spec.cap_kilowatts * 1000 * (1 - spec.headroom_percent / 100)
        assert planned_watts(f, spared, name) <= allowed + 1e-6
    for k, pool_plan in spared.pools.items():
        spec = f.pools[k]
        before = plain.pools[k]
        assert pool_plan.desired_replicas == before.desired_replicas + pool_plan.spare_replicas
        assert pool_plan.desired_replicas <= spec.max_replicas
        if spec.burst.max_replicas is not None:
            assert pool_plan.burst_replicas <= max(spec.burst.max_replicas, before.burst_replicas)
        for node_pool_key, count in before.placements.items():
            assert pool_plan.placements[node_pool_key] >= count

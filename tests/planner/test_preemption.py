"""Issue 10: a higher-priority pool that needs the GPUs a lower one holds, with no new node to
come, preempts exactly that many of the lower pool's replicas, and says so per node pool."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.planner import NodePoolKey, NodePoolObservation, Reason, plan_fleet

from .builders import EMPTY, fleet, key, node_pool, observe, pool, provider

FAST = {
    "behavior": {
        "scaleUp": {"policies": [{"type": "Pods", "value": 1000, "periodSeconds": 15}]},
        "scaleDown": {"stabilizationWindowSeconds": 0},
    }
}
A = NodePoolKey("a", "h100")
B = NodePoolKey("a", "l40")
PRIORITIES = {"high": 1000, "low": 1}  # the platform's PriorityClasses, not the specs
TWO_NODES = {("a", "h100"): NodePoolObservation(ready_nodes=2, target_nodes=2)}


def _fleet(max_nodes: int = 2, **extra_node_pools: Any) -> Any:
    pools = {"high": pool(**FAST), "low": pool(**FAST)}
    node_pools = [node_pool(maxNodes=max_nodes)]
    if extra_node_pools:
        node_pools.append(node_pool("l40", **extra_node_pools))
    return fleet(pools, {"a": provider(node_pools=node_pools)}, None, PRIORITIES)


def test_a_high_priority_surge_onto_a_full_node_pool_preempts_exactly_what_it_takes() -> None:
    snapshot = observe(
        {"high": 40, "low": 160},  # 4 and 16 replicas wanted; 16 GPUs exist, none can come
        replicas={"low": {("a", "h100"): 16}},
        nodes=TWO_NODES,
    )
    plan = plan_fleet(_fleet(), snapshot, EMPTY, 0.0)
    high, low = plan.pools[key("high")], plan.pools[key("low")]
    assert high.placements == {A: 4}
    assert low.placements == {A: 12}
    assert low.preempted == {A: 4}
    assert Reason.PREEMPTED in low.reasons
    assert "yield to higher-priority pools" in next(
        n.message for n in low.notes if n.reason == Reason.PREEMPTED
    )
    assert not high.preempted


def test_a_pool_scaling_itself_down_is_not_preempted() -> None:
    snapshot = observe(
        {"high": 40, "low": 80},  # low wants 8 of its 16: room for both
        replicas={"low": {("a", "h100"): 16}},
        nodes=TWO_NODES,
    )
    low = plan_fleet(_fleet(), snapshot, EMPTY, 0.0).pools[key("low")]
    assert low.desired_replicas == 8
    assert not low.preempted
    assert Reason.PREEMPTED not in low.reasons


def test_only_the_replicas_the_room_lacks_are_preempted_when_the_pool_also_shrinks() -> None:
    snapshot = observe(
        {"high": 80, "low": 100},  # high takes 8 of 16 GPUs; low wants 10 of its 16
        replicas={"low": {("a", "h100"): 16}},
        nodes=TWO_NODES,
    )
    low = plan_fleet(_fleet(), snapshot, EMPTY, 0.0).pools[key("low")]
    assert low.placements == {A: 8}
    assert low.preempted == {A: 2}  # 6 it gave up itself, 2 the higher pool took


def test_replicas_placed_again_on_new_nodes_still_leave_the_existing_ones() -> None:
    snapshot = observe(
        {"high": 40, "low": 160}, replicas={"low": {("a", "h100"): 16}}, nodes=TWO_NODES
    )
    low = plan_fleet(_fleet(max_nodes=4), snapshot, EMPTY, 0.0).pools[key("low")]
    assert low.placements == {A: 16}  # 12 stay, 4 restart on a new node
    assert low.preempted == {A: 4}  # the higher pool must not wait a boot for them
    note = next(n for n in low.notes if n.reason == Reason.PREEMPTED)
    assert "4 of them restart on new nodes" in note.message


def test_preempted_replicas_that_move_to_another_node_pool_still_leave_the_full_one() -> None:
    snapshot = observe(
        {"high": 40, "low": 160}, replicas={"low": {("a", "h100"): 16}}, nodes=TWO_NODES
    )
    plan = plan_fleet(_fleet(gpuType="H100", maxNodes=1), snapshot, EMPTY, 0.0)
    low = plan.pools[key("low")]
    assert low.placements == {A: 12, B: 4}
    assert low.preempted == {A: 4}


def test_a_pool_alone_is_never_preempted() -> None:
    f = fleet({"low": pool(**FAST)}, {"a": provider()}, None, {"low": 1})
    snapshot = observe({"low": 500}, replicas={"low": {("a", "h100"): 16}}, nodes=TWO_NODES)
    assert not plan_fleet(f, snapshot, EMPTY, 0.0).pools[key("low")].preempted


def test_a_dry_run_pool_reports_no_preemption_to_act_on() -> None:
    pools = {
        "high": pool(**FAST),
        "low": pool(mode="DryRun", **FAST),
    }
    f = fleet(pools, {"a": provider(node_pools=[node_pool(maxNodes=2)])}, None, PRIORITIES)
    snapshot = observe(
        {"high": 40, "low": 160}, replicas={"low": {("a", "h100"): 16}}, nodes=TWO_NODES
    )
    assert not plan_fleet(f, snapshot, EMPTY, 0.0).pools[key("low")].preempted


@st.composite
def _fleets(draw: st.DrawFn) -> tuple[Any, Any, list[str], dict[str, int]]:
    """Pools of distinct priorities and sizes on node pools whose existing nodes hold
    every observed replica (a consistent observation); demand is free."""
    node_pools = [
        node_pool(name, maxNodes=draw(st.integers(1, 6)), gpusPerNode=8)
        for name in ("h100", "l40")[: draw(st.integers(1, 2))]
    ]
    existing = {("a", np["name"]): draw(st.integers(0, np["maxNodes"])) for np in node_pools}
    count = draw(st.integers(2, 4))
    names = [f"p{i}" for i in range(count)]
    priorities = draw(st.permutations(list(range(count))))
    gpus = {n: draw(st.sampled_from([1, 2, 3, 4, 8])) for n in names}
    free = {np: float(nodes) for np, nodes in existing.items()}
    replicas: dict[str, dict[tuple[str, str], int]] = {}
    for name in names:
        share = 1.0 / (8 // gpus[name])
        for np_key in existing:
            most = math.floor(free[np_key] / share + 1e-9)
            placed = draw(st.integers(0, most))
            free[np_key] -= placed * share
            if placed:
                replicas.setdefault(name, {})[np_key] = placed
    queues = {n: float(draw(st.integers(0, 400))) for n in names}
    pools = {n: pool(gpusPerReplica=gpus[n], maxReplicas=200, **FAST) for n in names}
    ranks = dict(zip(names, priorities, strict=True))
    f = fleet(pools, {"a": provider(node_pools=node_pools)}, None, ranks)
    nodes = {
        np_key: NodePoolObservation(ready_nodes=n, target_nodes=n) for np_key, n in existing.items()
    }
    return f, observe(queues, replicas=replicas, nodes=nodes), names, gpus


@settings(max_examples=200, deadline=None)
@given(_fleets())
def test_no_pool_loses_more_than_the_higher_priority_pools_newly_placed(
    case: tuple[Any, Any, list[str], dict[str, int]],
) -> None:
    f, snapshot, names, gpus = case
    plan = plan_fleet(f, snapshot, EMPTY, 0.0)
    order = sorted(names, key=lambda n: -f.priority(key(n)))

    def share(name: str) -> float:
        return 1.0 / (8 // gpus[name])

    for index, name in enumerate(order):
        for np_key, lost in plan.pools[key(name)].preempted.items():
            current = snapshot.pools[key(name)].replicas.get(np_key, 0)
            assert 0 < lost <= current
            newly = sum(
                max(
                    0,
                    plan.pools[key(q)].placements.get(np_key, 0)
                    - snapshot.pools[key(q)].replicas.get(np_key, 0),
                )
                * share(q)
                for q in order[:index]
            )
            # In node shares, rounded up to one whole replica of the pool that yields:
            # the same count when the pools' replicas are the same size.
            assert lost <= math.ceil(newly / share(name) - 1e-6)
    again = plan_fleet(f, snapshot, EMPTY, 0.0)
    assert {k: p.preempted for k, p in again.pools.items()} == {
        k: p.preempted for k, p in plan.pools.items()
    }

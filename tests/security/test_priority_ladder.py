"""Threat: a tenant raises its pool's priority to take GPUs from other teams, or wins every
tie by its namespace's name. A pool's priority is the platform's (the PriorityClass its
pods run with, allowed by a TenantPolicy: Fleet.priorities); only strictly higher
priorities preempt, and equal ones share what is short max-min by namespace: a larger ask,
a chosen name or more pools buy no larger share."""

from __future__ import annotations

from pathlib import Path

import yaml

from gpufleet.api import parse_pool
from gpufleet.planner import NodePoolKey, PlannerState, PoolKey, Reason, plan_fleet

from .planning import fleet, pool, provider, snapshot

ROOT = Path(__file__).resolve().parents[2]
H100 = NodePoolKey("a", "h100")
A, B = PoolKey("team-a", "model"), PoolKey("team-b", "model")


def test_a_pool_spec_has_no_priority_to_raise() -> None:
    spec = {
        "scaleTargetRef": {"name": "model"},
        "gpuTypes": ["H100"],
        "queue": {"query": "q", "targetPerReplica": 10},
        "maxReplicas": 16,
        "priority": 1_000_000,
    }
    parsed = parse_pool(spec)
    assert parsed.value is None
    assert any(e.field == "spec.priority" for e in parsed.errors)
    crd = yaml.safe_load((ROOT / "crds" / "gpufleet.io_servingpools.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "priority" not in schema["properties"]["spec"]["properties"]  # pruned by the API


def test_a_surge_at_default_priority_takes_nothing_from_a_running_pool() -> None:
    """The attack of issue 17: the attacker's pool at 1,000,000 took 16 of 16. Its spec can
    no longer say so, and at the platform's equal priority it takes none of them."""
    victim, attacker = B, A
    plan = plan_fleet(
        fleet({victim: pool(), attacker: pool()}, {"a": provider()}),
        snapshot({victim: 160, attacker: 10_000}, {victim: {H100: 16}}, {H100: 2}),
        PlannerState(),
        0.0,
    )
    assert plan.pools[victim].placements == {H100: 16}
    assert not plan.pools[victim].preempted
    assert plan.pools[attacker].desired_replicas == 0


def test_a_pool_the_platform_ranks_higher_preempts() -> None:
    high, low = A, B
    plan = plan_fleet(
        fleet({high: pool(), low: pool()}, {"a": provider()}, priorities={high: 1001, low: 1000}),
        snapshot({high: 40, low: 160}, {low: {H100: 16}}, {H100: 2}),
        PlannerState(),
        0.0,
    )
    assert plan.pools[high].placements == {H100: 4}
    assert plan.pools[low].preempted == {H100: 4}
    assert Reason.PREEMPTED in plan.pools[low].reasons


def test_only_strictly_higher_priority_preempts() -> None:
    for first, second in ((A, B), (B, A)):  # whichever name sorts first
        plan = plan_fleet(
            fleet(
                {first: pool(), second: pool()},
                {"a": provider()},
                priorities={first: 500, second: 500},
            ),
            snapshot({first: 40, second: 160}, {second: {H100: 16}}, {H100: 2}),
            PlannerState(),
            0.0,
        )
        assert not plan.pools[second].preempted
        assert plan.pools[second].placements == {H100: 16}
        assert plan.pools[first].desired_replicas == 0


def _shares(names: tuple[PoolKey, PoolKey], queues: tuple[float, float]) -> tuple[int, int]:
    """Replicas each pool gets from 16 GPUs (two 8-GPU nodes, no more can come)."""
    keys = dict(zip(names, queues, strict=True))
    plan = plan_fleet(
        fleet({k: pool() for k in names}, {"a": provider()}),
        snapshot(keys, nodes={H100: 2}),
        PlannerState(),
        0.0,
    )
    first, second = (plan.pools[k].desired_replicas for k in names)
    return first, second


def test_equal_priorities_share_what_is_short_whatever_their_names() -> None:
    # Each asks for 16; 16 GPUs in all: half each, in either naming.
    assert _shares((A, B), (160, 160)) == (8, 8)
    assert _shares((B, A), (160, 160)) == (8, 8)


def test_a_larger_ask_buys_no_larger_share() -> None:
    # 24 and 8 asked, 16 there: the smaller ask is met, the larger gets the rest.
    assert _shares((A, B), (240, 80)) == (8, 8)
    assert _shares((B, A), (240, 80)) == (8, 8)
    # An ask inflated to the pool's maximum (a query answering 10,000) gets no more.
    assert _shares((A, B), (10_000, 160)) == (8, 8)


def test_splitting_demand_over_many_pools_buys_no_larger_share() -> None:
    """Review finding: team-a's 16 pools asking 1 each took all 16 GPUs from team-b's one
    pool asking 16. Equal priorities share by namespace first."""
    many = {PoolKey("team-a", f"shard-{i}"): 10.0 for i in range(16)}
    plan = plan_fleet(
        fleet({**{k: pool() for k in many}, B: pool()}, {"a": provider()}),
        snapshot({**many, B: 160}, nodes={H100: 2}),
        PlannerState(),
        0.0,
    )
    team_a = sum(plan.pools[k].desired_replicas for k in many)
    assert (team_a, plan.pools[B].desired_replicas) == (8, 8)


def test_no_name_wins_a_tie_however_it_is_chosen() -> None:
    """The turn order is a hash of the pool's key, which a tenant can search for a name that
    goes first; going first buys nothing when each turn's slice is small."""
    for i in range(40):
        attacker = PoolKey("team-a", f"chat-{i}")
        assert _shares((attacker, B), (160, 160)) == (8, 8), attacker


def test_a_pool_that_cannot_use_the_room_holds_no_one_back() -> None:
    # B asks for GPUs no node pool has: A gets all it asks.
    other = pool(gpuTypes=["B200"])
    plan = plan_fleet(
        fleet({A: pool(), B: other}, {"a": provider()}),
        snapshot({A: 160, B: 160}, nodes={H100: 2}),
        PlannerState(),
        0.0,
    )
    assert plan.pools[A].desired_replicas == 16
    assert plan.pools[B].desired_replicas == 0


def test_equal_priorities_that_no_longer_fit_lose_alike_and_evict_no_one() -> None:
    """Review finding: with the nodes too small for what both run (a node lost, replicas
    in flight), the first pool in turn kept everything and the drain evicted the other's
    pods. Now each keeps a like share, and no drain is asked of an equal priority."""
    from gpufleet.reconcilers.drain import request_for

    for first, second in ((A, B), (B, A)):
        built = fleet({first: pool(), second: pool()}, {"a": provider(max_nodes=1)})
        seen = snapshot({first: 80, second: 80}, {first: {H100: 8}, second: {H100: 8}}, {H100: 1})
        plan = plan_fleet(built, seen, PlannerState(), 0.0)
        assert [plan.pools[k].placements.get(H100, 0) for k in (first, second)] == [4, 4]
        assert request_for(first, plan, built, seen) is None
        assert request_for(second, plan, built, seen) is None


def test_replicas_a_tenant_adds_beyond_the_plan_hold_no_gpus() -> None:
    """Review finding: raising the Deployment's spec.replicas past the plan (one pod bound,
    seven pending) counted all eight as running, so they held GPUs others run on."""
    from gpufleet.reconcilers.cache import PodEntry, WorkloadEntry
    from gpufleet.reconcilers.observe import replicas_by_node_pool
    from gpufleet.reconcilers.selectors import from_label_selector

    selector = from_label_selector({"matchLabels": {"app": "model"}})
    workload = WorkloadEntry("team-a", "Deployment", "model", 8, selector, "")
    bound = PodEntry("team-a", "model-1", {"app": "model"}, "node-1", False)
    pending = [PodEntry("team-a", f"model-{i}", {"app": "model"}, None, False) for i in range(7)]
    counts, _ = replicas_by_node_pool(
        workload, {"node-1": H100}, {H100: 2}, selected_pods=[bound, *pending]
    )
    assert counts == {H100: 2}  # the one bound and the one the last plan put in flight

"""Placement across node pools and providers, burst under the data policy, back-off."""

from __future__ import annotations

from gpufleet.planner import (
    CapacityError,
    CapacityErrorKind,
    NodePoolKey,
    NodePoolObservation,
    Reason,
    plan_fleet,
)

from .builders import EMPTY, fleet, key, node_pool, observe, pool, provider

FAST = {
    "behavior": {
        "scaleUp": {"policies": [{"type": "Pods", "value": 1000, "periodSeconds": 15}]},
        "scaleDown": {"stabilizationWindowSeconds": 0},
    }
}
BURSTY = {**FAST, "burst": {"enabled": True}}


def primary(max_nodes: int = 10, **kw: object) -> object:
    return provider(node_pools=[node_pool(maxNodes=max_nodes)], **kw)


def test_primary_is_filled_before_secondary() -> None:
    f = fleet(
        {"chat": pool(**BURSTY)},
        {"a": primary(), "b": provider(role="Secondary", jurisdiction="NL")},
    )
    plan = plan_fleet(f, observe({"chat": 200}), EMPTY, 0.0)
    assert plan.pools[key()].replicas_by_provider() == {"a": 20}


def test_overflow_bursts_to_an_allowed_secondary_when_the_quota_binds() -> None:
    f = fleet(
        {"chat": pool(**BURSTY)},
        {"a": provider(gpuQuota=16), "b": provider(role="Secondary", jurisdiction="NL")},
    )
    plan = plan_fleet(f, observe({"chat": 300}), EMPTY, 0.0)
    assert plan.pools[key()].replicas_by_provider() == {"a": 16, "b": 14}
    assert Reason.LIMITED_BY_QUOTA in plan.pools[key()].reasons
    assert Reason.BURST_ACTIVE in plan.pools[key()].reasons


def test_burst_never_goes_to_a_provider_the_data_policy_forbids() -> None:
    f = fleet(
        {"chat": pool(**BURSTY)},
        {"a": provider(gpuQuota=8), "us": provider(role="Secondary", jurisdiction="US")},
    )
    plan = plan_fleet(f, observe({"chat": 300}), EMPTY, 0.0)
    assert plan.pools[key()].replicas_by_provider() == {"a": 8}
    assert plan.pools[key()].unplaced_replicas == 22
    assert Reason.BURST_BLOCKED_BY_DATA_POLICY in plan.pools[key()].reasons


def test_pods_the_scheduler_put_where_the_data_policy_refuses_are_reported() -> None:
    # The US provider shares the cluster; the pool's pods carry no node affinity, so the
    # scheduler put two of them on its nodes. The plan never keeps them there, and says so.
    f = fleet(
        {"chat": pool(**BURSTY)},
        {"a": provider(), "us": provider(role="Secondary", jurisdiction="US")},
    )
    nodes = {("a", "h100"): NodePoolObservation(1, 1), ("us", "h100"): NodePoolObservation(1, 1)}
    running = {"chat": {("a", "h100"): 4, ("us", "h100"): 2}}
    plan = plan_fleet(f, observe({"chat": 60}, running, nodes), EMPTY, 0.0)
    pool_plan = plan.pools[key()]
    assert pool_plan.replicas_by_provider() == {"a": 6}
    note = next(n for n in pool_plan.notes if n.reason == Reason.OUTSIDE_DATA_POLICY)
    assert "2 on us/h100" in note.message and "US" in note.message
    allowed = {"chat": {("a", "h100"): 6}}
    compliant = plan_fleet(f, observe({"chat": 60}, allowed, nodes), EMPTY, 0.0)
    assert Reason.OUTSIDE_DATA_POLICY not in compliant.pools[key()].reasons


def test_unapproved_subprocessor_is_refused() -> None:
    f = fleet(
        {"chat": pool(**BURSTY)},
        {
            "a": provider(gpuQuota=8),
            "b": provider(role="Secondary", jurisdiction="NL", approved=False),
        },
    )
    plan = plan_fleet(f, observe({"chat": 300}), EMPTY, 0.0)
    assert "b" not in plan.pools[key()].replicas_by_provider()


def test_burst_disabled_pool_stays_on_primary_and_says_so() -> None:
    f = fleet(
        {"chat": pool(**FAST)},
        {"a": provider(gpuQuota=8), "b": provider(role="Secondary", jurisdiction="NL")},
    )
    plan = plan_fleet(f, observe({"chat": 300}), EMPTY, 0.0)
    assert plan.pools[key()].replicas_by_provider() == {"a": 8}
    assert Reason.BURST_DISABLED in plan.pools[key()].reasons


def test_free_gpus_on_existing_nodes_are_used_before_new_nodes() -> None:
    cheap_empty = node_pool("cheap", hourlyPriceCents=100)
    dear_running = node_pool("dear", hourlyPriceCents=90000)
    f = fleet({"chat": pool(**FAST)}, {"a": provider(node_pools=[cheap_empty, dear_running])})
    nodes = {("a", "dear"): NodePoolObservation(ready_nodes=1, target_nodes=1)}
    plan = plan_fleet(f, observe({"chat": 40}, {"chat": {("a", "dear"): 2}}, nodes), EMPTY, 0.0)
    assert dict(plan.pools[key()].placements) == {NodePoolKey("a", "dear"): 4}
    assert plan.node_pools[NodePoolKey("a", "cheap")].desired_nodes == 0


def test_cheaper_node_pool_is_preferred_for_new_nodes() -> None:
    f = fleet(
        {"chat": pool(**FAST)},
        {
            "a": provider(
                node_pools=[
                    node_pool("dear", hourlyPriceCents=90000),
                    node_pool("cheap", hourlyPriceCents=100),
                ]
            )
        },
    )
    plan = plan_fleet(f, observe({"chat": 40}), EMPTY, 0.0)
    assert dict(plan.pools[key()].placements) == {NodePoolKey("a", "cheap"): 4}


def test_spot_is_used_only_when_the_pool_allows_it() -> None:
    spot = node_pool("spot", capacityType="Spot", hourlyPriceCents=90000)
    f_no = fleet({"chat": pool(**FAST)}, {"a": provider(node_pools=[spot, node_pool("od")])})
    f_yes = fleet(
        {"chat": pool(allowSpot=True, **FAST)}, {"a": provider(node_pools=[spot, node_pool("od")])}
    )
    assert set(plan_fleet(f_no, observe({"chat": 40}), EMPTY, 0.0).pools[key()].placements) == {
        NodePoolKey("a", "od")
    }
    assert set(plan_fleet(f_yes, observe({"chat": 40}), EMPTY, 0.0).pools[key()].placements) == {
        NodePoolKey("a", "spot")
    }


def test_replicas_pack_by_gpus_per_replica() -> None:
    f = fleet({"llm": pool(gpusPerReplica=4, **FAST)}, {"a": provider()})
    plan = plan_fleet(f, observe({"llm": 50}), EMPTY, 0.0)
    assert plan.pools[key("llm")].desired_replicas == 5
    assert plan.node_pools[NodePoolKey("a", "h100")].desired_nodes == 3


def test_node_pool_max_nodes_holds() -> None:
    f = fleet({"chat": pool(**FAST)}, {"a": primary(max_nodes=2)})
    plan = plan_fleet(f, observe({"chat": 1000}), EMPTY, 0.0)
    assert plan.node_pools[NodePoolKey("a", "h100")].desired_nodes == 2
    assert Reason.LIMITED_BY_NODE_POOL_MAX in plan.pools[key()].reasons


def test_capacity_error_backs_off_and_moves_the_share_to_the_next_choice() -> None:
    f = fleet(
        {"chat": pool(**FAST)},
        {"a": provider(node_pools=[node_pool("first", hourlyPriceCents=1), node_pool("second")])},
    )
    error = CapacityError(CapacityErrorKind.INSUFFICIENT_CAPACITY, time=0.0)
    nodes = {("a", "first"): NodePoolObservation(ready_nodes=1, target_nodes=3, last_error=error)}
    plan = plan_fleet(f, observe({"chat": 240}, {"chat": {("a", "first"): 8}}, nodes), EMPTY, 10.0)
    assert plan.node_pools[NodePoolKey("a", "first")].desired_nodes == 1
    assert plan.pools[key()].placements[NodePoolKey("a", "second")] == 16
    assert Reason.CAPACITY_BACKOFF in plan.pools[key()].reasons


def test_back_off_expires_and_doubles_on_a_repeat() -> None:
    f = fleet({"chat": pool(**FAST)}, {"a": primary()})
    first_error = CapacityError(CapacityErrorKind.QUOTA_EXCEEDED, time=0.0)
    nodes = {
        ("a", "h100"): NodePoolObservation(ready_nodes=1, target_nodes=2, last_error=first_error)
    }
    first = plan_fleet(f, observe({"chat": 240}, nodes=nodes), EMPTY, 0.0)
    assert first.state.backoffs[NodePoolKey("a", "h100")].until == 300.0
    after = plan_fleet(f, observe({"chat": 240}, nodes=nodes), first.state, 301.0)
    assert after.node_pools[NodePoolKey("a", "h100")].desired_nodes == 3
    again = CapacityError(CapacityErrorKind.QUOTA_EXCEEDED, time=400.0)
    nodes2 = {("a", "h100"): NodePoolObservation(ready_nodes=1, target_nodes=3, last_error=again)}
    second = plan_fleet(f, observe({"chat": 240}, nodes=nodes2), after.state, 400.0)
    assert second.state.backoffs[NodePoolKey("a", "h100")].until == 1000.0


def test_scale_down_leaves_burst_before_primary() -> None:
    f = fleet(
        {"chat": pool(**BURSTY)},
        {"a": provider(), "b": provider(role="Secondary", jurisdiction="NL")},
    )
    running = {"chat": {("a", "h100"): 8, ("b", "h100"): 8}}
    nodes = {("a", "h100"): NodePoolObservation(1, 1), ("b", "h100"): NodePoolObservation(1, 1)}
    plan = plan_fleet(f, observe({"chat": 100}, running, nodes), EMPTY, 0.0)
    assert plan.pools[key()].replicas_by_provider() == {"a": 8, "b": 2}


def test_unreachable_provider_holds_its_nodes_and_replicas() -> None:
    f = fleet({"chat": pool(**FAST)}, {"a": primary()})
    nodes = {("a", "h100"): NodePoolObservation(2, 2)}
    plan = plan_fleet(
        f,
        observe({"chat": 0}, {"chat": {("a", "h100"): 9}}, nodes, unreachable=frozenset({"a"})),
        EMPTY,
        0.0,
    )
    assert plan.node_pools[NodePoolKey("a", "h100")].desired_nodes == 2
    assert plan.pools[key()].placements[NodePoolKey("a", "h100")] == 9


def test_eu_in_allowed_jurisdictions_means_the_27_member_states() -> None:
    from gpufleet.planner.placement import EU_MEMBERS, jurisdiction_allowed

    assert len(EU_MEMBERS) == 27
    assert all(jurisdiction_allowed(["EU"], country) for country in EU_MEMBERS)
    assert jurisdiction_allowed(["EU"], "HU")
    assert jurisdiction_allowed(["EU"], "DE-BY")
    assert not any(jurisdiction_allowed(["EU"], c) for c in ("US", "CH", "GB", "NO"))

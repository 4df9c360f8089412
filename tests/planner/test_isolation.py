"""Surges without collateral damage: priority isolation, the sustainable rate, tiers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.planner import (
    NodePoolKey,
    PlannerState,
    PoolObservation,
    Reason,
    Snapshot,
    plan_fleet,
)
from gpufleet.planner.demand import erlang_tail, service_rate_per_second
from gpufleet.planner.types import frozen_map

from .builders import EMPTY, budget, fleet, key, node_pool, observe, pool, provider

FAST = {
    "behavior": {
        "scaleUp": {"policies": [{"type": "Pods", "value": 1000, "periodSeconds": 15}]},
        "scaleDown": {"stabilizationWindowSeconds": 0},
    }
}
SIZED = {
    "slo": {"queueWaitSeconds": 10, "targetPercent": 99},
    "serviceRates": [{"gpuType": "H100", "requestsPerMinute": 60}],
    "queue": {"query": "q", "targetPerReplica": 1000, "arrivalRateQuery": "r"},
}
# From the platform's PriorityClasses (the pools' pods name them), never from the specs.
PRIORITIES = {"chat": 1000, "image": 1}
TIERS = {"tiers": [{"name": "paid", "sharePercent": 30}, {"name": "free", "sharePercent": 70}]}


def test_a_short_pool_publishes_what_it_can_carry_and_cuts_the_lowest_tier() -> None:
    f = fleet({"image": pool(**FAST, **SIZED, **TIERS)}, {"a": provider(gpuQuota=8)})
    plan = plan_fleet(f, observe({"image": 0}, arrivals={"image": 20.0}), EMPTY, 0.0)
    throttle = plan.pools[key("image")].throttle
    assert throttle is not None
    assert throttle.sustainable < 8.0  # 8 replicas at 1 req/s each, with room for the SLO
    paid, free = throttle.tiers
    assert paid.allowed == paid.demand == 6.0
    assert free.allowed < free.demand
    assert Reason.THROTTLED in plan.pools[key("image")].reasons


def test_tiers_report_their_own_measured_rates_when_given() -> None:
    f = fleet({"image": pool(**FAST, **SIZED, **TIERS)}, {"a": provider(gpuQuota=8)})
    snapshot = Snapshot(
        pools=frozen_map(
            {
                key("image"): PoolObservation(
                    0.0, 20.0, tier_rates=frozen_map({"paid": 12.0, "free": 8.0})
                )
            }
        )
    )
    throttle = plan_fleet(f, snapshot, EMPTY, 0.0).pools[key("image")].throttle
    assert throttle is not None
    assert throttle.tiers[0].demand == 12.0
    assert throttle.tiers[0].allowed == throttle.sustainable  # paid alone exceeds capacity
    assert throttle.tiers[1].allowed == 0.0


def test_a_pool_that_keeps_up_publishes_no_throttle() -> None:
    f = fleet({"image": pool(**FAST, **SIZED, **TIERS)}, {"a": provider()})
    plan = plan_fleet(f, observe({"image": 0}, arrivals={"image": 20.0}), EMPTY, 0.0)
    assert plan.pools[key("image")].throttle is None


def _starting(ready: int) -> Snapshot:
    return Snapshot(
        pools=frozen_map(
            {
                key("image"): PoolObservation(
                    0.0,
                    20.0,
                    replicas=frozen_map({NodePoolKey("a", "h100"): 30}),
                    ready_replicas=ready,
                )
            }
        )
    )


def test_while_new_replicas_start_the_ready_ones_set_the_published_rate() -> None:
    f = fleet({"image": pool(**FAST, **SIZED, **TIERS)}, {"a": provider()})
    plan = plan_fleet(f, _starting(ready=8), EMPTY, 0.0)
    image = plan.pools[key("image")]
    throttle = image.throttle
    assert image.unplaced_replicas == 0  # capacity can be had: it is only starting
    assert throttle is not None and throttle.starting
    assert throttle.sustainable < 8.0
    assert throttle.tiers[0].allowed == throttle.tiers[0].demand  # paid whole
    assert throttle.tiers[1].allowed < throttle.tiers[1].demand
    note = next(n for n in image.notes if n.reason == Reason.THROTTLED)
    assert "more replicas serve" in note.message


def test_the_throttle_lifts_once_the_replicas_serve() -> None:
    f = fleet({"image": pool(**FAST, **SIZED, **TIERS)}, {"a": provider()})
    assert plan_fleet(f, _starting(ready=30), EMPTY, 0.0).pools[key("image")].throttle is None


def test_a_surge_in_a_low_priority_pool_leaves_the_high_priority_pool_whole() -> None:
    pools = {"chat": pool(**FAST), "image": pool(**FAST)}
    f = fleet(
        pools,
        {"a": provider(node_pools=[node_pool(maxNodes=4)])},
        {"site": budget(15)},
        PRIORITIES,
    )
    calm = plan_fleet(f, observe({"chat": 100, "image": 10}), EMPTY, 0.0)
    surge = plan_fleet(f, observe({"chat": 100, "image": 10_000}), EMPTY, 0.0)
    assert surge.pools[key("chat")].placements == calm.pools[key("chat")].placements
    assert surge.pools[key("image")].desired_replicas < 1000


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 10_000),
    st.integers(0, 5000),
    st.integers(1, 3),
    st.lists(st.integers(0, 100), min_size=1, max_size=3),
)
def test_sustainable_rate_is_never_above_what_the_plan_serves_at_the_slo(
    nodes: int, low_queue: int, high_queue: int, tiers: int, shares: list[int]
) -> None:
    spec = pool(
        **FAST,
        **SIZED,
        tiers=[{"name": f"t{i}", "sharePercent": s} for i, s in enumerate(shares[:tiers])],
    )
    pools = {"chat": pool(**FAST), "image": spec}
    f = fleet(pools, {"a": provider(node_pools=[node_pool(maxNodes=nodes)])}, None, PRIORITIES)
    arrival = high_queue / 10.0
    plan = plan_fleet(
        f,
        observe({"chat": low_queue, "image": 0}, arrivals={"image": arrival}),
        PlannerState(),
        0.0,
    )
    image = plan.pools[key("image")]
    if image.throttle is None:
        return
    service = service_rate_per_second(spec)
    assert service is not None
    assert (
        erlang_tail(image.throttle.sustainable, service, image.desired_replicas, 10.0)
        <= 0.01 + 1e-6
    )
    # Tiers are cut in order: once one is cut, every lower one gets nothing.
    cut = False
    for tier in image.throttle.tiers:
        if cut:
            assert tier.allowed == 0.0
        cut = cut or tier.allowed < tier.demand
    assert sum(t.allowed for t in image.throttle.tiers) <= image.throttle.sustainable + 1e-9


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 500), st.integers(0, 500), st.integers(0, 5000), st.integers(1, 60))
def test_no_pool_loses_capacity_to_a_lower_priority_pools_demand(
    high_queue: int, low_queue: int, extra: int, cap_kw: int
) -> None:
    pools = {"chat": pool(**FAST), "image": pool(**FAST)}
    f = fleet(
        pools,
        {"a": provider(node_pools=[node_pool(maxNodes=6)], gpuQuota=40)},
        {"site": budget(cap_kw)},
        PRIORITIES,
    )
    before = plan_fleet(f, observe({"chat": high_queue, "image": low_queue}), PlannerState(), 0.0)
    after = plan_fleet(
        f, observe({"chat": high_queue, "image": low_queue + extra}), PlannerState(), 0.0
    )
    assert after.pools[key("chat")].placements == before.pools[key("chat")].placements

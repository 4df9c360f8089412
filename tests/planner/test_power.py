"""Power budgets: caps hold, nested budgets, priority shedding, windows, measurements."""

from __future__ import annotations

from gpufleet.planner import NodePoolKey, NodePoolObservation, Reason, plan_fleet

from .builders import EMPTY, budget, fleet, key, node_pool, observe, pool, provider

FAST = {
    "behavior": {
        "scaleUp": {"policies": [{"type": "Pods", "value": 1000, "periodSeconds": 15}]},
        "scaleDown": {"stabilizationWindowSeconds": 0},
    }
}
# One node: 1000 W overhead + 8 x 100 W idle = 1800 W; each busy GPU adds 600 W.


def test_planned_power_stays_under_the_cap() -> None:
    f = fleet(
        {"chat": pool(**FAST)}, {"a": provider()}, {"site": budget(10, scope={"sites": ["fra1"]})}
    )
    plan = plan_fleet(f, observe({"chat": 1000}), EMPTY, 0.0)
    assert plan.budgets["site"].planned_watts <= 10_000
    assert Reason.LIMITED_BY_POWER in plan.pools[key()].reasons
    assert Reason.CAP_REACHED in {n.reason for n in plan.budgets["site"].notes}


def test_nested_budgets_each_hold() -> None:
    f = fleet(
        {"chat": pool(**FAST)},
        {
            "a": provider(
                node_pools=[
                    node_pool("x", site="fra1", maxNodes=50),
                    node_pool("y", site="fra2", maxNodes=50),
                ]
            )
        },
        {"fleet": budget(40), "fra1": budget(8, scope={"sites": ["fra1"]}, parentRef="fleet")},
    )
    plan = plan_fleet(f, observe({"chat": 100000}), EMPTY, 0.0)
    assert plan.budgets["fleet"].planned_watts <= 40_000
    assert plan.budgets["fra1"].planned_watts <= 8_000
    assert plan.pools[key()].placements.get(NodePoolKey("a", "y"), 0) > 0


def test_low_priority_pool_is_shed_first_when_the_cap_binds() -> None:
    f = fleet(
        {"chat": pool(**FAST), "image": pool(**FAST)},
        {"a": provider()},
        {"site": budget(12)},
        {"chat": 1000, "image": 10},
    )
    running = {"image": {("a", "h100"): 8}}
    nodes = {("a", "h100"): NodePoolObservation(1, 1)}
    plan = plan_fleet(f, observe({"chat": 80, "image": 80}, running, nodes), EMPTY, 0.0)
    assert plan.pools[key("chat")].desired_replicas == 8
    assert plan.pools[key("image")].desired_replicas < 8


def test_capped_pool_moves_to_a_provider_outside_the_capped_scope() -> None:
    f = fleet(
        {"chat": pool(burst={"enabled": True}, **FAST)},
        {
            "a": provider(),
            "b": provider(role="Secondary", jurisdiction="NL", node_pools=[node_pool(site="ams1")]),
        },
        {"fra1": budget(6, scope={"sites": ["fra1"]})},
    )
    plan = plan_fleet(f, observe({"chat": 100}), EMPTY, 0.0)
    assert plan.pools[key()].replicas_by_provider().get("b", 0) > 0


def test_peak_window_lowers_the_cap() -> None:
    window = {"name": "peak", "startTime": "17:00", "endTime": "21:00", "capKilowatts": 5}
    f = fleet({"chat": pool(**FAST)}, {"a": provider()}, {"site": budget(100, windows=[window])})
    at_noon = plan_fleet(f, observe({"chat": 1000}), EMPTY, 12 * 3600.0)
    at_six = plan_fleet(f, observe({"chat": 1000}), EMPTY, 18 * 3600.0)
    assert at_six.budgets["site"].active_window == "peak"
    assert at_six.budgets["site"].planned_watts <= 5_000
    assert at_noon.pools[key()].desired_replicas > at_six.pools[key()].desired_replicas


def test_measured_draw_above_the_estimate_tightens_the_plan() -> None:
    f = fleet({"chat": pool(**FAST)}, {"a": provider()}, {"site": budget(10)})
    estimated = plan_fleet(f, observe({"chat": 1000}), EMPTY, 0.0)
    measured = plan_fleet(f, observe({"chat": 1000}, budget_watts={"site": 4000.0}), EMPTY, 0.0)
    assert measured.pools[key()].desired_replicas < estimated.pools[key()].desired_replicas


def test_headroom_is_kept_below_the_cap() -> None:
    f = fleet({"chat": pool(**FAST)}, {"a": provider()}, {"site": budget(10, headroomPercent=20)})
    plan = plan_fleet(f, observe({"chat": 1000}), EMPTY, 0.0)
    assert plan.budgets["site"].allowed_watts == 8000
    assert plan.budgets["site"].planned_watts <= 8000


def test_a_pool_measured_below_the_nameplate_fits_more_under_the_cap() -> None:
    # 10 kW: one node (1,800 W) plus 13 GPUs at the nameplate 600 W above idle; at the
    # measured 400 W (300 W above idle) the same cap holds two nodes and 16 busy GPUs.
    f = fleet({"chat": pool(**FAST)}, {"a": provider()}, {"site": budget(10)})
    by_nameplate = plan_fleet(f, observe({"chat": 1000}), EMPTY, 0.0)
    by_measure = plan_fleet(f, observe({"chat": 1000}, watts={"chat": {"H100": 400.0}}), EMPTY, 0.0)
    assert by_nameplate.pools[key()].desired_replicas == 8 + 2
    assert by_measure.pools[key()].desired_replicas == 16
    assert by_measure.pools[key()].planned_watts == 16 * 400
    assert by_measure.budgets["site"].planned_watts <= 10_000


def test_a_declared_figure_below_the_nameplate_fits_no_more_under_the_cap() -> None:
    # The spec is the tenant's: its 400 W counts only where it is above the estimate.
    declared = pool(
        serviceRates=[{"gpuType": "H100", "requestsPerMinute": 60, "wattsPerGpu": 400}], **FAST
    )
    f = fleet({"chat": declared}, {"a": provider()}, {"site": budget(10)})
    plan = plan_fleet(f, observe({"chat": 1000}), EMPTY, 0.0)
    assert plan.pools[key()].desired_replicas == 8 + 2
    assert plan.pools[key()].planned_watts == 10 * 700

"""One pool whose planning raises: the others are planned in the same tick, it says why."""

from __future__ import annotations

import pytest

from gpufleet.planner import plan_fleet
from gpufleet.planner.types import (
    Fleet,
    FleetPlan,
    PlannerState,
    PoolKey,
    PoolObservation,
    Snapshot,
    frozen_map,
)
from gpufleet.reconcilers.isolation import PLANNING_FAILED, plan_isolated
from gpufleet.reconcilers.liveness import LoopStuck, TickWatch

from .builders import minimal_pool, simulated_provider

NAMES = [f"p{i:02d}" for i in range(12)]
EMPTY = PlannerState()


def key(name: str) -> PoolKey:
    return PoolKey("ns", name)


def _fleet() -> Fleet:
    pools = {key(n): minimal_pool(n) for n in NAMES}
    providers = {"de": simulated_provider("de", max_nodes=20)}
    return Fleet(frozen_map(pools), frozen_map(providers), frozen_map({}))


def observe(queues: dict[str, float]) -> Snapshot:
    return Snapshot(pools=frozen_map({key(n): PoolObservation(q) for n, q in queues.items()}))


def _failing_on(*bad: str) -> object:
    calls: list[int] = []

    def planner(f: Fleet, snapshot: Snapshot, state: PlannerState, now: float) -> FleetPlan:
        calls.append(len(f.pools))
        if any(key(b) in f.pools for b in bad):
            raise OverflowError("cannot convert float infinity to integer")
        return plan_fleet(f, snapshot, state, now)

    planner.calls = calls  # type: ignore[attr-defined]
    return planner


def test_the_others_are_planned_and_the_failing_pools_say_why() -> None:
    planner = _failing_on("p03", "p10")
    snapshot = observe(dict.fromkeys(NAMES, 12.0))

    plan, unplanned = plan_isolated(_fleet(), snapshot, EMPTY, 0.0, planner)  # type: ignore[arg-type]

    assert set(unplanned) == {key("p03"), key("p10")}
    assert {p.reason for p in unplanned.values()} == {PLANNING_FAILED}
    assert set(plan.pools) == {key(n) for n in NAMES} - set(unplanned)
    assert all(p.desired_replicas > 1 for p in plan.pools.values())


def test_a_fleet_that_plans_costs_one_plan() -> None:
    planner = _failing_on()

    _, unplanned = plan_isolated(_fleet(), observe({}), EMPTY, 0.0, planner)  # type: ignore[arg-type]

    assert unplanned == {}
    assert planner.calls == [len(NAMES)]  # type: ignore[attr-defined]


def test_a_fleet_that_fails_without_any_pool_raises() -> None:
    def broken(f: Fleet, snapshot: Snapshot, state: PlannerState, now: float) -> FleetPlan:
        raise ValueError("a provider the planner chokes on")

    with pytest.raises(ValueError):
        plan_isolated(_fleet(), observe({}), EMPTY, 0.0, broken)


def test_liveness_fails_only_for_a_tick_that_does_not_return() -> None:
    now = [0.0]
    watch = TickWatch(stuck_after=120, clock=lambda: now[0])
    watch.check()  # idle (a follower, or between ticks): healthy
    watch.begin()
    now[0] = 100
    watch.check()
    now[0] = 121
    with pytest.raises(LoopStuck):
        watch.check()
    watch.end()
    watch.check()

"""The service rate learnt from the queue: what a busy stretch shows, what it is believed for,
and what the plan sizes with."""

from __future__ import annotations

import pytest

from gpufleet.api.pool import RateSource, ServingPoolSpec
from gpufleet.planner import Reason, plan_fleet
from gpufleet.planner.service import (
    MAX_FACTOR,
    MIN_FACTOR,
    WINDOW_SECONDS,
    Reading,
    ServiceMemory,
    observe,
    work_factor,
)
from gpufleet.planner.types import (
    NodePoolKey,
    PlannerState,
    PoolObservation,
    Snapshot,
    frozen_map,
)

from .builders import fleet, key, pool, provider

DECLARED = 10.0  # requests/s the serving replicas promise


def _replay(served: float, arrival: float = 12.0, seconds: int = 60, queue: float = 50.0):
    """A queue fed `arrival` req/s and served `served` req/s, read every second."""
    memory = ServiceMemory()
    for t in range(seconds + 1):
        memory = observe(memory, Reading(float(t), queue, arrival, DECLARED))
        queue = max(queue + arrival - served, 0.0)
    return memory


def test_a_queue_that_grows_shows_how_fast_the_replicas_really_serve() -> None:
    memory = _replay(served=6.0)

    assert memory.factor == pytest.approx(0.6, rel=0.02)
    assert work_factor(memory, 60.0) == pytest.approx(0.6, rel=0.02)  # believed at once


def test_a_faster_fleet_is_believed_only_as_busy_time_adds_up() -> None:
    memory = _replay(served=15.0, arrival=12.0, queue=500.0)  # drains a backlog

    assert memory.factor == pytest.approx(1.5, rel=0.02)
    assert 1.0 < work_factor(memory, 60.0) < 1.25


def test_a_queue_that_never_moves_teaches_nothing() -> None:
    # Arrivals and service balance, or a burst between two scrapes: only a lower bound.
    memory = _replay(served=12.0, arrival=12.0)

    assert memory.updated is None and work_factor(memory, 60.0) == 1.0


def test_an_idle_queue_teaches_nothing() -> None:
    assert _replay(served=6.0, queue=0.0, arrival=0.0).updated is None


def test_windows_with_a_ramp_in_arrivals_are_left_out() -> None:
    # The arrival rate is a trailing average: on a ramp it lags the queue.
    memory = ServiceMemory()
    queue = 50.0
    for t in range(61):
        arrival = 10.0 + t  # +600 % in a minute
        memory = observe(memory, Reading(float(t), queue, arrival, DECLARED))
        queue += 5.0

    assert memory.updated is None


def test_a_change_in_serving_replicas_starts_a_new_window() -> None:
    memory = ServiceMemory()
    queue = 50.0
    for t in range(int(WINDOW_SECONDS) * 2):
        capacity = DECLARED if t % 20 < 10 else 2 * DECLARED  # replicas come and go
        memory = observe(memory, Reading(float(t), queue, 12.0, capacity))
        queue += 6.0

    assert memory.updated is None


def test_samples_are_bounded_so_a_broken_metric_cannot_buy_the_fleet() -> None:
    assert _replay(served=-100.0).factor == pytest.approx(MIN_FACTOR)
    assert _replay(served=1000.0, queue=1e6).factor == pytest.approx(MAX_FACTOR)


def test_without_new_samples_the_rate_drifts_back_to_the_declared_one() -> None:
    memory = _replay(served=6.0)

    assert work_factor(memory, 60.0) < work_factor(memory, 60.0 + 3600.0) < 1.0
    assert work_factor(memory, 60.0 + 8 * 3600.0) == 1.0
    # In steps, so that the decay does not change a status every few seconds.
    steps = {work_factor(memory, 60.0 + t) for t in range(0, 8 * 3600, 10)}
    assert len(steps) <= 10


def test_a_plan_sizes_with_the_observed_rate_and_says_so() -> None:
    spec = pool(
        queue={"query": "q", "targetPerReplica": 1000, "arrivalRateQuery": "a"},
        serviceRates=[{"gpuType": "H100", "requestsPerMinute": 600}],  # 10 req/s a replica
        slo={"queueWaitSeconds": 2, "targetPercent": 99},
        behavior={"scaleUp": {"policies": [{"type": "Pods", "value": 100, "periodSeconds": 15}]}},
    )
    f = fleet({"model": spec}, {"p": provider()})
    np = NodePoolKey("p", "h100")
    state, queue, plans = PlannerState(), 100.0, []
    for t in range(0, 61, 5):  # 4 replicas take 40 req/s as declared; they serve 24
        seen = PoolObservation(queue, 30.0, frozen_map({np: 4}), ready_replicas=4)
        plan = plan_fleet(f, Snapshot(frozen_map({key("model"): seen})), state, float(t))
        state, queue = plan.state, queue + (30.0 - 24.0) * 5
        plans.append(plan.pools[key("model")])

    first, last = plans[0], plans[-1]
    assert first.service is not None and first.service.source == RateSource.DECLARED
    assert last.service is not None and last.service.source == RateSource.OBSERVED
    assert last.service.used == pytest.approx(6.0, rel=0.05)
    assert last.desired_replicas > first.desired_replicas


def test_a_pool_without_a_declared_rate_has_no_service_rate() -> None:
    f = fleet({"model": pool()}, {"p": provider()})
    seen = PoolObservation(5.0, 3.0)
    plan = plan_fleet(f, Snapshot(frozen_map({key("model"): seen})), PlannerState(), 0.0)

    assert plan.pools[key("model")].service is None


def test_a_gap_in_the_metrics_is_not_one_long_busy_window() -> None:
    memory = _replay(served=10.0, arrival=10.0)  # as declared: nothing learnt
    after_gap = observe(memory, Reading(660.0, 3050.0, 10.0, DECLARED))  # +3000 in 10 min

    assert after_gap.updated is None and after_gap.window is None


def test_a_spec_that_corrects_its_rate_starts_afresh() -> None:
    spec = _slow_pool(600)
    fixed = _slow_pool(360)
    f, g = fleet({"model": spec}, {"p": provider()}), fleet({"model": fixed}, {"p": provider()})
    state, queue = PlannerState(), 100.0
    for t in range(0, 61, 5):
        plan = plan_fleet(f, _seen(queue), state, float(t))
        state, queue = plan.state, queue + (30.0 - 24.0) * 5
    learnt = plan.pools[key("model")].service
    assert learnt is not None and learnt.source == RateSource.OBSERVED

    after = plan_fleet(g, _seen(queue), state, 65.0).pools[key("model")].service

    assert after is not None and after.used == pytest.approx(6.0)  # not 6.0 x 0.6
    assert after.source == RateSource.DECLARED


def test_nan_or_infinite_readings_teach_nothing_and_break_nothing() -> None:
    f = fleet({"model": _slow_pool(600)}, {"p": provider()})
    state = PlannerState()
    for t in range(0, 91, 5):
        seen = PoolObservation(
            float("inf") if t % 10 else 100.0 + t,
            float("nan"),
            frozen_map({NodePoolKey("p", "h100"): 4}),
            ready_replicas=4,
        )
        plan = plan_fleet(f, Snapshot(frozen_map({key("model"): seen})), state, float(t))
        state = plan.state
    rate = plan.pools[key("model")].service
    assert rate is not None and rate.source == RateSource.DECLARED


def _slow_pool(requests_per_minute: int) -> ServingPoolSpec:
    return pool(
        queue={"query": "q", "targetPerReplica": 1000, "arrivalRateQuery": "a"},
        serviceRates=[{"gpuType": "H100", "requestsPerMinute": requests_per_minute}],
        slo={"queueWaitSeconds": 2, "targetPercent": 99},
    )


def _seen(queue: float) -> Snapshot:
    seen = PoolObservation(queue, 30.0, frozen_map({NodePoolKey("p", "h100"): 4}), ready_replicas=4)
    return Snapshot(frozen_map({key("model"): seen}))


def test_a_queue_growing_past_the_slo_sizes_for_the_arrivals_it_shows() -> None:
    # A step: 4 replicas serve 40 req/s as declared; the minute's arrival rate still reads
    # 30 while the queue grows by 60 every second.
    f = fleet({"model": _slow_pool(600)}, {"p": provider()})
    state, queue, plans = PlannerState(), 200.0, []
    for t in range(0, 46, 15):
        plan = plan_fleet(f, _seen(queue), state, float(t))
        state, queue = plan.state, queue + 60.0 * 15
        plans.append(plan.pools[key("model")])

    assert Reason.QUEUE_GROWING in plans[-1].reasons
    assert "sized for" in next(
        n.message for n in plans[-1].notes if n.reason == Reason.QUEUE_GROWING
    )
    assert plans[-1].recommended_replicas >= 10  # 100 req/s arriving, and the backlog


def test_a_short_rise_the_replicas_clear_within_the_slo_is_left_to_the_model() -> None:
    f = fleet({"model": _slow_pool(600)}, {"p": provider()})
    state = PlannerState()
    for t, queue in enumerate([10.0, 20.0, 30.0, 40.0]):  # 4 x 10 req/s clear 80 in 2 s
        plan = plan_fleet(f, _seen(queue), state, t * 15.0)
        state = plan.state

    assert Reason.QUEUE_GROWING not in plan.pools[key("model")].reasons


# -- a restart is not a licence to scale down ----------------------------------------------


def test_a_restarted_planner_holds_what_runs_for_the_scale_down_window() -> None:
    # As the HPA at its first sight of a target: no memory of the window is no licence.
    spec = pool(
        queue={"query": "q", "targetPerReplica": 10},
        behavior={"scaleDown": {"stabilizationWindowSeconds": 300}},
    )
    f = fleet({"model": spec}, {"p": provider()})
    seen = PoolObservation(0.0, None, frozen_map({NodePoolKey("p", "h100"): 6}), ready_replicas=6)
    snapshot = Snapshot(frozen_map({key("model"): seen}))

    first = plan_fleet(f, snapshot, PlannerState(), 1000.0)
    state = first.state
    for t in range(1005, 1300, 5):
        held = plan_fleet(f, snapshot, state, float(t))
        state = held.state
    later = plan_fleet(f, snapshot, state, 1301.0)

    assert first.pools[key("model")].desired_replicas == 6
    assert held.pools[key("model")].desired_replicas == 6  # through the whole window
    assert later.pools[key("model")].desired_replicas < 6

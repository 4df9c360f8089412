"""A planned pool's status, gauges and Event are built again only when what they are made of
moved: its inputs, or the status stored since the last write. Otherwise the pool is settled
and costs nothing; an attempt that failed leaves nothing behind to call a later tick settled.

The API server is a recording stand-in for reconcilers.kube.Kube (its patch_status and
event); the metrics seam (PoolSeries) counts the pools whose gauges each tick set."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import Gauge

from gpufleet.api.parse import Parsed, parse_budget
from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.planner.types import (
    Fleet,
    FleetPlan,
    NodePoolKey,
    PlannerState,
    PoolKey,
    PoolPlan,
    Snapshot,
    frozen_map,
)
from gpufleet.reconcilers.cache import BudgetEntry, PoolEntry, ProviderEntry, View
from gpufleet.reconcilers.observe import Observed
from gpufleet.reconcilers.reporting.reporter import Reporter
from gpufleet.reconcilers.reporting.series import PoolSeries

from .builders import minimal_pool, simulated_provider

KEY = PoolKey("team", "chat")
H100 = NodePoolKey("a", "h100")
T0 = 1_700_000_000.0


class StatusStore:
    """The API server's ServingPool statuses, as Kube writes them; while `failing`, every
    write is refused."""

    def __init__(self) -> None:
        self.stored: dict[str, Any] = {}
        self.writes: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.failing = False

    async def patch_status(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        previous: Mapping[str, Any],
        status: Mapping[str, Any],
    ) -> None:
        if self.failing:
            raise ApiException(status=500, reason="Internal Server Error")
        self.writes.append(dict(status))
        self.stored = dict(status)

    async def event(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        uid: str | None,
        reason: str,
        message: str,
    ) -> None:
        self.events.append(reason)


@dataclass
class CountedSeries(PoolSeries):
    """The pools whose gauges were set, one entry a report."""

    reported: list[PoolKey] = field(default_factory=list)

    def report(self, key: PoolKey, values: dict[tuple[Gauge, tuple[str, ...]], float]) -> None:
        self.reported.append(key)
        super().report(key, values)


def _reporter() -> tuple[Reporter, StatusStore, OperatorMetrics, CountedSeries]:
    store, metrics, series = StatusStore(), OperatorMetrics(), CountedSeries()
    reporter = Reporter(store, metrics, series=series)  # type: ignore[arg-type]
    return reporter, store, metrics, series


def _plan(desired: int = 2, current: int = 2) -> PoolPlan:
    return PoolPlan(
        KEY, desired, current, frozen_map({H100: desired}), desired, 0, 0, 1400.0, True, ()
    )


async def _tick(
    reporter: Reporter,
    status: Mapping[str, Any],
    *,
    plan: PoolPlan | None = None,
    queue: float = 8.0,
    current: int = 2,
    now: float = T0,
) -> None:
    """One report of the pool, its stored status as given."""
    spec = minimal_pool()
    entry = PoolEntry(KEY.namespace, KEY.name, 1, Parsed(spec), status)
    pool_plan = plan or _plan()
    await reporter.report(
        View([entry], [], [], [], {}, {}),
        FleetPlan({KEY: pool_plan}, {}, {}, PlannerState()),
        Fleet(pools={KEY: spec}, providers={"a": simulated_provider()}),
        Observed(Snapshot(), queue={KEY: queue}, current_by_provider={KEY: {"a": current}}),
        {},
        {},
        now,
    )


def _current_replicas(metrics: OperatorMetrics) -> float | None:
    return metrics.registry.get_sample_value(
        "gpufleet_pool_current_replicas",
        {"namespace": KEY.namespace, "pool": KEY.name, "provider": "a"},
    )


@pytest.mark.asyncio
async def test_a_pool_reported_from_the_same_inputs_and_still_stored_so_is_settled() -> None:
    reporter, store, _, series = _reporter()
    await _tick(reporter, {})
    stored = store.stored

    await _tick(reporter, stored, now=T0 + 1)
    await _tick(reporter, stored, now=T0 + 2)  # the stored status matched once: not compared

    assert len(store.writes) == 1 and series.reported == [KEY]


@pytest.mark.asyncio
async def test_a_pool_never_reported_is_not_settled_though_its_stored_status_is_right() -> None:
    before, store, _, _ = _reporter()
    await _tick(before, {})
    restarted, again, metrics, series = _reporter()

    await _tick(restarted, store.stored, now=T0 + 1)

    assert again.writes == [] and series.reported == [KEY]
    assert _current_replicas(metrics) == 2


@pytest.mark.asyncio
async def test_a_new_queue_observation_reports_the_pool_again() -> None:
    reporter, store, metrics, series = _reporter()
    await _tick(reporter, {}, queue=8.0)

    await _tick(reporter, store.stored, queue=13.0, now=T0 + 1)

    assert [w["queueDepth"] for w in store.writes] == [8, 13]
    assert series.reported == [KEY, KEY]
    assert metrics.registry.get_sample_value(
        "gpufleet_pool_queue_depth", {"namespace": KEY.namespace, "pool": KEY.name}
    ) == pytest.approx(13.0)


@pytest.mark.asyncio
async def test_a_new_plan_reports_the_pool_again_and_tells_of_the_decision() -> None:
    reporter, store, _, series = _reporter()
    await _tick(reporter, {})

    await _tick(reporter, store.stored, plan=_plan(desired=3), now=T0 + 1)

    assert [w["desiredReplicas"] for w in store.writes] == [2, 3]
    assert series.reported == [KEY, KEY] and store.events == ["Scaled"]


@pytest.mark.asyncio
async def test_a_status_someone_else_changed_is_written_back() -> None:
    reporter, store, _, series = _reporter()
    await _tick(reporter, {})
    written = store.stored
    await _tick(reporter, written, now=T0 + 1)  # settled: the stored status matched

    await _tick(reporter, {**written, "queueDepth": 0}, now=T0 + 2)

    assert store.writes == [written, written]
    assert series.reported == [KEY, KEY]


@pytest.mark.asyncio
async def test_a_status_that_failed_to_be_made_leaves_the_pool_to_be_reported_again() -> None:
    """Review finding: a tick whose status could not be built (its gauges already set) and
    whose fallback status could not be written either kept the tick before's record, so a
    later tick with that tick's inputs was settled and the gauges kept the failed values."""
    reporter, store, metrics, _ = _reporter()
    await _tick(reporter, {}, current=2)
    stored = store.stored
    store.failing = True
    # No status takes a negative count: building fails after the gauges are set.
    await _tick(reporter, stored, current=-1, now=T0 + 1)
    assert _current_replicas(metrics) == -1 and store.stored == stored
    store.failing = False

    await _tick(reporter, stored, current=2, now=T0 + 2)

    assert _current_replicas(metrics) == 2


class SlowStore(StatusStore):
    """An API server whose status writes each take a round trip, recording how many were in
    flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = self.most_in_flight = 0

    async def patch_status(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        previous: Mapping[str, Any],
        status: Mapping[str, Any],
    ) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        await super().patch_status(plural, namespace, name, previous, status)


@pytest.mark.asyncio
async def test_providers_and_budgets_statuses_go_out_side_by_side_with_the_pools() -> None:
    # One at a time, 20 providers' statuses held a surge tick as long as 20 round trips to a
    # loaded API server (benchmarks/fleet_scale.py).
    store = SlowStore()
    reporter = Reporter(store, OperatorMetrics())  # type: ignore[arg-type]
    spec = minimal_pool()
    providers = {n: simulated_provider(n) for n in ("a", "b", "c")}
    budget = parse_budget({"capKilowatts": 100})

    await reporter.report(
        View(
            [PoolEntry(KEY.namespace, KEY.name, 1, Parsed(spec), {})],
            [ProviderEntry(n, 1, Parsed(p)) for n, p in providers.items()],
            [BudgetEntry(f"site-{i}", 1, budget) for i in range(3)],
            [],
            {},
            {},
        ),
        FleetPlan({KEY: _plan()}, {}, {}, PlannerState()),
        Fleet(pools={KEY: spec}, providers=providers),
        Observed(Snapshot(), queue={KEY: 8.0}, current_by_provider={KEY: {"a": 2}}),
        {},
        {},
        T0,
    )

    assert len(store.writes) == 7
    assert store.most_in_flight == 7

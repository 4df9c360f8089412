"""What the fleet loop says of itself on /metrics, beside the plan."""

from __future__ import annotations

import asyncio
import time

import pytest
from kubernetes.client import ApiClient

from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.reconcilers.cache import View
from gpufleet.reconcilers.config import RunConfig
from gpufleet.reconcilers.handlers import driver_factory
from gpufleet.reconcilers.loop import FleetLoop

from .test_credentials import Secrets


@pytest.mark.asyncio
async def test_each_tick_stamps_the_time_its_plan_was_complete() -> None:
    # An alert on `time() - gpufleet_last_plan_timestamp_seconds` finds a stuck loop.
    metrics = OperatorMetrics()
    loop = FleetLoop(Secrets(), None, driver_factory(ApiClient(), RunConfig(), metrics), metrics)  # type: ignore[arg-type]
    stamp = "gpufleet_last_plan_timestamp_seconds"
    assert metrics.registry.get_sample_value(stamp) == 0.0

    before = time.time()
    await loop.tick(View([], [], [], [], {}, {}))

    assert before <= (metrics.registry.get_sample_value(stamp) or 0.0) <= time.time()


@pytest.mark.asyncio
async def test_each_tick_times_its_phases_and_they_add_up_to_the_tick() -> None:
    # A slow tick says where its time went: the phases cover the tick end to end.
    metrics = OperatorMetrics()
    loop = FleetLoop(Secrets(), None, driver_factory(ApiClient(), RunConfig(), metrics), metrics)  # type: ignore[arg-type]

    await loop.tick(View([], [], [], [], {}, {}))

    def sample(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    phases = ("observe", "plan", "actuate", "report")
    assert [sample("gpufleet_reconcile_phase_seconds_count", phase=p) for p in phases] == [1.0] * 4
    total = sum(sample("gpufleet_reconcile_phase_seconds_sum", phase=p) for p in phases)
    assert total == pytest.approx(sample("gpufleet_reconcile_duration_seconds_sum"), abs=1e-6)


@pytest.mark.asyncio
async def test_a_tick_that_fails_keeps_its_time_under_the_phase_it_failed_in() -> None:
    metrics = OperatorMetrics()
    loop = FleetLoop(Secrets(), None, driver_factory(ApiClient(), RunConfig(), metrics), metrics)  # type: ignore[arg-type]

    async def broken(*_: object) -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("Prometheus fell over")

    loop._observe = broken  # type: ignore[method-assign,assignment]
    with pytest.raises(RuntimeError):
        await loop.tick(View([], [], [], [], {}, {}))

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert (sample("gpufleet_reconcile_phase_seconds_sum", phase="observe") or 0.0) >= 0.01
    assert sample("gpufleet_reconcile_phase_seconds_count", phase="plan") is None
    assert sample("gpufleet_reconcile_duration_seconds_count") == 0.0  # finished ticks only

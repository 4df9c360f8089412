"""A pool's series in the operator's metrics last as long as what they describe."""

from __future__ import annotations

from prometheus_client import generate_latest

from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.planner.types import PoolKey
from gpufleet.reconcilers.reporting.series import PoolSeries

CHAT, BATCH = PoolKey("ns", "chat"), PoolKey("ns", "batch")


def _lines(metrics: OperatorMetrics, name: str) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return sorted(line for line in text.splitlines() if line.startswith(name + "{"))


def test_a_provider_the_pool_left_shows_no_replicas_there() -> None:
    metrics, series = OperatorMetrics(), PoolSeries()
    series.report(
        CHAT, {(metrics.desired_replicas, ("a",)): 3, (metrics.desired_replicas, ("b",)): 2}
    )
    series.report(CHAT, {(metrics.desired_replicas, ("a",)): 4})

    assert _lines(metrics, "gpufleet_pool_desired_replicas") == [
        'gpufleet_pool_desired_replicas{namespace="ns",pool="chat",provider="a"} 4.0'
    ]


def test_a_deleted_pool_leaves_no_series_and_the_others_keep_theirs() -> None:
    metrics, series = OperatorMetrics(), PoolSeries()
    for key in (CHAT, BATCH):
        series.report(key, {(metrics.pool_watts, ()): 700})
        series.count(key, metrics.decisions, "ScaledUp")

    series.forget({BATCH})

    assert _lines(metrics, "gpufleet_pool_power_watts") == [
        'gpufleet_pool_power_watts{namespace="ns",pool="batch"} 700.0'
    ]
    assert _lines(metrics, "gpufleet_decisions_total") == [
        'gpufleet_decisions_total{namespace="ns",pool="batch",reason="ScaledUp"} 1.0'
    ]

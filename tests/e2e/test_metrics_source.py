"""Prometheus in, against the test bed's real Prometheus: batched queries keep each query's
own rules (one fresh number, or MetricsUnavailable saying why)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable
from gpufleet.metrics.source import PrometheusSource, Sample
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

NS = "e2e-metrics"


def _q(pool: str) -> str:
    return f'sum(inference_queue_depth{{namespace="{NS}",pool="{pool}"}})'


def test_a_batch_answers_each_query_as_if_asked_alone(testbed: Testbed) -> None:
    if not testbed.prometheus_url:
        pytest.skip("no Prometheus on this test bed")
    exporter = testbed.exporter()
    exporter.set_queue(NS, "a", 7)
    exporter.set_queue(NS, "b", 3)
    source = PrometheusSource(testbed.prometheus_url)
    queries = [
        _q("a"),
        _q("b"),
        _q("absent"),
        f'inference_queue_depth{{namespace="{NS}"}}',
        "sum(",
        "vector(5)",
    ]
    deadline = time.monotonic() + 15
    while True:
        result = asyncio.run(source.sample_many(queries))
        a = result[_q("a")]
        if (isinstance(a, Sample) and a.value == 7) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert isinstance(result[_q("a")], Sample) and result[_q("a")].value == 7  # type: ignore[union-attr]
    assert isinstance(result[_q("b")], Sample) and result[_q("b")].value == 3  # type: ignore[union-attr]
    assert isinstance(result[_q("absent")], MetricsUnavailable)
    several = result[f'inference_queue_depth{{namespace="{NS}"}}']
    assert isinstance(several, MetricsUnavailable) and "aggregate" in str(several)
    assert isinstance(result["sum("], MetricsUnavailable)  # a bad query spoils only itself
    assert isinstance(result["vector(5)"], Sample) and result["vector(5)"].value == 5  # type: ignore[union-attr]


def test_an_unreachable_prometheus_makes_every_query_unavailable() -> None:
    source = PrometheusSource("http://127.0.0.1:9", timeout=2)
    result = asyncio.run(source.sample_many(["up", "vector(1)"]))
    assert all(isinstance(r, MetricsUnavailable) for r in result.values())


def test_a_query_that_closes_its_parentheses_cannot_answer_for_others(testbed: Testbed) -> None:
    if not testbed.prometheus_url:
        pytest.skip("no Prometheus on this test bed")
    exporter = testbed.exporter()
    exporter.set_queue(NS, "victim", 7)
    victim, power = _q("victim"), "vector(800000)"
    # Before each query stood alone, this text decided the victim's queue (index 0) and the
    # budget's reading (index 1): 7 -> 0 and 800 kW -> 1e12 W.
    forged = (
        f'{_q("attacker")}) or label_replace(vector(0), "gpufleet_query", "0", "", "") '
        'or label_replace(vector(1e12), "gpufleet_query", "1", "", "") or (vector(1)'
    )
    source = PrometheusSource(testbed.prometheus_url)
    deadline = time.monotonic() + 15
    while True:
        result = asyncio.run(source.sample_many([victim, power, forged]))
        first = result[victim]
        if (isinstance(first, Sample) and first.value == 7) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert isinstance(result[victim], Sample) and result[victim].value == 7  # type: ignore[union-attr]
    assert isinstance(result[power], Sample) and result[power].value == 800_000  # type: ignore[union-attr]
    assert isinstance(result[forged], MetricsUnavailable)
    assert result[forged].reason == MetricsReason.INVALID_QUERY  # type: ignore[union-attr]

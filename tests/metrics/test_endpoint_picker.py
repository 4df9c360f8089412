"""The queue of a pool behind a GIE InferencePool: the endpoint picker's average queue times
its ready pods, per EPP replica, the largest kept; confined to the pool's namespace whether
or not --confine-queries is on, and named by spec.inferencePoolRef in conditions."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import promql_parser
import pytest

from gpufleet.api import ServingPoolSpec, parse_pool
from gpufleet.metrics.confine import confine
from gpufleet.metrics.endpoint_picker import queue_query
from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable
from gpufleet.metrics.promql import check
from gpufleet.metrics.source import Sample
from gpufleet.planner.types import PoolKey
from gpufleet.reconcilers.observe import observe
from metrics.fake_prometheus import canonical


def _selectors(text: str) -> list[tuple[str, dict[str, str]]]:
    found: list[Any] = []
    promql_parser.walk(
        promql_parser.parse(text),
        pre_visit=lambda n: (
            found.append(n) if isinstance(n, promql_parser.VectorSelector) else None
        ),
    )
    return [(s.name, {m.name: m.value for m in s.matchers.matchers}) for s in found]


def test_the_query_multiplies_the_average_by_the_ready_pods_of_one_pool() -> None:
    query = queue_query("team-a", "llm-gie")

    assert _selectors(query) == [
        ("inference_pool_average_queue_size", {"namespace": "team-a", "name": "llm-gie"}),
        ("inference_pool_ready_pods", {"namespace": "team-a", "name": "llm-gie"}),
    ]
    node = promql_parser.parse(query)
    assert isinstance(node, promql_parser.AggregateExpr)
    assert str(node.op) == "max"  # EPP replicas each report the pool: never their sum
    assert isinstance(node.expr, promql_parser.BinaryExpr)
    assert str(node.expr.op) == "*"
    assert check(query).selectors  # one number, checked like any pool's query


def test_an_endpoint_picker_with_no_fresh_pod_gives_no_sample_rather_than_an_empty_queue() -> None:
    # From GIE v1.3 an EPP whose pods' metrics are all stale reports 0 ready pods: the
    # queue is unknown, so that replica's product must be dropped (no sample: hold), not
    # read as 0 (scale down). Evaluated against Prometheus by tests/e2e/test_inference_pools.py.
    node = promql_parser.parse(queue_query("team-a", "llm-gie"))
    assert isinstance(node, promql_parser.AggregateExpr)
    product = node.expr
    assert isinstance(product, promql_parser.BinaryExpr)
    ready = product.rhs.expr if isinstance(product.rhs, promql_parser.ParenExpr) else product.rhs

    assert isinstance(ready, promql_parser.BinaryExpr)
    assert str(ready.op) == ">" and ready.modifier is None  # a filter, not `bool` 0/1
    assert isinstance(ready.lhs, promql_parser.VectorSelector)
    assert ready.lhs.name == "inference_pool_ready_pods"
    assert isinstance(ready.rhs, promql_parser.NumberLiteral) and ready.rhs.val == 0


def test_the_namespace_label_follows_the_operators_setting() -> None:
    query = queue_query("team-a", "llm-gie", "exported_namespace")

    assert all(m.get("exported_namespace") == "team-a" for _, m in _selectors(query))
    assert all("namespace" not in m for _, m in _selectors(query))


def test_confining_it_to_its_own_namespace_changes_nothing_it_reads() -> None:
    query = queue_query("team-a", "llm-gie")

    assert _selectors(confine(query, label="namespace", namespace="team-a")) == _selectors(query)


def test_it_cannot_be_confined_to_another_namespace() -> None:
    with pytest.raises(MetricsUnavailable) as caught:
        confine(queue_query("team-a", "llm-gie"), label="namespace", namespace="team-b")

    assert caught.value.reason == MetricsReason.OUTSIDE_NAMESPACE


# -- Through the tick ----------------------------------------------------------------------


def _pool(query: str | None = None) -> ServingPoolSpec:
    queue: dict[str, Any] = {"targetPerReplica": 4}
    if query is not None:
        queue["query"] = query
    parsed = parse_pool(
        {
            "scaleTargetRef": {"name": "llm"},
            "inferencePoolRef": {"name": "llm-gie"},
            "gpuTypes": ["H100"],
            "queue": queue,
            "maxReplicas": 10,
        }
    )
    assert parsed.value is not None, parsed.errors
    return parsed.value


@dataclass
class Answers:
    """A MetricsSource that answers from a table of queries as the parser renders them
    (missing: no sample) and keeps what it was asked."""

    values: Mapping[str, float] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def sample_many(self, queries: Sequence[str]) -> dict[str, Sample | MetricsUnavailable]:
        self.asked.extend(queries)
        return {
            q: Sample(self.values[canonical(q)], 0.0)
            if canonical(q) in self.values
            else MetricsUnavailable("no series", MetricsReason.NO_SAMPLE)
            for q in queries
        }


def _observe(pools: dict[PoolKey, ServingPoolSpec], source: Any, label: str | None) -> Any:
    return asyncio.run(
        observe(pools, {}, {}, {}, [], {}, {}, [], {}, {}, source, None, namespace_label=label)
    )


@pytest.mark.parametrize("label", ["namespace", None], ids=["confined", "not-confined"])
def test_a_pool_without_a_query_reads_its_inference_pools_queue_in_its_namespace(
    label: str | None,
) -> None:
    own, twin = PoolKey("team-a", "llm"), PoolKey("team-b", "llm")
    source = Answers(
        {
            canonical(queue_query("team-a", "llm-gie")): 12.0,
            canonical(queue_query("team-b", "llm-gie")): 40.0,
        }
    )

    observed = _observe({own: _pool(), twin: _pool()}, source, label)

    assert observed.queue == {own: 12.0, twin: 40.0}


def test_a_pools_own_query_wins_over_its_inference_pools() -> None:
    key = PoolKey("team-a", "llm")
    source = Answers()

    _observe({key: _pool("sum(vllm:num_requests_waiting)")}, source, None)

    assert source.asked == ["sum(vllm:num_requests_waiting)"]


def test_a_missing_endpoint_picker_series_names_the_inference_pool_ref() -> None:
    key = PoolKey("team-a", "llm")

    observed = _observe({key: _pool()}, Answers(), "namespace")

    assert observed.queue[key] is None  # holds capacity
    problem = observed.metrics_errors[key]
    assert problem.reason == MetricsReason.NO_SAMPLE.value
    assert problem.message.startswith("spec.inferencePoolRef")

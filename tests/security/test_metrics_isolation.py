"""Metrics stay in their namespace: with --confine-queries a tenant's ServingPool reads only
the series labelled with its own namespace, whatever PromQL it writes; and nothing
Prometheus says (its error text, a reply's odd fields) reaches a pool's condition, because
it can quote other tenants' series. PowerBudget queries are the admin's and are sent as
written."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import promql_parser
import pytest

from gpufleet.api import ServingPoolSpec, parse_budget, parse_pool
from gpufleet.metrics.confine import confine
from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable
from gpufleet.metrics.promql import check
from gpufleet.metrics.source import PrometheusSource, Sample
from gpufleet.planner.types import PoolKey, PoolPlan
from gpufleet.reconcilers.observe import observe
from gpufleet.reconcilers.reporting.status import pool_conditions
from gpufleet_testbed.operator import wait_for
from gpufleet_testbed.testbed import Testbed
from metrics.fake_prometheus import FakePrometheus, canonical

NS = "team-a"
OTHER = "team-b"
SECRET = "hunter2-of-team-b"  # what a reply plants; no condition may carry it


def _confined(query: str, label: str = "namespace") -> str:
    return confine(query, label=label, namespace=NS)


def _refusal(query: str, label: str = "namespace") -> MetricsReason:
    with pytest.raises(MetricsUnavailable) as caught:
        _confined(query, label)
    return caught.value.reason


# What a tenant writes -> what is sent: a selector without the label gets the pool's own.
REWRITTEN = {
    "sum(inference_queue_depth)": 'sum(inference_queue_depth{namespace="team-a"})',
    'sum(q{pool="chat"})': 'sum(q{namespace="team-a",pool="chat"})',
    # Labels forged after selection: the selection is already the namespace's.
    'sum(label_replace(q, "namespace", "team-b", "", ""))': (
        'sum(label_replace(q{namespace="team-a"}, "namespace", "team-b", "", ""))'
    ),
    'count_values("namespace", q)': 'count_values("namespace", q{namespace="team-a"})',
    # A vector of its own, joined on nothing: it reads nothing.
    "sum(q) or on() vector(1)": 'sum(q{namespace="team-a"}) or on () vector(1)',
    "sum(q) or on() sum(r)": 'sum(q{namespace="team-a"}) or on () sum(r{namespace="team-a"})',
    # Inside ranges, subqueries and function arguments alike.
    "max_over_time(sum(rate(q[5m]))[10m:1m] offset 2m)": (
        'max_over_time(sum(rate(q{namespace="team-a"}[5m]))[10m:1m] offset 2m)'
    ),
    "topk(scalar(q), r)": 'topk(scalar(q{namespace="team-a"}), r{namespace="team-a"})',
    "sum(q * on(pod) group_left(node) kube_pod_info)": (
        'sum(q{namespace="team-a"} * on (pod) group_left (node) kube_pod_info{namespace="team-a"})'
    ),
    # Offsets and @ keep their times; only the namespace is added.
    "sum(rate(q[5m] offset 1h))": 'sum(rate(q{namespace="team-a"}[5m] offset 1h))',
    "sum(q offset -5m @ 100)": 'sum(q{namespace="team-a"} @ 100.000 offset -5m)',
    "sum(rate(q[5m] @ start()))": 'sum(rate(q{namespace="team-a"}[5m] @ start()))',
    # absent() of the namespace's own series only: no probing for others'.
    "absent(q)": 'absent(q{namespace="team-a"})',
    # Another label than the configured one is just a label.
    'sum(q{Namespace="team-b"})': 'sum(q{Namespace="team-b",namespace="team-a"})',
    # Values the renderer must quote keep their meaning.
    r'sum(q{pool="a\\b"})': r'sum(q{namespace="team-a",pool="a\\b"})',
    # Reads nothing: nothing to confine.
    "vector(1)": "vector(1)",
    "7": "vector(7)",
    # The pool's own namespace, asked for exactly: kept as it is.
    'sum(q{namespace="team-a",pool="chat"})': 'sum(q{namespace="team-a",pool="chat"})',
}

# Reads, or may read, another namespace's series: refused, never sent.
OUTSIDE = [
    'sum(q{namespace="team-b"})',
    'sum(q{namespace=""})',  # series without a namespace: cluster-wide ones
    'sum(q{namespace="team-a",namespace="team-b"})',
    'sum(q{namespace=~"team-a|team-b"})',
    'sum(q{namespace=~"team-a"})',  # a regex, even one that matches only its own
    'sum(q{namespace=~".*"})',
    'sum(q{namespace!="team-b"})',
    'sum(q{namespace!~"kube-.*"})',
    'sum(label_replace(q{namespace="team-b"}, "namespace", "team-a", "", ""))',
    'sum(q) or on() sum(secret{namespace="team-b"})',
    'absent(q{namespace="team-b"})',
    'max_over_time(sum(q{namespace="team-b"})[10m:1m])',
    'sum(rate(q{namespace="team-b"}[5m] offset 1h))',
    "sum(info(q))",  # joins target_info by itself, whatever its namespace
]

# Not one metric name, or `or` between matchers: refused before the namespace is looked at.
INVALID = [
    '{__name__=~".+"}',
    'count({__name__=~".+"})',
    'count({__name__=~".+",namespace="team-b"})',
    'sum(q{pool="a" or namespace="team-b"})',
]


@pytest.mark.parametrize(("written", "sent"), REWRITTEN.items())
def test_a_pools_query_is_sent_confined_to_its_namespace(written: str, sent: str) -> None:
    assert _confined(written) == sent


@pytest.mark.parametrize("query", OUTSIDE)
def test_a_query_reaching_outside_its_namespace_is_refused(query: str) -> None:
    assert _refusal(query) == MetricsReason.OUTSIDE_NAMESPACE


@pytest.mark.parametrize("query", INVALID)
def test_a_query_that_cannot_be_confined_is_refused(query: str) -> None:
    assert _refusal(query) == MetricsReason.INVALID_QUERY


def test_the_namespace_label_is_configurable() -> None:
    label = "exported_namespace"

    sent = _confined('sum(q{namespace="team-b"})', label)

    assert sent == 'sum(q{exported_namespace="team-a",namespace="team-b"})'
    assert _refusal('sum(q{exported_namespace="team-b"})', label) == (
        MetricsReason.OUTSIDE_NAMESPACE
    )


@pytest.mark.parametrize("written", REWRITTEN)
def test_what_is_sent_is_confined_again_unchanged(written: str) -> None:
    sent = _confined(written)

    assert _confined(sent) == sent  # re-parsed, every selector already the namespace's
    assert canonical(sent) == sent  # and the parser's own rendering


# -- Through the tick: what reaches Prometheus -------------------------------------------


def _pool(query: str, arrival: str | None = None) -> ServingPoolSpec:
    queue: dict[str, Any] = {"query": query, "targetPerReplica": 4}
    if arrival is not None:
        queue["arrivalRateQuery"] = arrival
    parsed = parse_pool(
        {
            "scaleTargetRef": {"name": "chat"},
            "gpuTypes": ["H100"],
            "queue": queue,
            "maxReplicas": 10,
            "tiers": [{"name": "free", "arrivalRateQuery": 'sum(arrivals{tier="free"})'}],
        }
    )
    assert parsed.value is not None, parsed.errors
    return parsed.value


@dataclass
class RecordingSource:
    """A MetricsSource that answers 3 to every query and keeps what it was asked."""

    asked: list[str] = field(default_factory=list)

    async def sample_many(self, queries: Sequence[str]) -> dict[str, Sample | MetricsUnavailable]:
        self.asked.extend(queries)
        return {q: Sample(3.0, 0.0) for q in queries}


def _observe(
    pools: dict[PoolKey, ServingPoolSpec],
    source: Any,
    label: str | None = "namespace",
    budgets: dict[str, Any] | None = None,
) -> Any:
    return asyncio.run(
        observe(
            pools,
            {},
            {},
            budgets or {},
            [],
            {},
            {},
            [],
            {},
            {},
            source,
            namespace_label=label,
        )
    )


def test_each_pool_is_confined_to_its_own_namespace_before_batching() -> None:
    source = RecordingSource()
    query = "sum(inference_queue_depth)"
    pools = {PoolKey(NS, "chat"): _pool(query), PoolKey(OTHER, "chat"): _pool(query)}

    _observe(pools, source)

    assert sorted(source.asked) == [
        'sum(arrivals{namespace="team-a",tier="free"})',
        'sum(arrivals{namespace="team-b",tier="free"})',
        'sum(inference_queue_depth{namespace="team-a"})',
        'sum(inference_queue_depth{namespace="team-b"})',
    ]


def test_a_refused_query_is_not_sent_and_its_pool_says_why() -> None:
    source = RecordingSource()
    spy = PoolKey(NS, "spy")
    pools = {spy: _pool('sum(q{namespace="team-b"})', arrival='sum(a{namespace=~".+"})')}

    observed = _observe(pools, source)

    assert source.asked == ['sum(arrivals{namespace="team-a",tier="free"})']
    problem = observed.metrics_errors[spy]
    assert problem.reason == "QueryOutsideNamespace"
    assert problem.message.startswith("spec.queue.query: ")
    assert observed.queue[spy] is None and observed.arrival[spy] is None  # holds capacity


def test_without_confinement_queries_are_sent_as_written() -> None:
    source = RecordingSource()
    pools = {PoolKey(NS, "chat"): _pool('sum(q{namespace="team-b"})')}

    _observe(pools, source, label=None)

    assert 'sum(q{namespace="team-b"})' in source.asked


def test_power_budget_queries_are_the_admins_and_are_not_rewritten() -> None:
    source = RecordingSource()
    budget = parse_budget(
        {
            "capKilowatts": 100,
            "scope": {},
            "measurement": {
                "type": "Prometheus",
                "prometheus": {"query": "sum(DCGM_FI_DEV_POWER_USAGE)"},
            },
        }
    )
    assert budget.value is not None, budget.errors

    _observe({}, source, budgets={"site": budget.value})

    assert source.asked == ["sum(DCGM_FI_DEV_POWER_USAGE)"]


def test_the_batch_carries_the_confined_selectors_only() -> None:
    prom = FakePrometheus()
    url, server = prom.serve()
    try:
        source = PrometheusSource(url, timeout=5)
        pools = {PoolKey(NS, "chat"): _pool("sum(inference_queue_depth)")}

        _observe(pools, source)
    finally:
        server.shutdown()
        server.server_close()

    (expression,) = prom.expressions
    assert 'inference_queue_depth{namespace="team-a"}' in expression
    assert "inference_queue_depth)" not in expression  # never the unconfined selector


@pytest.mark.parametrize(
    "query",
    [
        # A quote inside a label value, rendered back without its escape, would send other
        # PromQL in the freshness probe: another namespace's series, or a forged part tag.
        'sum(x{pool="a\\"} or on() vector(1) or y{b=\\""})',
        'sum(x{pool="a\\"}))) or label_replace(vector(0), \\"gpufleet_part\\", \\"7\\", \\"\\", \\"\\") or (((y{b=\\""})',
        'sum(x{pool="\\""})',
    ],
)
def test_a_label_value_holding_a_quote_stays_one_selector_in_the_freshness_probe(
    query: str,
) -> None:
    checked = check(confine(query, label="namespace", namespace=NS))

    for selector in checked.selectors:
        parsed = promql_parser.parse(selector.text)
        assert isinstance(parsed, promql_parser.VectorSelector), selector.text
        assert 'namespace="team-a"' in str(parsed.prettify())
    assert "vector(" not in "".join(s.text.split('"')[0] for s in checked.selectors)


# -- Prometheus's words never reach a condition ------------------------------------------


@dataclass
class PlantingPrometheus(FakePrometheus):
    """Answers every request with `reply`, text planted by a test."""

    reply: tuple[int, dict[str, Any]] = (200, {})

    def answer(self, expression: str) -> tuple[int, dict[str, Any]]:
        self.expressions.append(expression)
        return self.reply


def _vector(value: Any, result_type: str = "vector") -> dict[str, Any]:
    series = {"metric": {"gpufleet_part": "0", "namespace": SECRET}, "value": [1.0, value]}
    return {"status": "success", "data": {"resultType": result_type, "result": [series]}}


def _error(error_type: str) -> dict[str, Any]:
    return {
        "status": "error",
        "errorType": error_type,
        "error": f'found duplicate series for the match group {{namespace="{SECRET}"}}',
    }


PLANTED = {
    "refused": (
        (422, _error("execution")),
        "QueryFailed",
        "Prometheus refused the query (execution)",
    ),
    "refused with a planted type": ((400, _error(SECRET)), "QueryFailed", "(unknown)"),
    "not a number": ((200, _vector(SECRET)), "ValueOutOfRange", "the sample is not a number"),
    "not a vector": (
        (200, _vector("1", result_type=SECRET)),
        "PrometheusUnavailable",
        "an answer that is not an instant vector",
    ),
    "failing": ((503, _error("unavailable")), "PrometheusUnavailable", "HTTP 503"),
}


@pytest.fixture
def caplog_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


@pytest.mark.parametrize(("reply", "reason", "says"), PLANTED.values(), ids=list(PLANTED))
def test_prometheus_text_never_reaches_a_condition(
    reply: tuple[int, dict[str, Any]],
    reason: str,
    says: str,
    caplog_debug: pytest.LogCaptureFixture,
) -> None:
    prom = PlantingPrometheus(reply=reply)
    url, server = prom.serve()
    key = PoolKey(NS, "chat")
    spec = _pool("sum(inference_queue_depth)")
    try:
        observed = _observe({key: spec}, PrometheusSource(url, timeout=5))
    finally:
        server.shutdown()
        server.server_close()
    plan = PoolPlan(key, 0, 0, {}, 0, 0, 0, 0.0, False, ())

    conditions = pool_conditions(spec, plan, observed.metrics_errors.get(key), None)

    metrics = next(c for c in conditions if c.type == "MetricsAvailable")
    assert (metrics.status, metrics.reason) == (False, reason)
    assert metrics.message.startswith("spec.queue.query: ")
    assert says in metrics.message
    assert all(SECRET not in c.message for c in conditions)
    # The log may keep Prometheus's text, at debug level only: kopf can post logs as Events.
    loud = [r for r in caplog_debug.records if r.levelno >= logging.INFO]
    assert all(SECRET not in r.getMessage() for r in loud)


# -- Off by default in the chart, on where the examples install it ------------------------


def _operator_args(values: dict[str, Any]) -> list[str]:
    from chart.helm import of_kind, render

    (deployment,) = of_kind(render(values), "Deployment")
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def test_the_chart_confines_queries_only_when_asked() -> None:
    assert not any("confine" in a for a in _operator_args({}))
    on = _operator_args(
        {"operator.confineQueries": True, "operator.queryNamespaceLabel": "exported_namespace"}
    )
    assert "--confine-queries" in on
    assert "--query-namespace-label=exported_namespace" in on


# -- On the test bed's real Prometheus ---------------------------------------------------


@pytest.mark.e2e
def test_a_pool_reads_only_its_namespaces_series_on_a_real_prometheus(
    testbed: Testbed, namespace: str
) -> None:
    if not testbed.prometheus_url:
        pytest.skip("no Prometheus on this test bed")
    other = namespace.replace("e2e-", "e2e-other-")  # a label value only
    exporter = testbed.exporter()
    exporter.set_queue(namespace, "shared", 3)
    exporter.set_queue(other, "shared", 500)
    exporter.set_queue(other, "victim", 77)
    own, spy = PoolKey(namespace, "own"), PoolKey(namespace, "spy")
    pools = {
        own: _pool('sum(inference_queue_depth{pool="shared"})'),
        spy: _pool(f'sum(inference_queue_depth{{namespace="{other}",pool="victim"}})'),
    }
    source = PrometheusSource(testbed.prometheus_url)

    def scraped() -> Any:
        # What the operator's tick observes with --confine-queries, on the real Prometheus.
        observed = _observe(pools, source)
        return observed if observed.queue[own] is not None else None

    try:
        observed = wait_for(scraped, 30, "the exporter's series in Prometheus")
    finally:
        for series in ((namespace, "shared"), (other, "shared"), (other, "victim")):
            exporter.drop_queue(*series)

    assert observed.queue[own] == 3  # its namespace's series only, not the other's 500
    assert observed.queue[spy] is None  # 77 is never read
    plan = PoolPlan(spy, 0, 0, {}, 0, 0, 0, 0.0, False, ())
    conditions = pool_conditions(pools[spy], plan, observed.metrics_errors[spy], None)
    metrics = next(c for c in conditions if c.type == "MetricsAvailable")
    assert (metrics.status, metrics.reason) == (False, "QueryOutsideNamespace")
    assert metrics.message.startswith("spec.queue.query: ")
    assert other not in metrics.message

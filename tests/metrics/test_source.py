"""Prometheus in: every query stands alone, whatever the others in its batch do or say."""

from __future__ import annotations

import asyncio

import pytest

from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable
from gpufleet.metrics.source import BATCH, FRESHNESS_SPREAD, PrometheusSource, Sample

from .fake_prometheus import FakePrometheus, canonical, queue_query, queue_selector

_q, _selector = queue_query, queue_selector


def _source(prom: FakePrometheus, max_age: float = 120.0) -> PrometheusSource:
    return PrometheusSource(prom.url, max_age=max_age, timeout=5)  # type: ignore[attr-defined]


def _pools(prom: FakePrometheus, *names: str, value: float = 7.0) -> list[str]:
    for name in names:
        prom.values[canonical(_q(name))] = [value]
        prom.updated[_selector(name)] = prom.now - 5
    return [_q(n) for n in names]


def _sample(result: object) -> Sample:
    assert isinstance(result, Sample), result
    return result


def _reason(result: object) -> MetricsReason:
    assert isinstance(result, MetricsUnavailable), result
    return result.reason


def test_a_hundred_queries_cost_one_request(prom: FakePrometheus) -> None:
    queries = _pools(prom, *(f"p{i}" for i in range(BATCH)))
    source = _source(prom)

    result = asyncio.run(source.sample_many(queries))

    assert source.requests == 1
    assert all(_sample(result[q]).value == 7.0 for q in queries)


def test_a_query_that_closes_the_parentheses_reads_nothing_of_the_others(
    prom: FakePrometheus,
) -> None:
    victim, neighbour = _pools(prom, "victim", "neighbour")
    forged = (
        f'{_q("attacker")}) or label_replace(vector(0), "gpufleet_part", "0", "", "") or (vector(1)'
    )
    commented = f"{_q('attacker')} # or"

    result = asyncio.run(_source(prom).sample_many([victim, forged, commented, neighbour]))

    assert _reason(result[forged]) == MetricsReason.INVALID_QUERY
    assert _sample(result[victim]).value == 7.0
    assert _sample(result[neighbour]).value == 7.0
    # What reached Prometheus is what the parser re-serialised: the comment is gone.
    assert all("#" not in e for e in prom.expressions)


def test_one_query_rejected_while_evaluating_fails_alone(prom: FakePrometheus) -> None:
    queries = _pools(prom, *(f"p{i}" for i in range(8)))
    prom.fail[canonical(queries[3])] = 422

    result = asyncio.run(_source(prom).sample_many(queries))

    assert _reason(result[queries[3]]) == MetricsReason.QUERY_FAILED
    assert "boom" not in str(result[queries[3]])  # Prometheus's text stays in the log
    assert all(_sample(result[q]).value == 7.0 for i, q in enumerate(queries) if i != 3)


def test_one_querys_500_fails_it_alone_in_the_same_tick(prom: FakePrometheus) -> None:
    queries = _pools(prom, *(f"p{i}" for i in range(BATCH)))
    bad = queries[5]
    prom.fail[canonical(bad)] = 500
    source = _source(prom)

    result = asyncio.run(source.sample_many(queries))

    assert _reason(result[bad]) == MetricsReason.UNREACHABLE
    assert all(isinstance(result[q], Sample) for q in queries if q != bad)
    assert source.requests <= 1 + 2 * 7  # the batch, then halves down to the query


def test_then_one_querys_500_costs_one_request(prom: FakePrometheus) -> None:
    queries = _pools(prom, *(f"p{i}" for i in range(2 * BATCH)))
    bad = queries[5]
    prom.fail[canonical(bad)] = 500
    source = _source(prom)
    asyncio.run(source.sample_many(queries))  # finds it

    before = source.requests
    result = asyncio.run(source.sample_many(queries))

    assert source.requests - before == 3  # the two batches, less the query, and the query
    assert all(isinstance(result[q], Sample) for q in queries if q != bad)


def test_prometheus_down_does_not_multiply_requests() -> None:
    source = PrometheusSource("http://127.0.0.1:9", timeout=2)
    queries = [f"vector({i})" for i in range(2 * BATCH)]

    for _ in range(3):
        result = asyncio.run(source.sample_many(queries))

    # Each tick: the two batches, and one split of the first to tell a bad query from an
    # outage; never more as the ticks go by.
    assert source.requests == 3 * (2 + 2)
    assert {_reason(r) for r in result.values()} == {MetricsReason.UNREACHABLE}


def test_a_series_older_than_the_limit_is_stale_though_the_evaluation_is_fresh(
    prom: FakePrometheus,
) -> None:
    fresh, old = _pools(prom, "fresh", "old")
    prom.updated[_selector("old")] = prom.now - 249

    result = asyncio.run(_source(prom, max_age=120).sample_many([fresh, old]))

    assert _reason(result[old]) == MetricsReason.STALE_SAMPLE
    assert _sample(result[fresh]).age == 5


def test_a_stale_series_keeps_one_message_while_it_stays_stale(prom: FakePrometheus) -> None:
    # The message lands in the pool's status: were it to carry the series' age, a stale
    # pool would be written again every tick.
    (query,) = _pools(prom, "chat")
    prom.updated[_selector("chat")] = prom.now - 300
    source = _source(prom, max_age=120)
    first = asyncio.run(source.sample_many([query]))[query]
    prom.now += 45
    later = asyncio.run(source.sample_many([query]))[query]

    assert _reason(first) == _reason(later) == MetricsReason.STALE_SAMPLE
    assert str(first) == str(later)
    assert "more than 120 s" in str(first)


def test_a_skewed_operator_clock_marks_nothing_stale(prom: FakePrometheus) -> None:
    # Ages are Prometheus's evaluation time minus its samples' times: the operator's clock
    # is not read at all, so a Prometheus an hour ahead or behind changes nothing.
    (query,) = _pools(prom, "chat")
    prom.now += 3600
    prom.updated[_selector("chat")] = prom.now - 5

    assert _sample(asyncio.run(_source(prom).sample_many([query]))[query]).value == 7.0


@pytest.mark.parametrize("raw", ["1e308", "NaN", "+Inf", "-Inf", "-1", "2e9"])
def test_absurd_values_are_out_of_range(prom: FakePrometheus, raw: str) -> None:
    bad, good = _pools(prom, "bad", "good")
    prom.values[canonical(bad)] = [raw]

    result = asyncio.run(_source(prom).sample_many([bad, good]))

    assert _reason(result[bad]) == MetricsReason.VALUE_OUT_OF_RANGE
    assert _sample(result[good]).value == 7.0


def test_a_denormal_plans_as_zero(prom: FakePrometheus) -> None:
    (query,) = _pools(prom, "tiny", value=1e-310)

    assert _sample(asyncio.run(_source(prom).sample_many([query]))[query]).value == 0.0


def test_ten_thousand_series_are_several_and_cost_two(prom: FakePrometheus) -> None:
    wide = 'inference_queue_depth{namespace="ns"}'
    prom.values[canonical(wide)] = [1.0] * 10_000

    result = asyncio.run(_source(prom).sample_many([wide]))

    assert _reason(result[wide]) == MetricsReason.SEVERAL_SERIES


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("sum(", MetricsReason.INVALID_QUERY),
        ("up[5m]", MetricsReason.INVALID_QUERY),
        ('"text"', MetricsReason.INVALID_QUERY),
        ('sum(inference_queue_depth{pool="none"})', MetricsReason.NO_SAMPLE),
    ],
)
def test_unusable_queries_say_why(prom: FakePrometheus, query: str, reason: MetricsReason) -> None:
    assert _reason(asyncio.run(_source(prom).sample_many([query]))[query]) == reason


def test_a_scalar_query_is_one_number(prom: FakePrometheus) -> None:
    prom.values["vector(3)"] = [3.0]

    assert _sample(asyncio.run(_source(prom).sample_many(["3"]))["3"]).value == 3.0


def test_freshness_is_probed_for_new_queries_then_a_share_a_call(prom: FakePrometheus) -> None:
    queries = _pools(prom, *(f"p{i}" for i in range(BATCH)))
    source = _source(prom)

    asyncio.run(source.sample_many(queries))
    first = prom.probes
    asyncio.run(source.sample_many(queries))

    assert first == BATCH
    assert prom.probes - first == BATCH // FRESHNESS_SPREAD


def test_a_series_that_stops_updating_is_stale_within_the_spread(prom: FakePrometheus) -> None:
    queries = _pools(prom, *(f"p{i}" for i in range(BATCH)))
    source = _source(prom, max_age=120)
    asyncio.run(source.sample_many(queries))  # all fresh
    prom.updated[_selector("p7")] = prom.now - 200

    results = [asyncio.run(source.sample_many(queries)) for _ in range(FRESHNESS_SPREAD)]

    assert _reason(results[-1][queries[7]]) == MetricsReason.STALE_SAMPLE
    assert all(isinstance(results[-1][q], Sample) for q in queries if q != queries[7])


def test_a_live_series_stays_fresh_however_slow_the_ticks(prom: FakePrometheus) -> None:
    # Ten 35 s ticks between probes would read a series scraped 5 s ago as 350 s old.
    queries = _pools(prom, *(f"p{i}" for i in range(BATCH)))
    elapsed = [0.0]
    source = PrometheusSource(prom.url, max_age=120, clock=lambda: elapsed[0])  # type: ignore[attr-defined]

    for _ in range(2 * FRESHNESS_SPREAD):
        prom.now += 35
        elapsed[0] += 35
        for i in range(BATCH):
            prom.updated[_selector(f"p{i}")] = prom.now - 5
        result = asyncio.run(source.sample_many(queries))

        assert all(isinstance(result[q], Sample) for q in queries)
        assert max(_sample(result[q]).age for q in queries) <= 120 / 4 + 35 + 5


@pytest.mark.parametrize(
    "query",
    [
        "+".join(["inference_queue_depth"] * 2000),  # a 2,000-node chain
        "(" * 40 + "inference_queue_depth" + ")" * 40,
        "sum(" + " + ".join(f'q{{s="{i}"}}' for i in range(20)) + ")",  # 20 selectors
        'sum({pool="chat"})',  # no metric name: its freshness cannot be read
    ],
)
def test_queries_too_large_or_unnamed_are_refused_before_any_request(
    prom: FakePrometheus, query: str
) -> None:
    source = _source(prom)

    result = asyncio.run(source.sample_many([query]))

    assert _reason(result[query]) == MetricsReason.INVALID_QUERY
    assert source.requests == 0


def test_a_range_over_series_that_are_gone_is_stale_but_a_default_is_not(
    prom: FakePrometheus,
) -> None:
    ranged = 'sum(rate(requests_total{pool="chat"}[5m]))'
    default = 'sum(inference_queue_depth{pool="none"}) or vector(0)'
    prom.values[canonical(ranged)] = [2.5]  # the range still holds samples of a dead series
    prom.values[canonical(default)] = [0.0]

    result = asyncio.run(_source(prom).sample_many([ranged, default]))

    assert _reason(result[ranged]) == MetricsReason.STALE_SAMPLE
    assert _sample(result[default]).value == 0.0


def test_an_age_grows_between_probes(prom: FakePrometheus) -> None:
    queries = _pools(prom, *(f"p{i}" for i in range(BATCH)))
    prom.updated[_selector("p50")] = prom.now - 100
    source = _source(prom, max_age=120)
    assert isinstance(asyncio.run(source.sample_many(queries))[queries[50]], Sample)

    prom.now += 30  # p50 is not probed again yet: what it read is 130 s old
    result = asyncio.run(source.sample_many(queries))

    assert _reason(result[queries[50]]) == MetricsReason.STALE_SAMPLE


def test_a_rejected_query_then_costs_one_request(prom: FakePrometheus) -> None:
    queries = _pools(prom, *(f"p{i}" for i in range(BATCH)))
    prom.fail[canonical(queries[9])] = 422
    source = _source(prom)
    asyncio.run(source.sample_many(queries))

    before = source.requests
    asyncio.run(source.sample_many(queries))

    assert source.requests - before == 2  # the batch less the query, and the query

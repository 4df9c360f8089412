"""Answers kept between ticks: a query is asked again once its refresh has passed, spread
over the ticks, never past the age limit, and never when it failed."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gpufleet.metrics.batch import Sample
from gpufleet.metrics.kept import KeptAnswers
from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable
from gpufleet.metrics.source import BATCH, PrometheusSource

from .fake_prometheus import FakePrometheus, canonical, queue_query, queue_selector

REFRESH = 5.0


_q, _selector = queue_query, queue_selector


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _set(prom: FakePrometheus, names: list[str], value: float) -> list[str]:
    for name in names:
        prom.values[canonical(_q(name))] = [value]
        prom.updated[_selector(name)] = prom.now - 5
    return [_q(n) for n in names]


def _tick(prom: FakePrometheus, clock: _Clock, seconds: float) -> None:
    clock.now += seconds
    prom.now += seconds


def _value(result: object) -> float:
    assert isinstance(result, Sample), result
    return result.value


def test_answers_are_kept_then_asked_again_spread_over_the_ticks_of_a_refresh(
    prom: FakePrometheus,
) -> None:
    names = [f"p{i}" for i in range(BATCH)]
    queries = _set(prom, names, 7.0)
    clock = _Clock()
    source = PrometheusSource(prom.url, refresh=REFRESH, clock=clock)  # type: ignore[attr-defined]
    asyncio.run(source.sample_many(queries))
    _set(prom, names, 9.0)  # a scrape brings new values

    renewed = []
    for _ in range(int(REFRESH)):
        _tick(prom, clock, 1.0)
        result = asyncio.run(source.sample_many(queries))
        renewed.append(sum(_value(result[q]) == 9.0 for q in queries))

    # Every query is asked again within one refresh, a share of them in each tick.
    assert renewed[-1] == len(queries)
    assert renewed == sorted(renewed)
    steps = [b - a for a, b in zip([0, *renewed], renewed, strict=False)]
    assert max(steps) < len(queries) / 2


def test_kept_answers_cost_no_request_until_they_are_due(prom: FakePrometheus) -> None:
    queries = _set(prom, [f"p{i}" for i in range(BATCH)], 7.0)
    clock = _Clock()
    source = PrometheusSource(prom.url, refresh=REFRESH, clock=clock)  # type: ignore[attr-defined]
    asyncio.run(source.sample_many(queries))
    for _ in range(int(REFRESH)):  # every query renewed once, at its phase
        _tick(prom, clock, 1.0)
        asyncio.run(source.sample_many(queries))
    asked = source.requests

    _tick(prom, clock, 0.5)  # the first renewed comes due again only a refresh after it was
    result = asyncio.run(source.sample_many(queries))

    assert source.requests == asked
    assert all(_value(result[q]) == 7.0 for q in queries)


def test_a_kept_answer_ages_as_it_is_kept() -> None:
    kept = KeptAnswers(REFRESH)
    kept.keep("q", Sample(3.0, 100.0, age=2.0), now=10.0)

    later = kept.answer("q", now=13.0)

    assert (later.value, later.time, later.age) == (3.0, 100.0, 5.0)


def test_a_kept_answer_is_asked_again_before_it_passes_the_age_limit(prom: FakePrometheus) -> None:
    (query,) = _set(prom, ["old"], 7.0)
    prom.updated[_selector("old")] = prom.now - 118  # scraped long ago, and no more since
    clock = _Clock()
    source = PrometheusSource(prom.url, max_age=120, refresh=60, clock=clock)  # type: ignore[attr-defined]
    assert _value(asyncio.run(source.sample_many([query]))[query]) == 7.0

    _tick(prom, clock, 3.0)
    result = asyncio.run(source.sample_many([query]))[query]

    assert isinstance(result, MetricsUnavailable)
    assert result.reason == MetricsReason.STALE_SAMPLE


def test_a_failed_query_is_asked_again_the_next_tick(prom: FakePrometheus) -> None:
    query = _q("late")
    clock = _Clock()
    source = PrometheusSource(prom.url, refresh=REFRESH, clock=clock)  # type: ignore[attr-defined]
    assert isinstance(asyncio.run(source.sample_many([query]))[query], MetricsUnavailable)

    _set(prom, ["late"], 4.0)
    _tick(prom, clock, 1.0)

    assert _value(asyncio.run(source.sample_many([query]))[query]) == 4.0


def test_no_refresh_asks_every_query_every_call(prom: FakePrometheus) -> None:
    queries = _set(prom, [f"p{i}" for i in range(BATCH)], 7.0)
    clock = _Clock()
    source = PrometheusSource(prom.url, clock=clock)  # type: ignore[attr-defined]

    for _ in range(3):
        _tick(prom, clock, 1.0)
        asyncio.run(source.sample_many(queries))

    assert source.requests == 3


def test_phases_spread_a_thousand_queries_over_a_refresh() -> None:
    kept = KeptAnswers(REFRESH)
    texts = [_q(f"p{i}") for i in range(1000)]
    for text in texts:
        kept.keep(text, Sample(1.0, 0.0), 0.0)

    due_by_second = [sum(kept.due(t, float(s)) for t in texts) for s in range(1, 6)]

    assert due_by_second[-1] == len(texts)
    firsts = [b - a for a, b in zip([0, *due_by_second], due_by_second, strict=False)]
    assert all(120 <= n <= 280 for n in firsts), firsts


class _Vector(BaseHTTPRequestHandler):
    """Any query: a vector of one pod's power."""

    asked = 0

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        type(self).asked += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [{"metric": {"namespace": "ns", "pod": "a"}, "value": [1.0, "350"]}],
            },
        }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_the_power_series_are_kept_for_a_refresh_too() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Vector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        clock = _Clock()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        source = PrometheusSource(url, refresh=REFRESH, clock=clock)
        query = "max by (namespace, pod) (max_over_time(DCGM_FI_DEV_POWER_USAGE[1h]))"
        first = asyncio.run(source.series(query))
        clock.now += REFRESH - 1
        again = asyncio.run(source.series(query))
        assert _Vector.asked == 1
        assert again == first == [({"namespace": "ns", "pod": "a"}, 350.0)]

        clock.now += 1
        asyncio.run(source.series(query))
        assert _Vector.asked == 2
    finally:
        server.shutdown()
        server.server_close()

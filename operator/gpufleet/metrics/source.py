"""Prometheus in: a seam as small as KEDA's scaler, `sample_many(queries) -> Sample | why not`.

Anything but one fresh number in range is MetricsUnavailable with a reason: a query that does
not parse, no series, several series, NaN, a negative or absurd value, a series older than
`max_age`, or a Prometheus that does not answer. The planner then holds capacity; it never
reads a missing metric as zero (KEDA issue 965).

Batches: a thousand pools asked one request each took most of a second-long tick (py-spy), so
queries go a hundred to a request, but only as `promql.check` re-serialised them, each tagged
with its index, so one query cannot read or decide another's series. How a failure spreads:
- Prometheus rejects a batch (HTTP 400/422: a query that fails while evaluating): the batch is
  split in halves at once, so the failure lands on the one query that causes it.
- Prometheus fails (5xx, timeout, no connection): nothing is retried in the tick (one 500 costs
  one request). If other batches of the same tick succeeded, the failed batch's queries are
  sent in batches half as large next tick, and so on to one query alone, so a query that
  times out every time ends up costing only itself. A tick in which every batch fails leaves
  the batch sizes alone: Prometheus is down, not one query.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable
from gpufleet.metrics.promql import CheckedQuery, check

__all__ = ["MetricsReason", "MetricsSource", "MetricsUnavailable", "PrometheusSource", "Sample"]

log = logging.getLogger(__name__)

BATCH = 100
CONCURRENCY = 4  # requests in flight to one Prometheus
# Queue depths, request rates and watts above this are a broken exporter, not demand.
MAX_VALUE = 1e9
# Smaller positive values are noise (1e-310 is a denormal): they plan as zero.
ZERO_BELOW = 1e-9
# Series read per query: one is the answer, a second proves it was not aggregated, and a
# query matching 10,000 series costs no more than that.
_TOP = 2
_TAG = "gpufleet_part"
_MAX_SPLIT = math.ceil(math.log2(BATCH))


@dataclass(frozen=True)
class Sample:
    value: float
    time: float  # when Prometheus evaluated the query, by its own clock
    age: float = 0.0  # seconds from the oldest newest sample of the series it reads to `time`


class MetricsSource(Protocol):
    async def sample_many(
        self, queries: Sequence[str]
    ) -> dict[str, Sample | MetricsUnavailable]: ...


class _Rejected(Exception):
    """Prometheus refused the batch's expression (HTTP 400 or 422): a query's fault."""


class _Unreachable(Exception):
    """Prometheus did not answer usefully: its fault, or the network's."""


@functools.lru_cache(maxsize=8192)
def _checked(query: str) -> CheckedQuery | MetricsUnavailable:
    try:
        return check(query)
    except MetricsUnavailable as exc:
        return exc


def batch_expression(queries: Sequence[CheckedQuery]) -> str:
    """One expression that answers every query and the freshness of the series each reads,
    each result tagged `<index>` or `<index>/<selector>`."""
    parts: list[str] = []
    for i, query in enumerate(queries):
        parts.append(f'label_replace(topk({_TOP}, {query.text}), "{_TAG}", "{i}", "", "")')
        # timestamp() drops the metric name; a copy of it keeps series of different
        # metrics with the same labels apart, which Prometheus would otherwise refuse.
        parts.extend(
            f'label_replace(min(timestamp(label_replace({selector}, "{_TAG}", "$1", '
            f'"__name__", "(.+)"))), "{_TAG}", "{i}/{j}", "", "")'
            for j, selector in enumerate(query.selectors)
        )
    return " or ".join(parts)


def in_range(raw: object) -> float:
    """A sample's value if it is a number a queue, rate or power can be."""
    try:
        value = float(str(raw))
    except ValueError:
        raise MetricsUnavailable(
            f"the sample {str(raw)[:32]!r} is not a number", MetricsReason.VALUE_OUT_OF_RANGE
        ) from None
    if not math.isfinite(value) or value < 0 or value > MAX_VALUE:
        raise MetricsUnavailable(
            f"the sample is {value:g}; a usable one is between 0 and {MAX_VALUE:g}",
            MetricsReason.VALUE_OUT_OF_RANGE,
        )
    return 0.0 if value < ZERO_BELOW else value


def read_batch(
    count: int, result: Sequence[Mapping[str, Any]], max_age: float
) -> list[Sample | MetricsUnavailable]:
    """Each of `count` queries' answer from a batch's result (see batch_expression)."""
    values: dict[str, list[Any]] = {}
    probes: dict[str, list[float]] = {}
    evaluated = 0.0
    for series in result:
        tag = str((series.get("metric") or {}).get(_TAG, ""))
        stamp, raw = series["value"]
        evaluated = float(stamp)
        index, _, selector = tag.partition("/")
        if selector:
            probes.setdefault(index, []).append(float(raw))
        else:
            values.setdefault(index, []).append(raw)
    out: list[Sample | MetricsUnavailable] = []
    for i in range(count):
        try:
            out.append(_one(values.get(str(i), []), probes.get(str(i), []), evaluated, max_age))
        except MetricsUnavailable as exc:
            out.append(exc)
    return out


def _one(values: list[Any], newest: list[float], evaluated: float, max_age: float) -> Sample:
    if not values:
        raise MetricsUnavailable("the query returned no series", MetricsReason.NO_SAMPLE)
    if len(values) > 1:
        raise MetricsUnavailable(
            "the query returned more than one series; aggregate it, e.g. sum(...)",
            MetricsReason.SEVERAL_SERIES,
        )
    value = in_range(values[0])
    # Both times are Prometheus's, so a skew between its clock and ours changes nothing.
    age = max(0.0, evaluated - min(newest)) if newest else 0.0
    if age > max_age:
        raise MetricsUnavailable(
            f"a series the query reads was last updated {age:.0f} s before Prometheus "
            f"evaluated it (limit {max_age:.0f} s)",
            MetricsReason.STALE_SAMPLE,
        )
    return Sample(value, evaluated, age)


class PrometheusSource:
    def __init__(self, url: str, *, timeout: float = 5.0, max_age: float = 120.0) -> None:
        self._endpoint = url.rstrip("/") + "/api/v1/query"
        self._timeout = timeout
        self._max_age = max_age
        # Split depth per query (see the module doc); absent is a full batch.
        self._split: dict[str, int] = {}
        self._logged: dict[str, str] = {}
        self.requests = 0  # HTTP requests made, for tests and benchmarks

    async def sample_many(self, queries: Sequence[str]) -> dict[str, Sample | MetricsUnavailable]:
        out: dict[str, Sample | MetricsUnavailable] = {}
        valid: dict[str, CheckedQuery] = {}
        for query in dict.fromkeys(queries):
            checked = _checked(query)
            if isinstance(checked, MetricsUnavailable):
                out[query] = checked
            else:
                valid[query] = checked
        answers = await self._answer_all(list(dict.fromkeys(valid.values())))
        out.update({query: answers[checked] for query, checked in valid.items()})
        return out

    def _batches(self, queries: list[CheckedQuery]) -> list[list[CheckedQuery]]:
        by_depth: dict[int, list[CheckedQuery]] = {}
        for query in queries:
            by_depth.setdefault(self._split.get(query.text, 0), []).append(query)
        batches: list[list[CheckedQuery]] = []
        for depth, members in sorted(by_depth.items()):
            size = max(1, BATCH >> depth)
            batches.extend(members[i : i + size] for i in range(0, len(members), size))
        return batches

    async def _answer_all(
        self, queries: list[CheckedQuery]
    ) -> dict[CheckedQuery, Sample | MetricsUnavailable]:
        if not queries:
            return {}
        batches = self._batches(queries)
        gate = asyncio.Semaphore(CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            done = await asyncio.gather(*(self._answer(session, gate, b) for b in batches))
        failed = [b for b, (_, down) in zip(batches, done, strict=True) if down]
        if failed and len(failed) < len(batches):  # some batches fail, not Prometheus
            for batch in failed:
                for query in batch:
                    self._split[query.text] = min(_MAX_SPLIT, self._split.get(query.text, 0) + 1)
        answers: dict[CheckedQuery, Sample | MetricsUnavailable] = {}
        for batch, (part, down) in zip(batches, done, strict=True):
            if not down:
                for query in batch:
                    self._split.pop(query.text, None)
            answers.update(part)
        return answers

    async def _answer(
        self, session: aiohttp.ClientSession, gate: asyncio.Semaphore, batch: list[CheckedQuery]
    ) -> tuple[dict[CheckedQuery, Sample | MetricsUnavailable], bool]:
        """The batch's answers, and whether Prometheus failed it (not one of its queries)."""
        try:
            async with gate:
                result = await self._post(session, batch_expression(batch))
        except _Unreachable as exc:
            failed = MetricsUnavailable(
                f"Prometheus did not answer: {exc}", MetricsReason.UNREACHABLE
            )
            return dict.fromkeys(batch, failed), True
        except _Rejected as exc:
            if len(batch) == 1:
                self._log_once(batch[0].text, str(exc))
                rejected = MetricsUnavailable(
                    "Prometheus rejected the query while evaluating it; the operator's log "
                    "has its error",
                    MetricsReason.QUERY_FAILED,
                )
                return {batch[0]: rejected}, False
            half = len(batch) // 2
            parts = await asyncio.gather(
                self._answer(session, gate, batch[:half]), self._answer(session, gate, batch[half:])
            )
            return {**parts[0][0], **parts[1][0]}, parts[0][1] or parts[1][1]
        try:
            answers = read_batch(len(batch), result, self._max_age)
        except (KeyError, TypeError, ValueError):
            malformed = MetricsUnavailable(
                "Prometheus's answer is malformed", MetricsReason.UNREACHABLE
            )
            return dict.fromkeys(batch, malformed), True
        return dict(zip(batch, answers, strict=True)), False

    async def _post(self, session: aiohttp.ClientSession, expression: str) -> list[Any]:
        self.requests += 1
        # POST: a batch of a hundred queries does not fit in a URL. Prometheus gives up at
        # the same time we do, so an abandoned query does not go on using its CPU.
        form = {"query": expression, "timeout": f"{self._timeout:g}s"}
        try:
            async with session.post(self._endpoint, data=form) as response:
                status = response.status
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Unreachable(type(exc).__name__) from None
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        if status in (400, 422):
            raise _Rejected(f"{answer.get('errorType', status)}: {answer.get('error', '')}")
        data = answer.get("data")
        if status != 200 or answer.get("status") != "success" or not isinstance(data, dict):
            raise _Unreachable(f"HTTP {status}")
        result = data.get("result")
        if data.get("resultType") != "vector" or not isinstance(result, list):
            raise _Unreachable(f"an answer of type {data.get('resultType')!r}")
        return result

    def _log_once(self, query: str, error: str) -> None:
        if self._logged.get(query) != error:
            if len(self._logged) > BATCH * 100:
                self._logged.clear()
            self._logged[query] = error
            log.warning("Prometheus rejected a query: %s", error, extra={"query": query})

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
- Prometheus fails a batch (5xx, timeout) while it answers others of the tick: the failed
  batch is halved in the same tick, within a request budget, down to the query that fails,
  and the others are answered. The query found is sent alone from then on: in later ticks
  its 500 costs its own request and nothing else. When the budget runs out, what is left is
  sent in batches half as large the next tick.
- Prometheus fails every batch (down, unreachable): nothing is retried in the tick and no
  batch is split: Prometheus is in trouble, not one query, and is not sent more.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import aiohttp

from gpufleet.metrics.batch import Answer, Sample, form_quoted, in_range, quoted_batch_expression
from gpufleet.metrics.kept import KeptAnswers
from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable
from gpufleet.metrics.promql import CheckedQuery, check

__all__ = [
    "MetricsReason",
    "MetricsSource",
    "MetricsUnavailable",
    "PrometheusSource",
    "Sample",
    "SeriesSource",
]

log = logging.getLogger(__name__)

BATCH = 100
CONCURRENCY = 8  # requests in flight to one Prometheus
FRESHNESS_SPREAD = 10
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# A query's freshness is probed again at least this often (a share of `max_age`), however
# slow the ticks: its age grows from its last probe, so this bounds how far it overstates.
REPROBE_SHARE = 4
# Extra requests a call may make to find the queries Prometheus rejects or fails on: enough
# to halve two batches of a hundred down to one query each.
ISOLATION_REQUESTS = 4 * math.ceil(math.log2(BATCH))
_MAX_SPLIT = math.ceil(math.log2(BATCH))


class MetricsSource(Protocol):
    async def sample_many(
        self, queries: Sequence[str]
    ) -> dict[str, Sample | MetricsUnavailable]: ...


Labelled = tuple[dict[str, str], float]


@runtime_checkable
class SeriesSource(Protocol):
    """A second, optional capability: every series of one query with its labels, for the
    admin's per-pod power query. Series whose value is not a usable number are left out."""

    async def series(self, query: str) -> list[Labelled] | MetricsUnavailable: ...


@dataclass
class _Call:
    """One sample_many: its HTTP session, its limit on requests in flight, the queries whose
    freshness it probes, and the extra requests it may still spend isolating failures."""

    session: aiohttp.ClientSession
    gate: asyncio.Semaphore
    probed: Collection[str]
    budget: int = 0


def _unreachable(why: str) -> MetricsUnavailable:
    return MetricsUnavailable(f"Prometheus did not answer: {why}", MetricsReason.UNREACHABLE)


# The error types of Prometheus's HTTP API: a condition names one of these, never the reply's
# own words, which can quote other series' labels (another tenant's).
_ERROR_TYPES = frozenset(
    {"bad_data", "execution", "timeout", "canceled", "internal", "unavailable", "not_found"}
)


class _Rejected(Exception):
    """Prometheus refused the batch's expression (HTTP 400 or 422): a query's fault. Its
    text is Prometheus's, for the debug log only; `error_type` is one of _ERROR_TYPES."""

    def __init__(self, error_type: object, error: object) -> None:
        super().__init__(f"{error_type}: {error}")
        self.error_type = (
            error_type if isinstance(error_type, str) and error_type in _ERROR_TYPES else "unknown"
        )


class _Unreachable(Exception):
    """Prometheus did not answer usefully: its fault, or the network's."""


@functools.lru_cache(maxsize=8192)
def _checked(query: str) -> CheckedQuery | MetricsUnavailable:
    try:
        return check(query)
    except MetricsUnavailable as exc:
        return exc


class PrometheusSource:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        max_age: float = 120.0,
        refresh: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`refresh`: seconds an answer is kept before its query is asked again
        (metrics/kept.py); 0 asks every query every call."""
        self._endpoint = url.rstrip("/") + "/api/v1/query"
        self._timeout = timeout
        self._max_age = max_age
        # Split depth per query (see the module doc); absent is a full batch.
        self._split: dict[str, int] = {}
        self._logged: dict[str, str] = {}
        # Per query: the call that last probed its freshness, and when (Prometheus's clock)
        # the least recently updated series it reads was last updated (None: reads nothing).
        self._calls = 0
        self._clock = clock  # only ever differenced: no skew with Prometheus's
        self._probed: dict[str, int] = {}
        self._probed_at: dict[str, float] = {}
        self._newest: dict[str, float | None] = {}
        self._kept = KeptAnswers(refresh, max_age)
        # The last series read (one query is read this way, the power query): text, answer,
        # when it was read; kept for `refresh` seconds, as the queries' answers are.
        self._series_kept: tuple[str, list[Labelled], float] | None = None
        self.requests = 0  # HTTP requests made, for tests and benchmarks
        self.asked = 0  # queries sent (not answered from those kept), the same

    async def sample_many(self, queries: Sequence[str]) -> dict[str, Sample | MetricsUnavailable]:
        out: dict[str, Sample | MetricsUnavailable] = {}
        valid: dict[str, CheckedQuery] = {}
        for query in dict.fromkeys(queries):
            checked = _checked(query)
            if isinstance(checked, MetricsUnavailable):
                out[query] = checked
            else:
                valid[query] = checked
        unique = list(dict.fromkeys(valid.values()))
        self._forget_all_but({q.text for q in unique})
        now = self._clock()
        asked = [q for q in unique if self._kept.due(q.text, now)]
        self.asked += len(asked)
        answers = await self._answer_all(asked, self._due(asked))
        for checked, answer in answers.items():
            if isinstance(answer, Sample):
                self._kept.keep(checked.text, answer, now)
            else:
                self._kept.drop(checked.text)
        out.update(
            {
                query: answers[checked]
                if checked in answers
                else self._kept.answer(checked.text, now)
                for query, checked in valid.items()
            }
        )
        return out

    async def series(self, query: str) -> list[Labelled] | MetricsUnavailable:
        """Sent alone, one request a tick (or a refresh, where one is set): its answer is a
        vector, not one number, so it has no place in a batch's `topk`. A series that
        stopped updating drops out of the answer once the query's own range (and
        Prometheus's lookback) passes it."""
        checked = _checked(query)
        if isinstance(checked, MetricsUnavailable):
            return checked
        now = self._clock()
        kept = self._series_kept
        if kept is not None and kept[0] == checked.text and 0 <= now - kept[2] < self._kept.refresh:
            return list(kept[1])
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                result = await self._post(session, form_quoted(checked.text))
        except _Unreachable as exc:
            return _unreachable(str(exc))
        except _Rejected as exc:
            self._log_once(checked.text, str(exc))
            return MetricsUnavailable(
                "Prometheus rejected the query while evaluating it; the operator's log has "
                "its error",
                MetricsReason.QUERY_FAILED,
            )
        out: list[Labelled] = []
        for item in result:
            try:
                labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
                out.append((labels, in_range(item["value"][1])))
            except (MetricsUnavailable, AttributeError, KeyError, IndexError, TypeError):
                continue  # NaN, negative, absurd or malformed: that series is not measured
        self._series_kept = (checked.text, out, now) if self._kept.refresh > 0 else None
        return list(out)

    def _due(self, queries: Sequence[CheckedQuery]) -> set[str]:
        """The queries whose freshness this call probes: new ones, the longest unprobed
        share of the rest, and any not probed for `max_age / REPROBE_SHARE` seconds. The
        last keeps slow ticks (a fleet scaling out at 1,000 pools took 35 s a tick) from
        ageing live series past the limit: 10 such ticks between probes read as 350 s."""
        self._calls += 1
        texts = [q.text for q in queries]
        seen = sorted((t for t in texts if t in self._probed), key=self._probed.__getitem__)
        share = math.ceil(len(texts) / FRESHNESS_SPREAD)
        due = {t for t in texts if t not in self._probed} | set(seen[:share])
        overdue = self._clock() - self._max_age / REPROBE_SHARE
        return due | {t for t in seen[share:] if self._probed_at.get(t, -math.inf) <= overdue}

    def _forget_all_but(self, texts: set[str]) -> None:
        for memory in (self._split, self._probed, self._probed_at, self._newest, self._logged):
            for gone in [t for t in memory if t not in texts]:
                del memory[gone]
        self._kept.forget_all_but(texts)

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
        self, queries: list[CheckedQuery], probed: set[str]
    ) -> dict[CheckedQuery, Sample | MetricsUnavailable]:
        if not queries:
            return {}
        batches = self._batches(queries)
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            call = _Call(session, asyncio.Semaphore(CONCURRENCY), probed, ISOLATION_REQUESTS)
            done = await asyncio.gather(*(self._answer(call, b) for b in batches))
            answers: dict[CheckedQuery, Sample | MetricsUnavailable] = {}
            failed: list[list[CheckedQuery]] = []
            for batch, (part, down) in zip(batches, done, strict=True):
                answers.update(part)
                if down:
                    failed.append(batch)
                else:
                    self._forget_split(batch)
            # Halve failed batches in this tick while that shows Prometheus answering. When
            # every batch failed, one split of the first says whether it is down.
            up = len(failed) < len(batches)
            for batch in failed:
                if not up and batch is not failed[0]:
                    continue  # Prometheus is down: nothing is split or sent again
                found, answered = await self._isolate(call, batch, up)
                up = up or answered
                answers.update(found)
        return answers

    async def _isolate(
        self, call: _Call, batch: list[CheckedQuery], up: bool
    ) -> tuple[dict[CheckedQuery, Sample | MetricsUnavailable], bool]:
        """The answers of a batch Prometheus failed, halved down to the queries that fail
        while one half of each split is answered; and whether any part was answered. `up`:
        Prometheus answered other batches, so what is not found now is split next tick."""
        if len(batch) == 1:
            self._split[batch[0].text] = _MAX_SPLIT  # alone from the next tick on
            return {batch[0]: _unreachable("it fails alone")}, False
        if call.budget < 2:
            if up:
                self._split_later(batch)
            return dict.fromkeys(batch, _unreachable(f"a batch of {len(batch)} failed")), False
        call.budget -= 2
        half = len(batch) // 2
        parts = (batch[:half], batch[half:])
        done = await asyncio.gather(*(self._answer(call, part) for part in parts))
        if all(down for _, down in done):  # both halves: Prometheus, or more than one query
            if up:
                self._split_later(batch)
            return {**done[0][0], **done[1][0]}, False
        answers: dict[CheckedQuery, Sample | MetricsUnavailable] = {}
        for part, (found, down) in zip(parts, done, strict=True):
            if down:
                found, _ = await self._isolate(call, part, True)
            else:
                self._forget_split(part)
            answers.update(found)
        return answers, True

    def _split_later(self, batch: list[CheckedQuery]) -> None:
        """Not found in this tick: sent in batches half as large the next."""
        for query in batch:
            self._split[query.text] = min(_MAX_SPLIT, self._split.get(query.text, 0) + 1)

    def _forget_split(self, batch: list[CheckedQuery]) -> None:
        """Answered: a batch twice as large next tick, back to a full one step by step, so
        a query that fails only in a full batch does not set off a search every tick."""
        for query in batch:
            depth = self._split.get(query.text, 0) - 1
            if depth > 0:
                self._split[query.text] = depth
            else:
                self._split.pop(query.text, None)

    async def _answer(
        self, call: _Call, batch: list[CheckedQuery]
    ) -> tuple[dict[CheckedQuery, Sample | MetricsUnavailable], bool]:
        """The batch's answers, and whether Prometheus failed it (not one of its queries)."""
        try:
            async with call.gate:
                result = await self._post(call.session, quoted_batch_expression(batch, call.probed))
        except _Unreachable as exc:
            return dict.fromkeys(batch, _unreachable(str(exc))), True
        except _Rejected as exc:
            if len(batch) == 1:
                # Alone from the next tick on: its rejection costs one request, its own.
                self._split[batch[0].text] = _MAX_SPLIT
                self._log_once(batch[0].text, str(exc))
                rejected = MetricsUnavailable(
                    f"Prometheus refused the query ({exc.error_type}); the operator's debug "
                    "log has its error",
                    MetricsReason.QUERY_FAILED,
                )
                return {batch[0]: rejected}, False
            if call.budget < 2:
                self._split_later(batch)
                refused = MetricsUnavailable(
                    "Prometheus rejected the batch of this query; it is split next tick",
                    MetricsReason.QUERY_FAILED,
                )
                return dict.fromkeys(batch, refused), False
            call.budget -= 2
            half = len(batch) // 2
            parts = await asyncio.gather(
                self._answer(call, batch[:half]), self._answer(call, batch[half:])
            )
            return {**parts[0][0], **parts[1][0]}, parts[0][1] or parts[1][1]
        try:
            answer = Answer.of(result)
        except (KeyError, TypeError, ValueError):
            return dict.fromkeys(batch, _unreachable("a malformed answer")), True
        return {q: self._sample(answer, i, q, call.probed) for i, q in enumerate(batch)}, False

    def _sample(
        self, answer: Answer, index: int, query: CheckedQuery, probed: Collection[str]
    ) -> Sample | MetricsUnavailable:
        if query.text in probed:
            self._newest[query.text] = answer.newest_update(index, query)
            self._probed[query.text] = self._calls
            self._probed_at[query.text] = self._clock()
        newest = self._newest.get(query.text)
        # Ages are Prometheus's evaluation time less its samples' times: no skew with ours.
        age = 0.0 if newest is None else max(0.0, answer.evaluated - newest)
        try:
            return answer.sample(index, age, self._max_age)
        except MetricsUnavailable as exc:
            return exc

    async def _post(self, session: aiohttp.ClientSession, quoted: str) -> list[Any]:
        """Evaluates the form-quoted expression `quoted`."""
        self.requests += 1
        # POST: a batch of a hundred queries does not fit in a URL. Prometheus gives up at
        # the same time we do, so an abandoned query does not go on using its CPU.
        form = f"query={quoted}&timeout={form_quoted(f'{self._timeout:g}s')}"
        try:
            async with session.post(
                self._endpoint, data=form.encode("ascii"), headers=_FORM
            ) as response:
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
            raise _Rejected(answer.get("errorType"), answer.get("error", ""))
        data = answer.get("data")
        if status != 200 or answer.get("status") != "success" or not isinstance(data, dict):
            raise _Unreachable(f"HTTP {status}")
        result = data.get("result")
        if data.get("resultType") != "vector" or not isinstance(result, list):
            raise _Unreachable("an answer that is not an instant vector")
        return result

    def _log_once(self, query: str, error: str) -> None:
        """Prometheus's error text at debug level only: it can quote other tenants' labels."""
        if self._logged.get(query) != error:
            self._logged[query] = error
            log.warning("Prometheus refused a query; --verbose logs why", extra={"query": query})
            log.debug("Prometheus refused a query: %s", error, extra={"query": query})

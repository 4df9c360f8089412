"""Prometheus in: a seam as small as KEDA's scaler, `sample(query) -> Sample`.

Anything but one fresh, finite number is MetricsUnavailable: an empty result, several
series, NaN, a sample older than `max_age`, or an unreachable server. The planner then holds
capacity; it never reads a missing metric as zero (KEDA issue 965).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry


@dataclass(frozen=True)
class Sample:
    value: float
    time: float


class MetricsUnavailable(Exception):
    """The query gave no usable sample; `reason` is QueryFailed or StaleSample."""

    def __init__(self, message: str, reason: str = "QueryFailed") -> None:
        super().__init__(message)
        self.reason = reason


class MetricsSource(Protocol):
    async def sample(self, query: str) -> Sample: ...

    async def sample_many(
        self, queries: Sequence[str]
    ) -> dict[str, Sample | MetricsUnavailable]: ...


BATCH = 100
_LABEL = "gpufleet_query"


def one_sample(result: Any, now: float, max_age: float) -> Sample:
    """The single sample of an instant-query result, or why there is none."""
    if not isinstance(result, list) or not result:
        raise MetricsUnavailable("query returned no series")
    if len(result) > 1:
        raise MetricsUnavailable(
            f"query returned {len(result)} series; aggregate it, e.g. sum(...)"
        )
    try:
        stamp, raw = result[0]["value"]
        value, at = float(raw), float(stamp)
    except (KeyError, TypeError, ValueError) as exc:
        raise MetricsUnavailable(f"unreadable sample: {type(exc).__name__}") from None
    if not math.isfinite(value):
        raise MetricsUnavailable(f"sample is {raw}")
    if now - at > max_age:
        raise MetricsUnavailable(f"sample is {now - at:.0f}s old", reason="StaleSample")
    return Sample(value, at)


class PrometheusSource:
    """prometheus-api-client is synchronous: every query runs in a worker thread."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        max_age: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # A hung Prometheus must not hang the fleet loop: the client's default is no timeout.
        # No retries inside a tick either: the next tick is the retry, a second later.
        # POST: a batch of a hundred queries does not fit in a URL.
        self._client = PrometheusConnect(
            url=url,
            retry=Retry(total=0, connect=0, read=0, status=0),
            timeout=math.ceil(timeout),
            method="POST",
        )
        self._max_age = max_age
        self._clock = clock

    def _query(self, query: str) -> Any:
        return self._client.custom_query(query)

    async def sample(self, query: str) -> Sample:
        try:
            result = await asyncio.to_thread(self._query, query)
        except Exception as exc:  # the client raises bare requests and its own errors
            raise MetricsUnavailable(
                f"query failed: {type(exc).__name__}: {str(exc)[:200]}"
            ) from None
        return one_sample(result, self._clock(), self._max_age)

    async def sample_many(self, queries: Sequence[str]) -> dict[str, Sample | MetricsUnavailable]:
        """Every query's sample, a hundred to a request: at a thousand pools, one HTTP request
        per query took most of a second-long tick (measured with py-spy)."""
        unique = list(dict.fromkeys(queries))
        chunks = [unique[i : i + BATCH] for i in range(0, len(unique), BATCH)]
        done = await asyncio.gather(*(asyncio.to_thread(self._batch, chunk) for chunk in chunks))
        return {q: r for part in done for q, r in part.items()}

    def _batch(self, chunk: list[str]) -> dict[str, Sample | MetricsUnavailable]:
        # Each query's series are tagged with its index, then split apart again, so each keeps
        # its own rules (no series, several series, stale) exactly as if asked alone.
        expression = " or ".join(
            f'label_replace(({query}), "{_LABEL}", "{i}", "", "")' for i, query in enumerate(chunk)
        )
        try:
            result = self._query(expression)
        except PrometheusApiClientException:
            # One bad query (or one returning a scalar) spoils the batch: ask one by one.
            return {query: self._single(query) for query in chunk}
        except Exception as exc:
            failed = MetricsUnavailable(f"query failed: {type(exc).__name__}: {str(exc)[:200]}")
            return dict.fromkeys(chunk, failed)
        by_index: dict[str, list[Any]] = {}
        for series in result if isinstance(result, list) else []:
            index = str((series.get("metric") or {}).get(_LABEL, ""))
            by_index.setdefault(index, []).append(series)
        now = self._clock()
        out: dict[str, Sample | MetricsUnavailable] = {}
        for i, query in enumerate(chunk):
            try:
                out[query] = one_sample(by_index.get(str(i), []), now, self._max_age)
            except MetricsUnavailable as exc:
                out[query] = exc
        return out

    def _single(self, query: str) -> Sample | MetricsUnavailable:
        try:
            return one_sample(self._query(query), self._clock(), self._max_age)
        except MetricsUnavailable as exc:
            return exc
        except Exception as exc:
            return MetricsUnavailable(f"query failed: {type(exc).__name__}: {str(exc)[:200]}")

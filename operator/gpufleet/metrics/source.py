"""Prometheus in: a seam as small as KEDA's scaler, `sample(query) -> Sample`.

Anything but one fresh, finite number is MetricsUnavailable: an empty result, several
series, NaN, a sample older than `max_age`, or an unreachable server. The planner then holds
capacity; it never reads a missing metric as zero (KEDA issue 965).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_api_client import PrometheusConnect
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
        self._client = PrometheusConnect(
            url=url, retry=Retry(total=0, connect=0, read=0, status=0), timeout=math.ceil(timeout)
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

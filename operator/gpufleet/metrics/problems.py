"""Why a query gave no usable number: a reason for conditions and metrics, and a message."""

from __future__ import annotations

from enum import StrEnum


class MetricsReason(StrEnum):
    """The `MetricsAvailable=False` reasons; each says what the pool's owner can do."""

    NOT_CONFIGURED = "PrometheusNotConfigured"  # the operator runs without --prometheus-url
    UNREACHABLE = "PrometheusUnavailable"  # connection, timeout or 5xx: nothing to fix here
    INVALID_QUERY = "InvalidQuery"  # does not parse, or is not one number
    QUERY_FAILED = "QueryFailed"  # Prometheus rejected it while evaluating
    NO_SAMPLE = "NoSample"  # no series matched
    SEVERAL_SERIES = "SeveralSeries"  # aggregate it, e.g. sum(...)
    VALUE_OUT_OF_RANGE = "ValueOutOfRange"  # NaN, infinite, negative or above the cap
    STALE_SAMPLE = "StaleSample"  # a series it reads has not been updated in time
    # reads, or may read, series outside the pool's namespace (--confine-queries)
    OUTSIDE_NAMESPACE = "QueryOutsideNamespace"


class MetricsUnavailable(Exception):
    """The query gave no usable sample, and why (`reason`)."""

    def __init__(self, message: str, reason: MetricsReason = MetricsReason.QUERY_FAILED) -> None:
        super().__init__(message)
        self.reason = reason

"""One wrapper for every driver: call time and errors by reason, and only typed errors out.

Callers (the fleet loop, conditions, metrics) rely on `DriverError.reason`; a raw SDK
exception would leak reply text (request ids, hosts, sometimes credentials) into logs,
status and Events, so anything untyped becomes a `DriverError` with a short summary: the
exception's type and HTTP status, never its text. The cause is not chained for the same
reason: kopf logs chained tracebacks.

Drivers must not import gpufleet.metrics (import-linter), so this module uses
prometheus_client directly; each CollectorRegistry gets its own metric objects so tests
can use a private registry.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from gpufleet.drivers.base import (
    DriverError,
    NodePoolDriver,
    NodePoolRef,
    NodePoolState,
    ProviderUnavailable,
    Throttled,
)

T = TypeVar("T")

# Driver calls range from a few milliseconds (a cache hit) to a minute (a slow cloud API).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class DriverMetrics:
    seconds: Histogram
    errors: Counter


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, DriverMetrics] = (
    weakref.WeakKeyDictionary()
)


def driver_metrics(registry: CollectorRegistry = REGISTRY) -> DriverMetrics:
    """The metric objects of `registry`, made once: a second registration would fail."""
    found = _by_registry.get(registry)
    if found is None:
        found = DriverMetrics(
            Histogram(
                "gpufleet_driver_call_seconds",
                "Duration of node-pool driver calls.",
                ["driver", "call"],
                buckets=BUCKETS,
                registry=registry,
            ),
            Counter(
                "gpufleet_driver_errors_total",
                "Failed node-pool driver calls by reason.",
                ["driver", "call", "reason"],
                registry=registry,
            ),
        )
        _by_registry[registry] = found
    return found


def _status(error: BaseException) -> int | None:
    # SDKs (kubernetes, botocore through its own drivers) put the HTTP status here.
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def as_driver_error(error: Exception, call: str) -> DriverError:
    """A typed error for `error`; already typed ones pass through unchanged."""
    if isinstance(error, DriverError):
        return error
    status = _status(error)
    summary = f"{call} failed: {type(error).__name__}" + (
        f" (HTTP {status})" if status is not None else ""
    )
    if status == 429:
        return Throttled(summary)
    if (status is not None and status >= 500) or isinstance(error, (OSError, TimeoutError)):
        return ProviderUnavailable(summary)
    if type(error).__name__ in ("MaxRetryError", "NewConnectionError", "ProtocolError"):
        # urllib3's connection failures; matched by name so drivers need not import it.
        return ProviderUnavailable(summary)
    return DriverError(summary)


class InstrumentedDriver:
    """Wraps a NodePoolDriver: same calls, measured, with only typed errors raised."""

    def __init__(
        self, inner: NodePoolDriver, *, driver: str, registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.inner = inner
        self.driver = driver
        self._metrics = driver_metrics(registry)

    async def _measure(self, call: str, run: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            return await run()
        except Exception as error:
            typed = as_driver_error(error, call)
            self._metrics.errors.labels(self.driver, call, typed.reason).inc()
            if typed is error:
                raise
            raise typed from None
        finally:
            # Cancellation is observed too: a slow call cut short is still a slow call.
            elapsed = time.perf_counter() - started
            self._metrics.seconds.labels(self.driver, call).observe(elapsed)

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        return await self._measure("get_pool", lambda: self.inner.get_pool(ref))

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        await self._measure(
            "set_target_size",
            lambda: self.inner.set_target_size(ref, size, action_id=action_id),
        )

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        await self._measure(
            "delete_nodes", lambda: self.inner.delete_nodes(ref, names, action_id=action_id)
        )

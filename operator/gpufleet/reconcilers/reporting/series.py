"""Which labelled series each pool has in the operator's metrics, so none outlives what it
describes: a gauge keeps its last value until removed, so a provider a pool left kept
showing replicas there, and every pool ever reported kept its series (about 15,000 at
1,000 pools, each scrape of them up to a second of the operator's CPU)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

from gpufleet.planner.types import PoolKey

# A metric and the label values after (namespace, pool).
_Series = tuple[Gauge | Counter, tuple[str, ...]]


@dataclass
class PoolSeries:
    """The series of each pool: gauges as its last report set them, counters as counted."""

    # Per pool: the gauges set at its last report, and every counter it has.
    _gauges: dict[PoolKey, set[_Series]] = field(default_factory=dict)
    _counters: dict[PoolKey, set[_Series]] = field(default_factory=dict)

    def report(self, key: PoolKey, values: dict[tuple[Gauge, tuple[str, ...]], float]) -> None:
        """Set the pool's gauges to `values`, and remove those it had that `values` lacks."""
        for (gauge, extra), value in values.items():
            gauge.labels(key.namespace, key.name, *extra).set(value)
        for gone in self._gauges.get(key, set()) - set(values):
            _remove(key, gone)
        self._gauges[key] = set(values)

    def count(self, key: PoolKey, counter: Counter, *extra: str) -> None:
        counter.labels(key.namespace, key.name, *extra).inc()
        self._counters.setdefault(key, set()).add((counter, extra))

    def forget(self, present: set[PoolKey]) -> None:
        """Remove every series of the pools not in `present`."""
        for store in (self._gauges, self._counters):
            for key in set(store) - present:
                for series in store.pop(key):
                    _remove(key, series)


def _remove(key: PoolKey, series: _Series) -> None:
    metric, extra = series
    with contextlib.suppress(KeyError):  # already gone
        metric.remove(key.namespace, key.name, *extra)

"""One request for many queries: the expression (pure) and how its answer splits apart.

Each query is wrapped as `label_replace(topk(2, <query>), "gpufleet_part", "<i>", "", "")`,
and the freshness probe of each series it reads (when asked for) as
`label_replace(min(timestamp(<selector>)), "gpufleet_part", "<i>/<j>", "", "")`. The parts are
joined with `or` as a balanced tree: a chain `a or b or c ...` makes Prometheus compare every
part with all before it (quadratic in the batch), a tree only with its log.
"""

from __future__ import annotations

import functools
import math
import time
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable
from gpufleet.metrics.promql import CheckedQuery

# Queue depths, request rates and watts above this are a broken exporter, not demand.
MAX_VALUE = 1e9
# Smaller positive values are noise (1e-310 is a denormal): they plan as zero.
ZERO_BELOW = 1e-9
# Series read per query: one is the answer, a second proves it was not aggregated, and a
# query matching 10,000 series costs no more than that.
TOP = 2
TAG = "gpufleet_part"


def _tree(parts: Sequence[str], opening: str = "(", union: str = " or ", closing: str = ")") -> str:
    if len(parts) == 1:
        return parts[0]
    half = len(parts) // 2
    left = _tree(parts[:half], opening, union, closing)
    right = _tree(parts[half:], opening, union, closing)
    return f"{opening}{left}{union}{right}{closing}"


@functools.lru_cache(maxsize=16384)
def form_quoted(text: str) -> str:
    """`text` as a form field's value (application/x-www-form-urlencoded)."""
    return urllib.parse.quote_plus(text)


def batch_expression(queries: Sequence[CheckedQuery], probed: Collection[str] = ()) -> str:
    """One expression that answers every query and, for those whose text is in `probed`,
    the freshness of the series it reads."""
    return _tree(_parts(queries, probed))


def quoted_batch_expression(queries: Sequence[CheckedQuery], probed: Collection[str] = ()) -> str:
    """`batch_expression`, form-quoted. Quoting maps each character alone, so the parts are
    quoted once and kept: quoting a thousand pools' batches anew was 2 % of a quiet tick."""
    quoted = [form_quoted(part) for part in _parts(queries, probed)]
    return _tree(quoted, form_quoted("("), form_quoted(" or "), form_quoted(")"))


def _parts(queries: Sequence[CheckedQuery], probed: Collection[str]) -> list[str]:
    parts: list[str] = []
    for i, query in enumerate(queries):
        parts.append(f'label_replace(topk({TOP}, {query.text}), "{TAG}", "{i}", "", "")')
        if query.text in probed:
            # A bare, named selector: timestamp() of anything else is the evaluation time.
            parts.extend(
                f'label_replace(min(timestamp({selector.text})), "{TAG}", "{i}/{j}", "", "")'
                for j, selector in enumerate(query.selectors)
            )
    return parts


@dataclass(frozen=True)
class Answer:
    """A batch's answer split by query: each one's series values, and the newest-sample
    time of each series selector it reads (from its probes), all evaluated at `evaluated`."""

    evaluated: float = 0.0
    values: Mapping[int, Sequence[Any]] = field(default_factory=dict)
    newest: Mapping[int, Mapping[int, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, result: Sequence[Mapping[str, Any]]) -> Answer:
        """Raises KeyError, TypeError or ValueError on a malformed answer."""
        values: dict[int, list[Any]] = {}
        newest: dict[int, dict[int, float]] = {}
        evaluated = 0.0
        for series in result:
            tag = str((series.get("metric") or {}).get(TAG, ""))
            stamp, raw = series["value"]
            evaluated = float(stamp)
            index, _, selector = tag.partition("/")
            if selector:
                newest.setdefault(int(index), {})[int(selector)] = float(raw)
            else:
                values.setdefault(int(index), []).append(raw)
        return cls(evaluated, values, newest)

    def newest_update(self, index: int, query: CheckedQuery) -> float | None:
        """When the least recently updated series query `index` reads was last updated, by
        Prometheus's clock; None when it reads nothing that exists. A selector read over a
        range whose series are gone counts as never updated: the range still gives the
        query a value from samples that have stopped."""
        times = []
        for j, selector in enumerate(query.selectors):
            found = self.newest.get(index, {}).get(j)
            if found is not None:
                times.append(found)
            elif selector.ranged:
                times.append(-math.inf)
        return min(times) if times else None

    def sample(self, index: int, age: float, max_age: float) -> Sample:
        """Query `index`'s one number, given how old the series it reads are."""
        values = self.values.get(index, ())
        if not values:
            raise MetricsUnavailable("the query returned no series", MetricsReason.NO_SAMPLE)
        if len(values) > 1:
            raise MetricsUnavailable(
                "the query returned more than one series; aggregate it, e.g. sum(...)",
                MetricsReason.SEVERAL_SERIES,
            )
        value = in_range(values[0])
        if math.isinf(age):
            raise MetricsUnavailable(
                "the series a range in the query reads have stopped updating",
                MetricsReason.STALE_SAMPLE,
            )
        if age > max_age:
            # When, not how long ago: a message that grows each tick would rewrite the
            # pool's status every tick for as long as the series stays stale.
            updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.evaluated - age))
            raise MetricsUnavailable(
                f"a series the query reads was last updated at {updated}, more than "
                f"{max_age:.0f} s before Prometheus evaluated it",
                MetricsReason.STALE_SAMPLE,
            )
        return Sample(value, self.evaluated, age)


@dataclass(frozen=True)
class Sample:
    value: float
    time: float  # when Prometheus evaluated the query, by its own clock
    age: float = 0.0  # seconds from the oldest newest sample of the series it reads to `time`


def in_range(raw: object) -> float:
    """A sample's value if it is a number a queue, rate or power can be."""
    try:
        value = float(str(raw))
    except ValueError:
        # Not the text itself: it is Prometheus's reply, not a number we can vouch for.
        raise MetricsUnavailable(
            "the sample is not a number", MetricsReason.VALUE_OUT_OF_RANGE
        ) from None
    if not math.isfinite(value) or value < 0 or value > MAX_VALUE:
        raise MetricsUnavailable(
            f"the sample is {value:g}; a usable one is between 0 and {MAX_VALUE:g}",
            MetricsReason.VALUE_OUT_OF_RANGE,
        )
    return 0.0 if value < ZERO_BELOW else value

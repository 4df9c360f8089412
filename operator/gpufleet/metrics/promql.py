"""A pool's PromQL, checked before it reaches Prometheus.

Queries come from tenants' specs, so their text is never spliced into a larger expression as
it is: each is parsed by a real PromQL parser (`promql-parser`), must be one expression of
instant-vector or scalar type, and is sent only as the parser re-serialises it. A text that
closes a parenthesis, adds `or` terms or comments out the rest of a batch does not parse,
or parses into something else than what a batch would have read. The re-serialised text is
parsed again and must come out the same, so the batch reads exactly what was checked.

Size is bounded before and after parsing (text, nesting, nodes, selectors, rendering), so one
query cannot make the operator's memory, its recursion or Prometheus's request size explode.

Each query also names the series it reads (its vector selectors, offsets and `@` dropped):
their newest samples say whether the query is fresh, which an instant query's own result
cannot, because Prometheus stamps it with the evaluation time and looks back 5 minutes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import promql_parser

from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable

_V = promql_parser.ValueType
MAX_TEXT = 4096  # the CRD's limit on a query
MAX_NESTING = 32  # parentheses, brackets and braces inside one another
MAX_NODES = 256
MAX_SELECTORS = 16
MAX_RENDERED = 16384


@dataclass(frozen=True)
class Selector:
    """A series selector the query reads, as a probe can read it: named, without offset
    or `@`. `ranged`: read over a range (`rate(x[5m])`, a subquery), where series that
    stopped updating still give the query a value for the length of the range."""

    text: str
    ranged: bool


@dataclass(frozen=True)
class CheckedQuery:
    """A query as it is sent: `text` is an instant vector; `selectors` are the series it reads."""

    text: str
    selectors: tuple[Selector, ...]


def _invalid(message: str) -> MetricsUnavailable:
    return MetricsUnavailable(message, MetricsReason.INVALID_QUERY)


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def _value_type(node: Any) -> Any:
    if isinstance(node, promql_parser.VectorSelector | promql_parser.AggregateExpr):
        return _V.Vector
    if isinstance(node, promql_parser.MatrixSelector | promql_parser.SubqueryExpr):
        return _V.Matrix
    if isinstance(node, promql_parser.NumberLiteral):
        return _V.Scalar
    if isinstance(node, promql_parser.StringLiteral):
        return _V.String
    if isinstance(node, promql_parser.Call):
        return node.func.return_type
    if isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr):
        return _value_type(node.expr)
    if isinstance(node, promql_parser.BinaryExpr):
        sides = (_value_type(node.lhs), _value_type(node.rhs))
        return _V.Vector if _V.Vector in sides else _V.Scalar
    raise TypeError(type(node).__name__)


def _canonical(text: str) -> tuple[Any, str]:
    if len(text) > MAX_TEXT or _nesting(text) > MAX_NESTING:
        raise _invalid(f"the query is longer than {MAX_TEXT} or nested deeper than {MAX_NESTING}")
    try:
        node = promql_parser.parse(text)
    except ValueError as exc:
        raise _invalid(f"the query does not parse as PromQL: {exc}") from None
    count = [0]

    def visit(_: Any) -> None:
        count[0] += 1

    promql_parser.walk(node, pre_visit=visit)
    if count[0] > MAX_NODES:
        raise _invalid(f"the query has {count[0]} parts; at most {MAX_NODES} are read")
    out = str(node.prettify())
    if len(out) > MAX_RENDERED:
        raise _invalid("the query is too large once rendered")
    if str(promql_parser.parse(out).prettify()) != out:  # the parser's own round trip
        raise _invalid("the query does not survive re-serialisation")
    return node, out


def _named(selector: Any) -> str:
    """The selector with its metric name in front: timestamp() returns a series' own sample
    time only for a bare selector, and without a name the series of two metrics with the same
    labels collide once timestamp() drops the names."""
    if selector.name is None:
        raise _invalid(
            "a selector without a metric name (`{...}`) cannot be checked for staleness; "
            "name the metric: `name{...}`"
        )
    # The parser renders matchers without escaping their values (a value holding a quote
    # would come out as other PromQL, `x{a="1"} or y{...}`, and this text is sent in the
    # freshness probe), so they are rendered here, as JSON strings are: Go's escapes.
    matchers = selector.matchers
    if matchers.or_matchers:
        rendered = str(matchers)
    else:
        rendered = (
            "{"
            + ",".join(
                f"{m.name}{_MATCH_OPS[_op(m)]}{json.dumps(m.value)}" for m in matchers.matchers
            )
            + "}"
        )
    text = str(selector.name) if rendered == "{}" else f"{selector.name}{rendered}"
    # Only a text that parses back to this very selector is used.
    try:
        again = promql_parser.parse(text)
    except ValueError:
        again = None
    if (
        not isinstance(again, promql_parser.VectorSelector)
        or again.name != selector.name
        or _matchers(again) != _matchers(selector)
    ):
        raise _invalid(
            "a label value holds characters the freshness check cannot render safely; "
            "match such a value with `=~` and `.` in their place"
        )
    return text


_MATCH_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def _op(matcher: Any) -> str:
    return str(matcher.op).rsplit(".", 1)[-1]


def _matchers(selector: Any) -> list[tuple[str, str, str]]:
    found = [(str(m.name), _op(m), str(m.value)) for m in selector.matchers.matchers]
    for group in selector.matchers.or_matchers:
        found += [("or", "", "")] + [(str(m.name), _op(m), str(m.value)) for m in group]
    return found


def check(text: str) -> CheckedQuery:
    """The query as it may be sent, or MetricsUnavailable(InvalidQuery) saying why not."""
    try:
        return _check(text)
    except MetricsUnavailable:
        raise
    except Exception as exc:  # RecursionError, the extension's own errors: this query only
        raise _invalid(f"the query cannot be read ({type(exc).__name__})") from None


def _check(text: str) -> CheckedQuery:
    node, out = _canonical(text)
    kind = _value_type(node)
    if kind == _V.Scalar:
        out = f"vector({out})"
    elif kind != _V.Vector:
        name = str(kind).rsplit(".", 1)[-1].lower()
        raise _invalid(f"the query is a {name}; it must give one number (an instant vector)")
    found: dict[str, bool] = {}

    def visit(candidate: Any) -> None:
        if isinstance(candidate, promql_parser.MatrixSelector):
            key = _canonical(_named(candidate.vector_selector))[1]
            found[key] = True
        elif isinstance(candidate, promql_parser.SubqueryExpr):
            inner: list[Any] = []
            promql_parser.walk(
                candidate.expr,
                pre_visit=lambda n: (
                    inner.append(n) if isinstance(n, promql_parser.VectorSelector) else None
                ),
            )
            for selector in inner:
                found[_canonical(_named(selector))[1]] = True
        elif isinstance(candidate, promql_parser.VectorSelector):
            found.setdefault(_canonical(_named(candidate))[1], False)

    promql_parser.walk(node, pre_visit=visit)
    if len(found) > MAX_SELECTORS:
        raise _invalid(f"the query reads {len(found)} selectors; at most {MAX_SELECTORS}")
    return CheckedQuery(out, tuple(Selector(text, ranged) for text, ranged in found.items()))

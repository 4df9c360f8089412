"""A pool's PromQL, checked before it reaches Prometheus.

Queries come from tenants' specs, so their text is never spliced into a larger expression as
it is: each is parsed by a real PromQL parser (`promql-parser`), must be one expression of
instant-vector or scalar type, and is sent only as the parser re-serialises it. A text that
closes a parenthesis, adds `or` terms or comments out the rest of a batch does not parse,
or parses into something else than what a batch would have read. The re-serialised text is
parsed again and must come out the same, so the batch reads exactly what was checked.

Each query also names the series it reads (its vector selectors, offsets and `@` dropped):
their newest samples say whether the query is fresh, which an instant query's own result
cannot, because Prometheus stamps it with the evaluation time and looks back 5 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import promql_parser

from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable

_V = promql_parser.ValueType


@dataclass(frozen=True)
class CheckedQuery:
    """A query as it is sent: `text` is an instant vector; `selectors` are the series it reads."""

    text: str
    selectors: tuple[str, ...]


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
    try:
        node = promql_parser.parse(text)
    except ValueError as exc:
        raise MetricsUnavailable(
            f"the query does not parse as PromQL: {exc}", MetricsReason.INVALID_QUERY
        ) from None
    out = str(node.prettify())
    if str(promql_parser.parse(out).prettify()) != out:  # the parser's own round trip
        raise MetricsUnavailable(
            "the query does not survive re-serialisation", MetricsReason.INVALID_QUERY
        )
    return node, out


def _selector_text(selector: Any) -> str:
    matchers = str(selector.matchers)
    if selector.name is None:
        return matchers
    return str(selector.name) if matchers == "{}" else f"{selector.name}{matchers}"


def check(text: str) -> CheckedQuery:
    """The query as it may be sent, or MetricsUnavailable(InvalidQuery) saying why not."""
    node, out = _canonical(text)
    kind = _value_type(node)
    if kind == _V.Scalar:
        out = f"vector({out})"
    elif kind != _V.Vector:
        raise MetricsUnavailable(
            f"the query is a {str(kind).rsplit('.', 1)[-1].lower()}; it must give one "
            "number (an instant vector or a scalar)",
            MetricsReason.INVALID_QUERY,
        )
    found: list[Any] = []

    def visit(candidate: Any) -> None:
        if isinstance(candidate, promql_parser.VectorSelector):
            found.append(candidate)

    promql_parser.walk(node, pre_visit=visit)
    selectors = dict.fromkeys(_canonical(_selector_text(s))[1] for s in found)
    return CheckedQuery(out, tuple(selectors))

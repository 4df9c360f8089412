"""A tenant's PromQL confined to the series of its own namespace (`--confine-queries`).

What a query reads is decided by its vector selectors alone: functions and operators
(`label_replace`, `or on()`, `absent`, subqueries, `offset`, `@`) only transform what the
selectors have read, so a label forged after selection reads nothing new. So each selector,
wherever it sits (inside a range, a subquery, a function's argument), must select only series
whose `label` is the pool's namespace:
- no matcher on `label`: `label="<namespace>"` is added;
- exactly `label="<namespace>"`: kept;
- any other matcher on `label` (another value, `""`, `!=`, a regex, even one that also
  matches the namespace) or `or` between matchers: refused, `QueryOutsideNamespace`.
`info()` reads series no selector names, so a query that calls it is refused too.

The rewrite is the parser's: each selector is rendered from its parts, parsed again and
compared with what it must be, and the whole query is rendered, parsed once more and every
selector in that final text checked. A rendering the parser reads differently is refused,
never sent. `promql.check` then bounds and round-trips the result like any other query.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import timedelta
from typing import Any

import promql_parser

from gpufleet.metrics.problems import MetricsReason, MetricsUnavailable
from gpufleet.metrics.promql import check

_Op = promql_parser.MatchOp
# By the operator's name: MatchOp is not hashable.
_OPS = {str(_Op.Equal): "=", str(_Op.NotEqual): "!=", str(_Op.Re): "=~", str(_Op.NotRe): "!~"}
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Functions that read series no selector names (info() joins target_info by itself).
_IMPLICIT_READS = frozenset({"info"})


def _outside(message: str) -> MetricsUnavailable:
    return MetricsUnavailable(message, MetricsReason.OUTSIDE_NAMESPACE)


def _unconfinable() -> MetricsUnavailable:
    return MetricsUnavailable(
        "the query cannot be confined to its namespace (it does not render back as parsed)",
        MetricsReason.INVALID_QUERY,
    )


def _duration(offset: timedelta) -> str:
    if offset < timedelta(0):
        return "-" + str(promql_parser.display_duration(-offset))
    return str(promql_parser.display_duration(offset))


def _render(selector: Any, matchers: list[Any]) -> str:
    """A selector as text, its matchers replaced: each value quoted as a JSON string, which
    PromQL reads the same (compared after parsing, see `_rebuilt`)."""
    body = ",".join(
        f"{m.name}{_OPS[str(m.op)]}{json.dumps(m.value, ensure_ascii=False)}" for m in matchers
    )
    text = f"{selector.name or ''}{{{body}}}"
    if selector.at is not None:
        text += f" {selector.at}"
    if selector.offset is not None:
        text += f" offset {_duration(selector.offset)}"
    return text


def _matchers(selector: Any) -> Counter[tuple[str, str, str]]:
    return Counter((m.name, str(m.op), m.value) for m in selector.matchers.matchers)


def _same_modifiers(a: Any, b: Any) -> bool:
    return bool(a.name == b.name and a.offset == b.offset and str(a.at) == str(b.at))


def _rebuilt(selector: Any, matchers: list[Any]) -> Any:
    """The selector with these matchers, as the parser reads its rendering; it must read
    exactly them, with the selector's own name, offset and `@`."""
    try:
        rebuilt = promql_parser.parse(_render(selector, matchers))
    except ValueError:
        raise _unconfinable() from None
    if not isinstance(rebuilt, promql_parser.VectorSelector):
        raise _unconfinable()
    wanted = Counter((m.name, str(m.op), m.value) for m in matchers)
    if _matchers(rebuilt) != wanted or not _same_modifiers(rebuilt, selector):
        raise _unconfinable()
    return rebuilt


def _scoped(selector: Any, label: str, namespace: str) -> list[Any] | None:
    """The matchers the selector must have; None: it has them already."""
    if selector.matchers.or_matchers:
        raise _outside(
            "a selector with `or` between its matchers cannot be confined to the namespace; "
            "write one selector per alternative"
        )
    own = [m for m in selector.matchers.matchers if m.name == label]
    if not own:
        added = promql_parser.Matcher(_Op.Equal, label, namespace)
        return [*selector.matchers.matchers, added]
    if all(m.op == _Op.Equal and m.value == namespace for m in own):
        return None
    return _refuse(own, label, namespace)


def _refuse(own: list[Any], label: str, namespace: str) -> list[Any]:
    ops = sorted({_OPS[str(m.op)] for m in own})
    if ops == ["="]:
        raise _outside(
            f"a selector asks for `{label}` other than {namespace}: a pool reads only the "
            f"series of its own namespace"
        )
    raise _outside(
        f"a selector matches `{label}` with `{'`, `'.join(ops)}`: a pool reads only series "
        f'with `{label}="{namespace}"` (leave the matcher out and it is added)'
    )


def _verify(text: str, label: str, namespace: str, selectors: int) -> None:
    """Every selector of the text as sent reads only the namespace, and none was lost."""
    found: list[Any] = []
    promql_parser.walk(
        promql_parser.parse(text),
        pre_visit=lambda n: (
            found.append(n) if isinstance(n, promql_parser.VectorSelector) else None
        ),
    )
    if len(found) != selectors:
        raise _unconfinable()
    for selector in found:
        own = [m for m in selector.matchers.matchers if m.name == label]
        if selector.matchers.or_matchers or not own:
            raise _unconfinable()
        if any(m.op != _Op.Equal or m.value != namespace for m in own):
            raise _unconfinable()


def confine(text: str, *, label: str, namespace: str) -> str:
    """The query as it may be sent for a pool in `namespace`, reading only series whose
    `label` is that namespace; or MetricsUnavailable: `InvalidQuery` (see promql.check) or
    `QueryOutsideNamespace`, saying why."""
    if not LABEL.fullmatch(label) or not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"cannot confine to label {label!r}, namespace {namespace!r}")
    checked = check(text)  # bounded, parsed, one number, round-trips: or InvalidQuery
    try:
        return _confine(checked.text, label, namespace)
    except MetricsUnavailable:
        raise
    except Exception:  # the extension's own errors: this query only, never sent
        raise _unconfinable() from None


def _confine(text: str, label: str, namespace: str) -> str:
    selectors = [0]

    def visit(node: Any) -> Any:
        if isinstance(node, promql_parser.Call) and node.func.name in _IMPLICIT_READS:
            raise _outside(
                f"{node.func.name}() reads series no selector names; it cannot be confined "
                "to the namespace"
            )
        if not isinstance(node, promql_parser.VectorSelector):
            return None
        selectors[0] += 1
        matchers = _scoped(node, label, namespace)
        return None if matchers is None else _rebuilt(node, matchers)

    out = str(promql_parser.transform(promql_parser.parse(text), pre_visit=visit).prettify())
    _verify(out, label, namespace, selectors[0])
    return check(out).text

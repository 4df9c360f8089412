"""Label selectors, structured (matchLabels/matchExpressions) or as the scale subresource's
string, so pods can be counted per node pool from an index instead of a list per tick."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # NotIn


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def from_label_selector(selector: Mapping[str, Any] | None) -> Selector:
    """A metav1.LabelSelector; an empty one matches everything, as in the API."""
    selector = selector or {}
    reqs = [
        Requirement(k, "In", frozenset({str(v)}))
        for k, v in sorted((selector.get("matchLabels") or {}).items())
    ]
    for expr in selector.get("matchExpressions") or ():
        reqs.append(
            Requirement(
                str(expr["key"]),
                str(expr["operator"]),
                frozenset(map(str, expr.get("values") or ())),
            )
        )
    return Selector(tuple(reqs))


_SET = re.compile(r"^\s*([^\s!=,()]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def parse(text: str) -> Selector:
    """The string form, e.g. `app=chat,tier in (a,b),!canary`."""
    reqs: list[Requirement] = []
    for part in _split(text or ""):
        part = part.strip()
        if match := _SET.match(part):
            key, op, values = match.groups()
            items = frozenset(v.strip() for v in values.split(",") if v.strip())
            reqs.append(Requirement(key, "In" if op == "in" else "NotIn", items))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            reqs.append(Requirement(key.strip(), "NotIn", frozenset({value.strip()})))
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            reqs.append(Requirement(key.strip(), "In", frozenset({value.strip()})))
        elif part.startswith("!"):
            reqs.append(Requirement(part[1:].strip(), "DoesNotExist"))
        elif part:
            reqs.append(Requirement(part, "Exists"))
    return Selector(tuple(reqs))

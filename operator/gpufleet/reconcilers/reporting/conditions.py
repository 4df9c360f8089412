"""Conditions in metav1.Condition shape, kept stable so steady state writes nothing.

lastTransitionTime changes only when a condition's status flips; the list is written whole
(a merge patch replaces lists) and compared before writing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Cond:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str = ""

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def timestamp(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    previous: Sequence[Mapping[str, Any]] | None,
    current: Iterable[Cond],
    generation: int,
    now: float,
) -> list[dict[str, Any]]:
    """The new conditions list, as the `Condition` model reads it (a status model validates
    the list, all in one call); a transition time moves only when the status does."""
    before = {c.get("type"): c for c in previous or () if isinstance(c, Mapping)}
    out = []
    for cond in current:
        old = before.get(cond.type)
        changed = old is None or old.get("status") != cond.status_text
        since = timestamp(now) if changed or old is None else old.get("lastTransitionTime")
        out.append(
            {
                "type": cond.type,
                "status": cond.status_text,
                "observedGeneration": generation,
                "lastTransitionTime": since or timestamp(now),
                "reason": cond.reason,
                "message": cond.message[:32768],
            }
        )
    return out


def ready(dependents: Sequence[Cond], healthy: Mapping[str, bool]) -> Cond:
    """Ready is True only when every dependent is in its healthy state (Karpenter's rule)."""
    for cond in dependents:
        if cond.status is not healthy.get(cond.type, True):
            return Cond("Ready", False, cond.reason, f"{cond.type}: {cond.message}")
    return Cond("Ready", True, "Ready", "")

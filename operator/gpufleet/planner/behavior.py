"""HPA-shaped behaviour: stabilization windows, then rate policies, so a pool never flaps.

Same semantics as the HPA's spec.behavior, so users can reuse what they know: over the
scale-up window the lowest recommendation wins, over the scale-down window the highest; then
the change is bounded by the policies counted over their periods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from gpufleet.api.pool import (
    Behavior,
    PolicyType,
    ScalingPolicy,
    ScalingRules,
    SelectPolicy,
)
from gpufleet.planner.types import Note, Reason

DEFAULT_UP_WINDOW = 0
DEFAULT_DOWN_WINDOW = 300
DEFAULT_UP_POLICIES = (
    ScalingPolicy(type=PolicyType.PODS, value=4, period_seconds=15),
    ScalingPolicy(type=PolicyType.PERCENT, value=100, period_seconds=15),
)
DEFAULT_DOWN_POLICIES = (ScalingPolicy(type=PolicyType.PERCENT, value=100, period_seconds=15),)
# An enum member read through its class costs several times a global's on Python 3.11 (the
# enum metaclass defines __getattr__): members read for every pool of every plan are bound once.
_DISABLED, _MAX, _LIMITED_BY_RATE = SelectPolicy.DISABLED, SelectPolicy.MAX, Reason.LIMITED_BY_RATE


@dataclass(frozen=True)
class Rules:
    window: int
    select: SelectPolicy
    policies: tuple[ScalingPolicy, ...]
    explicit: bool = False  # the policies are the pool's own, not the defaults

    @cached_property
    def plain(self) -> tuple[tuple[bool, int, int], ...]:
        """(type is Pods, value, period) per policy: read every tick of every pool that
        scales, cheaper than from the models."""
        return tuple((p.type == PolicyType.PODS, p.value, p.period_seconds) for p in self.policies)


def _rules(rules: ScalingRules | None, window: int, policies: tuple[ScalingPolicy, ...]) -> Rules:
    if rules is None:
        return Rules(window, SelectPolicy.MAX, policies)
    return Rules(
        window
        if rules.stabilization_window_seconds is None
        else rules.stabilization_window_seconds,
        rules.select_policy,
        tuple(rules.policies) or policies,
        bool(rules.policies),
    )


@dataclass(frozen=True)
class Resolved:
    """A pool's behaviour with the HPA defaults filled in, and how much history it needs."""

    up: Rules
    down: Rules

    @cached_property
    def horizon(self) -> int:
        periods = [p.period_seconds for p in self.up.policies + self.down.policies]
        return max([self.up.window, self.down.window, *periods])


# Resolved behaviours by the identity of their (immutable) spec objects, which come back
# unchanged from one tick to the next; the entry holds the object, so its identity cannot be
# recycled while it lives. Results never depend on the cache.
_RESOLVED: dict[int, tuple[Behavior | None, Resolved]] = {}
_RESOLVED_KEPT = 65536


def resolve(behavior: Behavior | None) -> Resolved:
    hit = _RESOLVED.get(id(behavior))
    if hit is not None and hit[0] is behavior:
        return hit[1]
    resolved = _resolve(behavior)
    if len(_RESOLVED) >= _RESOLVED_KEPT:
        _RESOLVED.clear()
    _RESOLVED[id(behavior)] = (behavior, resolved)
    return resolved


def _resolve(behavior: Behavior | None) -> Resolved:
    return Resolved(
        _rules(behavior.scale_up if behavior else None, DEFAULT_UP_WINDOW, DEFAULT_UP_POLICIES),
        _rules(
            behavior.scale_down if behavior else None, DEFAULT_DOWN_WINDOW, DEFAULT_DOWN_POLICIES
        ),
    )


def stabilize(
    current: int,
    recommended: int,
    history: tuple[tuple[float, int], ...],
    now: float,
    up: Rules,
    down: Rules,
) -> int:
    up_value = down_value = recommended
    up_window, down_window = up.window, down.window
    # Comparisons, not min() and max(): a pool carries one entry per tick of its windows.
    for time, value in history:
        age = now - time
        if age < up_window and value < up_value:
            up_value = value
        if age < down_window and value > down_value:
            down_value = value
    result = current
    if result < up_value:
        result = up_value
    if result > down_value:
        result = down_value
    return result


def _changes(events: tuple[tuple[float, int], ...], now: float, period: int) -> tuple[int, int]:
    added = deleted = 0
    for time, delta in events:
        if now - time < period:
            if delta > 0:
                added += delta
            else:
                deleted -= delta
    return added, deleted


def up_limit(current: int, events: tuple[tuple[float, int], ...], now: float, rules: Rules) -> int:
    if rules.select == _DISABLED:
        return current
    limits = []
    changes: dict[int, tuple[int, int]] = {}  # policies often share a period
    for pods, value, period in rules.plain:
        if period not in changes:
            changes[period] = _changes(events, now, period)
        added, deleted = changes[period]
        start = current - added + deleted
        if pods:
            limits.append(start + value)
        else:
            limits.append(math.ceil(start * (1 + value / 100) - 1e-9))
    return max(limits) if rules.select == _MAX else min(limits)


def down_limit(
    current: int, events: tuple[tuple[float, int], ...], now: float, rules: Rules
) -> int:
    if rules.select == _DISABLED:
        return current
    limits = []
    changes: dict[int, tuple[int, int]] = {}  # policies often share a period
    for pods, value, period in rules.plain:
        if period not in changes:
            changes[period] = _changes(events, now, period)
        added, deleted = changes[period]
        start = current + deleted - added
        if pods:
            limits.append(start - value)
        else:
            limits.append(math.floor(start * (1 - value / 100) + 1e-9))
    # Max picks the policy that allows the most change: for scale down, the lowest floor.
    limit = min(limits) if rules.select == _MAX else max(limits)
    return max(limit, 0)


def apply(
    rules: Resolved,
    current: int,
    recommended: int,
    history: tuple[tuple[float, int], ...],
    events: tuple[tuple[float, int], ...],
    now: float,
    urgent: bool = False,
) -> tuple[int, tuple[Note, ...]]:
    """The replica count after stabilization and rate limits, with why it differs.

    `urgent`: the queue grows past the SLO with every replica busy (`Demand.panic`). The
    scale-up policies then do not apply, as in Knative's panic mode: they damp a noisy
    metric, and a queue that grew between two scrapes with every replica busy is not noise.
    The replicas it needs mostly wait for nodes that take minutes to boot, so asking for them
    in 15 s steps only delays the last node by the steps. Only the default policies give
    way: policies the pool sets itself, its stabilization window, a `Disabled` scale-up and
    `maxReplicas` still hold."""
    up, down = rules.up, rules.down
    stabilized = stabilize(current, recommended, history, now, up, down)
    notes: list[Note] = []
    if stabilized != recommended:
        window = down.window if recommended < current else up.window
        notes.append(
            Note(
                Reason.HELD_BY_STABILIZATION,
                f"recommendation {recommended} held at {stabilized} "
                f"by the {window}s stabilization window",
            )
        )
    desired = stabilized
    if stabilized > current and not (urgent and up.select != _DISABLED and not up.explicit):
        limit = up_limit(current, events, now, up)
        if limit < stabilized:
            desired = max(limit, current)
            notes.append(Note(_LIMITED_BY_RATE, f"scale-up policies allow {desired} now"))
    elif stabilized < current:
        limit = down_limit(current, events, now, down)
        if limit > stabilized:
            desired = min(limit, current)
            notes.append(Note(_LIMITED_BY_RATE, f"scale-down policies allow {desired} now"))
    return desired, tuple(notes)

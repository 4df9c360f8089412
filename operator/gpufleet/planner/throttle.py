"""The rate a short pool can sustain at its SLO, split across its tiers highest first.

When no more GPUs, quota, power or allowed burst target can be had, the gateway is told how
much traffic the planned replicas carry at the SLO, so it sheds the lowest tier instead of
letting every request's wait grow. The same holds for the minutes a sudden step in demand
waits for nodes to boot and models to load: until they serve, the ready replicas set the
rate, so the top tier keeps its SLO while capacity catches up.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

from gpufleet.api.pool import ServingPoolSpec
from gpufleet.planner.demand import erlang_tail, service_rate_per_second
from gpufleet.planner.types import Note, Reason, Throttle, TierAllowance


def sustainable_rate(spec: ServingPoolSpec, replicas: int, factor: float = 1.0) -> float | None:
    """Largest arrival rate at which `replicas` keep the SLO (Erlang C), None if unknown."""
    service = service_rate_per_second(spec, factor)
    if service is None or spec.slo is None:
        return None
    if replicas <= 0:
        return 0.0
    allowed = 1.0 - min(spec.slo.target_percent / 100.0, 0.9999)
    return _sustainable(service, replicas, float(spec.slo.queue_wait_seconds), allowed)


# Cached: a short pool stays short for many ticks, and each bisection step is one step per
# replica.
@functools.lru_cache(maxsize=4096)
def _sustainable(service: float, replicas: int, wait: float, allowed: float) -> float:
    low, high = 0.0, replicas * service
    for _ in range(40):  # bisection to well under a request per hour
        middle = (low + high) / 2
        if erlang_tail(middle, service, replicas, wait) <= allowed:
            low = middle
        else:
            high = middle
    return low


def split(
    spec: ServingPoolSpec, sustainable: float, demand: float, tier_rates: Mapping[str, float]
) -> tuple[TierAllowance, ...]:
    """Admit the highest tiers first; a tier is cut only when every tier above it is whole."""
    left = sustainable
    out = []
    for tier in spec.tiers:
        seen = tier_rates.get(tier.name)
        if seen is None or not math.isfinite(seen) or seen < 0:
            seen = demand * (tier.share_percent or 0) / 100.0
        allowed = min(seen, left)
        left -= allowed
        out.append(TierAllowance(tier.name, seen, allowed))
    return tuple(out)


def throttle(
    spec: ServingPoolSpec,
    replicas: int,
    demand: float | None,
    tier_rates: Mapping[str, float],
    starting: bool = False,
    factor: float = 1.0,
) -> Throttle | None:
    """What to publish for a pool whose `replicas` (planned, or ready while the rest start)
    carry less than its demand."""
    if demand is None or not math.isfinite(demand):
        return None
    rate = sustainable_rate(spec, replicas, factor)
    if rate is None or rate >= demand:
        return None
    return Throttle(rate, demand, split(spec, rate, demand, tier_rates), starting)


def plan_throttle(
    spec: ServingPoolSpec,
    planned: int,
    short: bool,
    ready: int | None,
    demand: float | None,
    tier_rates: Mapping[str, float],
    factor: float = 1.0,
) -> tuple[Throttle | None, Note | None]:
    """The throttle of a pool planned at `planned` replicas (`short` of its need), `ready` of
    them serving now, and the note saying why and what lifts it."""
    starting = ready is not None and ready < planned
    if not short and not starting:
        return None, None
    serving = min(planned, ready) if ready is not None else planned
    found = throttle(spec, serving, demand, tier_rates, starting, factor)
    if found is None:
        return None, None
    cut = [t.name for t in found.tiers if t.allowed < t.demand]
    lift = []
    if starting:
        lift.append(f"until {planned - serving} more replicas serve")
    if short:
        lift.append("more quota, power or an allowed burst target would lift it")
    return found, Note(
        Reason.THROTTLED,
        f"carries {found.sustainable:.2f} of {found.demand:.2f} req/s at the SLO"
        + (f"; tiers cut: {', '.join(cut)}" if cut else "")
        + "; "
        + "; ".join(lift),
    )

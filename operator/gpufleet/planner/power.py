"""Power budgets: which node pools each covers, the cap in force, and watts estimates."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType

from gpufleet.api.pool import PowerSource, ServingPoolSpec
from gpufleet.api.power import PowerBudgetSpec, Window
from gpufleet.api.provider import NodePool
from gpufleet.planner.facts import facts_of
from gpufleet.planner.types import NodePoolKey, PowerFigure

# An enum member read through its class costs several times a global's on Python 3.11 (the
# enum metaclass defines __getattr__): members read for every busy GPU are bound once.
_MEASURED, _NAMEPLATE = PowerSource.MEASURED, PowerSource.NAMEPLATE
_DECLARED = PowerSource.DECLARED
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def covers(budget: PowerBudgetSpec, key: NodePoolKey, node_pool: NodePool) -> bool:
    scope = budget.scope
    site_ok = not scope.sites or node_pool.site in scope.sites
    provider_ok = not scope.providers or key.provider in scope.providers
    return site_ok and provider_ok


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def window_open(window: Window, now: float) -> bool:
    moment = datetime.fromtimestamp(now, tz=UTC)
    minute = moment.hour * 60 + moment.minute
    start, end = _minutes(window.start_time), _minutes(window.end_time)
    if start < end:
        inside, start_day = start <= minute < end, moment.weekday()
    else:  # crosses midnight: the part after midnight belongs to the previous day's window
        inside = minute >= start or minute < end
        start_day = moment.weekday() if minute >= start else (moment.weekday() - 1) % 7
    return inside and (not window.days or _DAYS[start_day] in {d.value for d in window.days})


def cap_in_force(budget: PowerBudgetSpec, now: float) -> tuple[float, str | None]:
    """Cap in watts and the window that set it (None outside windows)."""
    open_windows = [w for w in budget.windows if window_open(w, now)]
    if not open_windows:
        return budget.cap_kilowatts * 1000.0, None
    lowest = min(open_windows, key=lambda w: (w.cap_kilowatts, w.name))
    return lowest.cap_kilowatts * 1000.0, lowest.name


def allowed_watts(budget: PowerBudgetSpec, cap_watts: float) -> float:
    return cap_watts * (1.0 - budget.headroom_percent / 100.0)


def node_watts(node_pool: NodePool) -> float:
    """A powered node with every GPU idle."""
    return node_pool.node_overhead_watts + node_pool.gpus_per_node * node_pool.idle_watts_per_gpu


def busy_gpu_watts(node_pool: NodePool) -> float:
    """What one GPU adds above idle when a replica keeps it busy, at the nameplate figure."""
    return float(node_pool.watts_per_gpu - node_pool.idle_watts_per_gpu)


@dataclass(frozen=True)
class PoolDraw:
    """What one GPU of a pool draws while busy, by GPU type: as the operator measured it
    (the peak of the pool's pods, PoolObservation.watts_per_gpu) and as the pool declares
    (serviceRates[].wattsPerGpu). Specs are the tenants', so a declared figure may only
    raise the estimate: a pool declaring 1 W must not fit 60 times its GPUs under a cap."""

    measured: Mapping[str, float]
    declared: Mapping[str, int]

    def __bool__(self) -> bool:
        return bool(self.measured or self.declared)


_NOTHING: Mapping[str, float] = MappingProxyType({})
NAMEPLATE_ONLY = PoolDraw(_NOTHING, {})


def pool_draw(pool: ServingPoolSpec, measured: Mapping[str, float]) -> PoolDraw:
    """The pool's figures; NAMEPLATE_ONLY (shared, no allocation) for the many pools that
    neither declare one nor were measured."""
    declared = facts_of(pool).watts
    if not declared and not measured:
        return NAMEPLATE_ONLY
    return PoolDraw(measured, declared)


def gpu_draw(draw: PoolDraw, node_pool: NodePool) -> tuple[float, PowerSource]:
    """What one busy GPU of the pool draws on this node pool, and which figure that is.

    The measurement is believed within the node pool's idle..nameplate: below idle is
    absurd, and above nameplate is a spike or a broken exporter's sentinel (what truly runs
    above it shows in the budget's own measurement, which calibrates the plan). Without
    one, the nameplate counts. A declared figure counts only where it is higher."""
    nameplate = float(node_pool.watts_per_gpu)
    measured = draw.measured.get(node_pool.gpu_type)
    if measured is not None and math.isfinite(measured):
        base = min(max(measured, float(node_pool.idle_watts_per_gpu)), nameplate)
        source = _MEASURED
    else:
        base, source = nameplate, _NAMEPLATE
    declared = draw.declared.get(node_pool.gpu_type)
    if declared is not None and declared > base:
        return float(declared), _DECLARED
    return base, source


def gpu_watts(draw: PoolDraw, node_pool: NodePool) -> float:
    """What one GPU draws while the pool keeps it busy."""
    return gpu_draw(draw, node_pool)[0]


def busy_watts(draw: PoolDraw, node_pool: NodePool) -> float:
    """What one GPU adds above idle while the pool keeps it busy."""
    return max(0.0, gpu_watts(draw, node_pool) - node_pool.idle_watts_per_gpu)


def power_figures(draw: PoolDraw, node_pools: Iterable[NodePool]) -> tuple[PowerFigure, ...]:
    """Per GPU type of these node pools, what a busy GPU of the pool counts at: the highest
    over node pools of the type (nameplates may differ), for the pool's status."""
    best: dict[str, tuple[float, PowerSource]] = {}
    for node_pool in node_pools:
        figure = gpu_draw(draw, node_pool)
        if node_pool.gpu_type not in best or figure[0] > best[node_pool.gpu_type][0]:
            best[node_pool.gpu_type] = figure
    return tuple(PowerFigure(gpu, *best[gpu]) for gpu in sorted(best))

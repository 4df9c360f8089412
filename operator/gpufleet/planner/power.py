"""Power budgets: which node pools each covers, the cap in force, and watts estimates."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.power import PowerBudgetSpec, Window
from gpufleet.api.provider import NodePool
from gpufleet.planner.types import NodePoolKey

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


_NOTHING_MEASURED: Mapping[str, int] = {}


def measured_watts(pool: ServingPoolSpec) -> Mapping[str, int]:
    """The draw per busy GPU the pool measured, by GPU type (serviceRates[].wattsPerGpu);
    empty (and shared, no allocation) for the many pools that give none."""
    measured = {r.gpu_type: r.watts_per_gpu for r in pool.service_rates if r.watts_per_gpu}
    return measured or _NOTHING_MEASURED


def gpu_watts(measured: Mapping[str, int], node_pool: NodePool) -> float:
    """What one GPU draws while a pool keeps it busy: measured where the pool says."""
    return float(measured.get(node_pool.gpu_type, node_pool.watts_per_gpu))


def busy_watts(measured: Mapping[str, int], node_pool: NodePool) -> float:
    """What one GPU adds above idle while a pool keeps it busy."""
    return max(0.0, gpu_watts(measured, node_pool) - node_pool.idle_watts_per_gpu)

"""What a run measured, per policy: the figures the issue asks for, and series to plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpufleet.sim.queue import WaitHistogram


@dataclass
class TierResult:
    """One request tier of a pool: what arrived, what the gateway let in, how it waited.

    `cut_*` count only the steps in which the published throttle cut this tier (its allowed
    rate below its demand): admitted against published requests, to check the gateway
    held the tier to the published rate.
    """

    waits: WaitHistogram
    offered: float = 0.0
    admitted: float = 0.0
    cut_admitted: float = 0.0
    cut_published: float = 0.0

    def summary(self, slo_seconds: float) -> dict[str, float | None]:
        admitted = self.waits.share_within(slo_seconds)
        return {
            "requests": round(self.offered, 1),
            "throttledShare": round(1.0 - self.admitted / self.offered, 5) if self.offered else 0.0,
            # Throttled requests are misses: they were refused, not served within the SLO
            "sloAttainment": round(admitted * self.admitted / self.offered, 5)
            if self.offered
            else 1.0,
            "admittedSloAttainment": round(admitted, 5),
            "p99WaitSeconds": self.waits.quantile(0.99),
            "admittedOverPublished": round(self.cut_admitted / self.cut_published, 4)
            if self.cut_published
            else None,
        }


@dataclass
class PoolResult:
    """One pool. Waits are of admitted requests (throttled ones never queue). SLO
    attainment counts throttled requests as misses (`sloAttainment`); that of admitted
    requests alone is given beside it. `energy_joules` is the pool's share of the fleet's
    energy (see engine); `windows` count throttled requests in the hour they arrived."""

    slo_seconds: float
    waits: WaitHistogram
    served_work: float = 0.0
    burst_work: float = 0.0
    served_requests: float = 0.0
    energy_joules: float = 0.0
    tiers: dict[str, TierResult] = field(default_factory=dict)
    windows: dict[int, list[float]] = field(default_factory=dict)  # hour: [within, total]

    @property
    def worst_window_attainment(self) -> float:
        """The lowest SLO attainment of any window of arrivals (an hour) with requests."""
        shares = [ok / n for ok, n in self.windows.values() if n >= 1.0]
        return min(shares) if shares else 1.0

    @property
    def wh_per_request(self) -> float | None:
        if self.served_requests <= 0:
            return None
        return self.energy_joules / 3600.0 / self.served_requests

    @property
    def throttled(self) -> float:
        return sum(t.offered - t.admitted for t in self.tiers.values())

    @property
    def requests(self) -> float:
        """Every request that arrived: admitted and throttled."""
        return self.waits.total + self.throttled

    @property
    def within(self) -> float:
        """Requests that started within the SLO."""
        return self.waits.share_within(self.slo_seconds) * self.waits.total

    @property
    def slo_attainment(self) -> float:
        return min(1.0, self.within / self.requests) if self.requests > 0 else 1.0

    @property
    def throttled_share(self) -> float:
        return self.throttled / self.requests if self.requests > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        wh = self.wh_per_request
        out: dict[str, Any] = {
            "requests": round(self.requests, 1),
            "admittedRequests": round(self.waits.total, 1),
            "sloSeconds": self.slo_seconds,
            "sloAttainment": self.slo_attainment,
            "admittedSloAttainment": self.waits.share_within(self.slo_seconds),
            "throttledShare": round(self.throttled_share, 5),
            "worstHourSloAttainment": round(self.worst_window_attainment, 5),
            "p50WaitSeconds": self.waits.quantile(0.50),
            "p99WaitSeconds": self.waits.quantile(0.99),
            "burstShare": self.burst_work / self.served_work if self.served_work else 0.0,
            "servedRequests": round(self.served_requests, 1),
            "energyKwh": round(self.energy_joules / 3.6e6, 3),
            "whPerRequest": round(wh, 4) if wh is not None else None,
        }
        if self.tiers:
            out["tiers"] = {n: t.summary(self.slo_seconds) for n, t in self.tiers.items()}
        return out


@dataclass
class Series:
    """One sample a minute for the plot."""

    t: list[float] = field(default_factory=list)
    demand_rps: dict[str, list[float]] = field(default_factory=dict)  # per pool
    capacity_rps: dict[str, list[float]] = field(default_factory=dict)  # per provider
    head_wait: dict[str, list[float]] = field(default_factory=dict)  # per pool
    budget_kw: dict[str, list[float]] = field(default_factory=dict)
    cap_kw: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class RunResult:
    policy: str
    scenario: str
    sim_seconds: float
    wall_seconds: float = 0.0
    pools: dict[str, PoolResult] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    cost_cents: float = 0.0
    energy_joules: float = 0.0
    peak_watts: float = 0.0
    over_cap_watt_seconds: dict[str, float] = field(default_factory=dict)
    scale_actions: int = 0
    series: Series = field(default_factory=Series)

    @property
    def requests(self) -> float:
        return sum(p.requests for p in self.pools.values())

    @property
    def slo_attainment(self) -> float:
        """Requests started within their pool's SLO over all requests, throttled ones
        counted as misses."""
        total = self.requests
        return min(1.0, sum(p.within for p in self.pools.values()) / total) if total > 0 else 1.0

    @property
    def admitted_slo_attainment(self) -> float:
        """The same over admitted requests only (what the queue saw)."""
        total = sum(p.waits.total for p in self.pools.values())
        return min(1.0, sum(p.within for p in self.pools.values()) / total) if total > 0 else 1.0

    @property
    def throttled_share(self) -> float:
        total = self.requests
        return sum(p.throttled for p in self.pools.values()) / total if total > 0 else 0.0

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600.0

    @property
    def over_cap_kws(self) -> float:
        return sum(self.over_cap_watt_seconds.values()) / 1000.0

    def summary(self) -> dict[str, Any]:
        served = sum(p.served_work for p in self.pools.values())
        burst = sum(p.burst_work for p in self.pools.values())
        waits = [p.waits for p in self.pools.values()]
        merged = WaitHistogram(waits[0].step if waits else 1.0)
        for w in waits:
            merged.merge(w)
        return {
            "policy": self.policy,
            "sloAttainment": round(self.slo_attainment, 5),
            "admittedSloAttainment": round(self.admitted_slo_attainment, 5),
            "throttledShare": round(self.throttled_share, 5),
            "p50WaitSeconds": merged.quantile(0.5),
            "p99WaitSeconds": merged.quantile(0.99),
            "gpuHours": round(self.gpu_hours, 2),
            "costDollars": round(self.cost_cents / 100.0, 2),
            "energyKwh": round(self.energy_joules / 3.6e6, 2),
            "peakKw": round(self.peak_watts / 1000.0, 2),
            "overCapKws": round(self.over_cap_kws, 1),
            "overCapKwsByBudget": {
                k: round(v / 1000.0, 1) for k, v in self.over_cap_watt_seconds.items()
            },
            "burstShare": round(burst / served, 4) if served else 0.0,
            "scaleActions": self.scale_actions,
            "speedup": round(self.sim_seconds / self.wall_seconds, 0)
            if self.wall_seconds
            else None,
            "pools": {k: p.summary() for k, p in self.pools.items()},
        }

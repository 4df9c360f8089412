"""Whether a trace and a pool's declared service rate tell the same story.

Where a GPU type has a measured profile, simulated replicas serve its units a second
(tokens, images) and a request takes its own work's worth of them; the planner sizes with
the pool's declared requests a minute. The two agree only at one mean work per request:
measured units a second / declared requests a second. A trace far from it (another model,
longer answers) makes the planner size for a pool that is not the one simulated.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.planner.types import PoolKey
from gpufleet.sim import data
from gpufleet.sim.engine import Prepared

# Beyond this relative gap the planner's replicas are off by as much: worth a warning.
# Within it, the trace's own variation (hour to hour) is of the same order.
RATE_MISMATCH_TOLERANCE = 0.20


@dataclass(frozen=True)
class RateMismatch:
    pool: PoolKey
    gpu_type: str
    requests_per_minute: int  # declared
    units_per_second: float  # measured, per replica
    unit: str
    assumed_work: float  # mean work a request the declared rate assumes
    trace_work: float  # mean work a request of the trace

    @property
    def matching_rate(self) -> int:
        """Requests a minute that the measured rate serves at the trace's mean work."""
        return max(1, round(self.units_per_second * 60.0 / self.trace_work))

    def __str__(self) -> str:
        return (
            f"{self.pool} on {self.gpu_type}: the trace averages {self.trace_work:,.4g} units "
            f"of work a request, but serviceRates' {self.requests_per_minute:,} requests a "
            f"minute assume {self.assumed_work:,.4g} (replicas measured at "
            f"{self.units_per_second:,.4g} units/s; a unit is one {self.unit}); "
            f"--service-rate {self.pool}={self.matching_rate} matches the trace"
        )


def _trace_work(prepared: Prepared, pool: PoolKey) -> float | None:
    """Mean work a request of the pool's trace, as the engine serves it."""
    demand = prepared.demand.get(pool)
    if demand is None or demand.counts.sum() <= 0 or demand.work.sum() <= 0:
        return None
    return float(demand.work.sum()) / float(demand.counts.sum())


def rate_mismatches(prepared: Prepared) -> list[RateMismatch]:
    """Declared rates whose assumed mean work is more than the tolerance off the trace's."""
    sc, profiles = prepared.scenario, data.workloads()
    gpu_types = {n.gpu_type for p in sc.fleet.providers.values() for n in p.node_pools}
    found = []
    for w in sc.workloads:
        spec, prof = sc.fleet.pools.get(w.pool), profiles.get(w.profile)
        trace_work = _trace_work(prepared, w.pool)
        if w.pool in sc.service_rates or spec is None or prof is None or trace_work is None:
            continue  # a rate given for the run serves and plans alike: nothing to compare
        for r in spec.service_rates:
            g = prof.gpus.get(r.gpu_type)
            if g is None or r.gpu_type not in gpu_types:
                continue  # not measured: replicas serve the declared rate itself
            rate = g.units_per_second * spec.gpus_per_replica
            m = RateMismatch(
                w.pool,
                r.gpu_type,
                r.requests_per_minute,
                rate,
                prof.unit,
                rate * 60.0 / r.requests_per_minute,
                trace_work,
            )
            if abs(m.trace_work / m.assumed_work - 1.0) > RATE_MISMATCH_TOLERANCE:
                found.append(m)
    return found

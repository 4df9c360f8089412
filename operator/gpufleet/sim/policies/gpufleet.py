"""`gpufleet`: the operator's own planner, called as the fleet loop calls it.

Each reconcile period it gets a Snapshot built from the last scrape (queue depth, the
arrival rate where the pool declares an arrivalRateQuery, and each pool's peak draw per GPU
as the operator's --power-query reads it) and from the API servers (replicas
per node pool, node pools' ready and target nodes, last capacity error); its placements
and node targets are applied as the reconcilers would, and `plan.state` is kept for the
next call.
A pool's published throttle (allowed requests/s per tier) goes to the simulated gateway;
the scrape's arrivals per tier feed `tier_rates` for tiers that declare an arrivalRateQuery.

With `--metrics-refresh-seconds`, the operator keeps each Prometheus answer that long before
asking its query again, each query at its own phase (metrics/kept.py), so a scrape reaches
its plan half a refresh after it lands, on average: here each scrape is read that long after
it lands (at the operator's default, 0, as it lands).
"""

from __future__ import annotations

from collections import deque

from gpufleet.api import MeasurementType, Mode
from gpufleet.planner.types import (
    PlannerState,
    PoolObservation,
    Snapshot,
    frozen_map,
)
from gpufleet.sim.policy import Context, Decision, Policy, Scrape, View

# The operator's default `--metrics-refresh-seconds` (a test keeps the two equal).
METRICS_REFRESH_SECONDS = 0.0


class GpufleetPolicy(Policy):
    name = "gpufleet"

    def __init__(
        self,
        reconcile_seconds: float = 10.0,
        metrics_refresh_seconds: float = METRICS_REFRESH_SECONDS,
    ) -> None:
        self.period = reconcile_seconds
        self.read_delay = metrics_refresh_seconds / 2
        self.scrapes: deque[Scrape] = deque()  # landed, not yet read; newest last
        self.read: Scrape | None = None

    def _read(self, view: View) -> Scrape:
        """The newest scrape the operator's kept answers have read by now."""
        landed = view.scrape is not self.read
        if landed and (not self.scrapes or self.scrapes[-1] is not view.scrape):
            self.scrapes.append(view.scrape)
        while self.scrapes and (
            self.read is None or view.t - self.scrapes[0].time >= self.read_delay
        ):
            self.read = self.scrapes.popleft()
        assert self.read is not None
        return self.read

    def setup(self, ctx: Context) -> None:
        from gpufleet.planner import plan_fleet  # lands with planner/fleet.py

        self.plan_fleet = plan_fleet
        self.ctx = ctx
        self.scrapes.clear()
        self.read = None
        self.state = PlannerState()

    def snapshot(self, view: View) -> Snapshot:
        fleet = self.ctx.fleet
        scrape = self._read(view)
        pools = {}
        for key, spec in fleet.pools.items():
            rate = scrape.arrival_rate.get(key)
            seen = scrape.tier_rates.get(key, {})
            tiers = {  # only the tiers whose arrivals the operator queries
                t.name: seen[t.name] for t in spec.tiers if t.arrival_rate_query and t.name in seen
            }
            pools[key] = PoolObservation(
                queue_depth=scrape.queue_depth.get(key),
                arrival_rate=rate if spec.queue.arrival_rate_query else None,
                replicas=frozen_map({k: n for k, n in view.replicas[key].items() if n}),
                tier_rates=frozen_map(tiers),
                ready_replicas=view.ready.get(key),
                watts_per_gpu=frozen_map(scrape.pool_watts.get(key, {})),
            )
        budgets = {
            name: scrape.budget_watts.get(name)
            if b.measurement.type == MeasurementType.PROMETHEUS
            else None
            for name, b in fleet.budgets.items()
        }
        return Snapshot(frozen_map(pools), frozen_map(dict(view.node_pools)), frozen_map(budgets))

    def decide(self, view: View) -> Decision:
        plan = self.plan_fleet(self.ctx.fleet, self.snapshot(view), self.state, now=view.epoch)
        self.state = plan.state
        d = Decision()
        for key, pp in plan.pools.items():
            if self.ctx.fleet.pools[key].mode == Mode.DRY_RUN:
                continue
            targets = {k: 0 for k, n in view.replicas[key].items() if n}
            targets.update(pp.placements)
            d.replicas[key] = targets
            if pp.preempted:  # drained first, as the operator's drain does
                d.preempt[key] = dict(pp.preempted)
            if pp.throttle is not None:  # published for the gateway until the next plan
                d.throttles[key] = {t.name: (t.allowed, t.demand) for t in pp.throttle.tiers}
        d.nodes = {k: npp.desired_nodes for k, npp in plan.node_pools.items()}
        return d

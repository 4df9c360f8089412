"""`oracle`: knows every future arrival and failure; pays the same boot and load delays.

Before the run it computes, per pool, the least service that starts every request within
the SLO (`envelope.least_service`: the taut string between the work that has arrived and
the work that is due). Its slope is the capacity that must be ready in each step, placed
step by step as `sizing` places a rate: on the node pools the pool may use, in the
planner's preference order, so that it buys the GPU types the policies under test buy and
its GPU-hours compare with theirs (a bound over other GPU types would count unlike hours:
an hour of a B200 is not one of an H100). Every policy compared may use these node pools
and grows in this order; keda-ca may use fewer of them (the primary cloud only), which can
only cost it GPU-hours or SLO, so one oracle bounds them all.

A replica needed at step s must be requested a lead time before it: the node pool's boot
plus the longest model load. So at step t the oracle holds, on each node pool, the most
replicas it will need within that lead time: capacity is ready when needed and released
as soon as it will not be needed again before new capacity could arrive.

It plans for each pool's own `slo.targetPercent`, not for 100 %: `allowance` lets the
peaks of need go late that save the most GPU-hours per late request, as long as the pool's
late requests (counted on a conservative capacity) stay within 100 - targetPercent.

It starts from the state every policy starts from (`placement.start_state`), and plans on
nothing more than those replicas and their nodes until a node asked for at the start could
serve. Live, as `sizing` does: idle GPUs of Ready nodes run spares, and replicas needed
within a model load preempt lower priorities. Two corrections run: the replicas held for
later are trimmed if they would break a cap now, and if the real queue holds more work than
planned (a trim, a slow model load), idle GPUs of the nodes held serve it first. With these
delays, whole nodes, the caps and the allowance, that is the fewest GPU-hours that meet the
SLO target (to the rounding of replicas and nodes and the greedy choice of peaks), the
lower bound the others are measured against; a test checks that no policy beats it on
GPU-hours at an equal or higher SLO attainment on any shipped scenario (quick-sized), and
the benchmark lists any that does on the full runs (`beatenBy`).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.sim.policies.allowance import Allowance, Curves
from gpufleet.sim.policies.envelope import least_service, window_max
from gpufleet.sim.policies.placement import Placement
from gpufleet.sim.policies.sizing import Sizer, padded_demand, run_steps
from gpufleet.sim.policy import Context, Decision, Policy, View


class OraclePolicy(Policy):
    name = "oracle"

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        self.period = ctx.step
        steps = run_steps(ctx)
        self.steps = steps
        sizer = self.sizer = Sizer(ctx, steps)
        counts, work, need = {}, {}, {}
        for pool in sizer.pools:
            counts[pool], work[pool] = padded_demand(ctx, pool, steps)
            deadline, _ = sizer.slo(pool)
            need[pool] = least_service(work[pool], deadline)[:steps] / ctx.step
        ready = self._ready(need)
        plan = Allowance(sizer, ready, {p: dict(v) for p, v in ctx.start.items()}, counts, work)
        plan.spend()
        self.ready, self.hold = plan.ready, plan.hold
        # What each pool needs within a model load: replicas evict lower priorities for it
        self.soon = {
            p: {k: window_max(a, sizer.load_max_steps + 1) for k, a in by_key.items()}
            for p, by_key in plan.ready.items()
        }
        self.planned_late = dict(plan.late)
        # The backlog the plan leaves at the start of each step, on its planned capacity
        self.planned_backlog: dict[PoolKey, npt.NDArray[np.float64]] = {}
        for pool in sizer.pools:
            arrived = np.concatenate(([0.0], np.cumsum(work[pool])))
            self.planned_backlog[pool] = (arrived - plan.served(pool))[:steps]
        # Backlog above the plan by less than this is float rounding, not a shortfall
        self.noise = {
            p: 1e-6 * max(1.0, float(b.max(initial=0.0))) for p, b in self.planned_backlog.items()
        }
        self.catch_up_steps = {
            p: max((sizer.lead[k] for k in sizer.order[p]), default=0) + sizer.slo(p)[0]
            for p in sizer.pools
        }

    def _ready(self, need: dict[PoolKey, npt.NDArray[np.float64]]) -> Curves:
        """Replicas per node pool needed ready in each step for `need` (work units/s)."""
        sizer = self.sizer
        ready: Curves = {
            p: {k: np.zeros(self.steps, dtype=np.int64) for k in sizer.order[p]}
            for p in sizer.pools
        }
        cache: dict[tuple[object, ...], Placement] = {}
        for i in range(self.steps):
            needs = tuple(float(f"{need[p][i]:.9g}") for p in sizer.pools)
            caps = tuple(c[i] for c in sizer.caps.values())
            limits = tuple(sizer.limits(i, ahead=True).items())
            key = (needs, caps, limits)
            placed = cache.get(key)
            if placed is None:
                placed = sizer.place(dict(zip(sizer.pools, needs, strict=True)), i, dict(limits))
                cache[key] = placed
            for p, by_key in placed.items():
                for k, n in by_key.items():
                    ready[p][k][i] = n
        return ready

    # --- each step ---------------------------------------------------------------------

    def decide(self, view: View) -> Decision:
        sizer = self.sizer
        i = min(round(view.t / self.ctx.step), self.steps - 1)
        targets: Placement = {
            p: {k: int(a[i]) for k, a in by_key.items()} for p, by_key in self.hold.items()
        }
        nodes = sizer.nodes(targets)
        for pool in sizer.pools:
            self._catch_up(pool, i, targets, nodes)
        floor = {p: {k: int(a[i]) for k, a in by_key.items()} for p, by_key in self.ready.items()}
        soon = {p: {k: int(a[i]) for k, a in by_key.items()} for p, by_key in self.soon.items()}
        return sizer.finish(i, targets, floor, soon, view)

    def _catch_up(
        self, pool: PoolKey, i: int, targets: Placement, nodes: dict[NodePoolKey, int]
    ) -> None:
        """More work queued than planned: replicas to clear it within a lead time, on idle
        GPUs of the nodes held, where caps allow (ahead of the spares). Never a node more:
        one bought now serves only after a lead time, and the plan's capacity then is
        what it needs."""
        ctx, sizer = self.ctx, self.sizer
        queue = ctx.queues.get(pool)
        if queue is None or not sizer.order[pool]:
            return
        excess = queue.backlog - float(self.planned_backlog[pool][i])
        if excess <= self.noise[pool]:
            return
        rate_needed = excess / (self.catch_up_steps[pool] * ctx.step)
        spec = ctx.fleet.pools[pool]
        count = sum(targets[pool].values())
        usage = sizer.usage(targets)
        for key in sizer.order[pool]:
            room = nodes[key] * ctx.cluster.nodes[key].spec.gpus_per_node - usage.gpus[key]
            add = min(
                math.ceil(rate_needed / ctx.rates[pool][key] - 1e-9),
                max(0, room // spec.gpus_per_replica),
                spec.max_replicas - count,
            )
            add = sizer.most_within_caps(usage, key, pool, add, i) if add > 0 else 0
            if add > 0:
                targets[pool][key] += add
                usage.add(key, add, spec.gpus_per_replica, sizer.busy_per_gpu(pool, key))
                count += add
                rate_needed -= add * ctx.rates[pool][key]
            if rate_needed <= 0:
                return

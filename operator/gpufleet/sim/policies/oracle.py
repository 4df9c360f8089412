"""`oracle`: knows every future arrival and failure; pays the same boot and load delays.

Before the run it computes, per pool, the least service that starts every request within
the SLO (`envelope.least_service`: the taut string between the work that has arrived and
the work that is due). Its slope is the capacity that must be ready in each step. That
capacity is placed, step by step, on the node pools the pool may use, those that serve the
most work per GPU first (the planner's order breaks ties),
within maxNodes, provider quotas, maxReplicas, the failures it knows of and every power cap
in force then, with nodes counted whole and at their worst-case watts (overhead and idle
watts per GPU from the boot request on, loaded watts on every replica).

A replica needed at step s must be requested a lead time before it: the node pool's boot
plus the longest model load. So at step t the oracle holds, on each node pool, the most
replicas it will need within that lead time: capacity is ready when needed and released
as soon as it will not be needed again before new capacity could arrive. Two corrections
run live: the replicas held for later are trimmed if they would break a cap now, and if
the real queue holds more work than the plan expects (a trim, a refused scale-up), extra
replicas are held to clear it. With these delays, whole nodes and the caps, that is the
fewest GPU-hours that start every request within the SLO (to the rounding of replicas and
nodes), the bound the others are measured against. It is conservative in two ways: it
plans on the longest model load (load times are drawn at random), and it leaves the SLO's
allowance (100 - targetPercent) unused.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from gpufleet.api import Role
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.sim.policies.envelope import least_service, window_max
from gpufleet.sim.policies.placement import order
from gpufleet.sim.policy import Context, Decision, Policy, View
from gpufleet.sim.power import caps_by_step, in_scope, node_watts

IntArray = npt.NDArray[np.int64]
Placement = dict[PoolKey, dict[NodePoolKey, int]]


def deadline_steps(slo_seconds: float, step: float) -> int:
    """Steps a request may wait and still count within the SLO (as the histogram counts)."""
    return int(slo_seconds / step + 1e-9)


class _Usage:
    """GPUs and worst-case watts per node pool while replicas are placed."""

    def __init__(self, ctx: Context, budgets: dict[str, list[NodePoolKey]]) -> None:
        self.ctx = ctx
        self.budgets = budgets
        self.gpus = dict.fromkeys(ctx.cluster.nodes, 0)
        self.busy = dict.fromkeys(ctx.cluster.nodes, 0.0)  # watts above idle, all busy

    def node_watts(self, key: NodePoolKey, gpus: int, busy: float) -> float:
        spec = self.ctx.cluster.nodes[key].spec
        return node_watts(spec, math.ceil(gpus / spec.gpus_per_node), busy)

    def budget_watts(self, name: str) -> float:
        return sum(self.node_watts(k, self.gpus[k], self.busy[k]) for k in self.budgets[name])

    def quota_left(self, key: NodePoolKey) -> int:
        """GPUs the provider's quota leaves for this node pool, in whole nodes."""
        nodes = self.ctx.cluster.nodes
        quota = nodes[key].provider.gpu_quota
        if quota is None:
            return 10**9
        used = sum(
            math.ceil(self.gpus[k] / nodes[k].spec.gpus_per_node) * nodes[k].spec.gpus_per_node
            for k in self.gpus
            if k.provider == key.provider and k != key
        )
        gpn = nodes[key].spec.gpus_per_node
        return (quota - used) // gpn * gpn

    def add(self, key: NodePoolKey, replicas: int, gpr: int, busy_per_gpu: float) -> None:
        self.gpus[key] += replicas * gpr
        self.busy[key] += replicas * gpr * busy_per_gpu


class OraclePolicy(Policy):
    name = "oracle"

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        self.period = ctx.step
        step = ctx.step
        load = ctx.load.at(1.0)
        nodes = ctx.cluster.nodes
        fleet = ctx.fleet
        self.lead = {
            k: math.ceil((n.spec.boot_seconds + load) / step - 1e-9) for k, n in nodes.items()
        }
        self.pools = sorted(fleet.pools, key=lambda p: (-fleet.pools[p].priority, p))
        self.order = {p: order(ctx, p, fewest_gpus=True) for p in self.pools}
        self.budgets = {name: in_scope(fleet, b) for name, b in fleet.budgets.items()}
        steps = max((len(d.work) for d in ctx.demand.values()), default=1)
        self.steps = steps
        self.caps = {
            name: caps_by_step(b, ctx.start_epoch, steps, step) for name, b in fleet.budgets.items()
        }
        # The least service per pool (work units per step) and the backlog it leaves
        need: dict[PoolKey, npt.NDArray[np.float64]] = {}
        self.planned_backlog: dict[PoolKey, npt.NDArray[np.float64]] = {}
        self.deadline: dict[PoolKey, int] = {}
        for pool in self.pools:
            spec, d = fleet.pools[pool], ctx.demand.get(pool)
            slo = float(spec.slo.queue_wait_seconds) if spec.slo else 10.0
            self.deadline[pool] = deadline_steps(slo, step)
            work = np.zeros(steps) if d is None else np.pad(d.work, (0, steps - len(d.work)))
            served = least_service(work, self.deadline[pool])[:steps]
            need[pool] = served / step
            arrived = np.concatenate(([0.0], np.cumsum(work)))[:steps]
            self.planned_backlog[pool] = arrived - np.concatenate(([0.0], np.cumsum(served)))[:-1]
        # Replicas per node pool needed ready in each step, then held over the lead time
        ready: dict[PoolKey, dict[NodePoolKey, IntArray]] = {
            p: {k: np.zeros(steps, dtype=np.int64) for k in self.order[p]} for p in self.pools
        }
        cache: dict[tuple[object, ...], Placement] = {}
        for i in range(steps):
            needs = tuple(float(f"{need[p][i]:.9g}") for p in self.pools)
            caps = tuple(c[i] for c in self.caps.values())
            limits = tuple(self._limits(i).items())
            key = (needs, caps, limits)
            placed = cache.get(key)
            if placed is None:
                placed = self._place(dict(zip(self.pools, needs, strict=True)), i, dict(limits))
                cache[key] = placed
            for p, by_key in placed.items():
                for k, n in by_key.items():
                    ready[p][k][i] = n
        self.ready = ready
        self.hold = {
            p: {k: window_max(a, self.lead[k] + 1) for k, a in by_key.items()}
            for p, by_key in ready.items()
        }
        self.catch_up_steps = {
            p: max((self.lead[k] for k in self.order[p]), default=0) + self.deadline[p]
            for p in self.pools
        }

    # --- planning ----------------------------------------------------------------------

    def _limits(self, i: int) -> dict[NodePoolKey, int]:
        """Node limits from failures: capacity ready at step i was requested within the
        lead time before it, so a failure in that span limits it."""
        out: dict[NodePoolKey, int] = {}
        t = i * self.ctx.step
        for f in self.ctx.failures:
            start = t - self.lead[f.node_pool] * self.ctx.step
            if f.start <= t and start < f.end:
                out[f.node_pool] = min(out.get(f.node_pool, f.max_nodes), f.max_nodes)
        return out

    def _busy_per_gpu(self, pool: PoolKey, key: NodePoolKey) -> float:
        idle = self.ctx.cluster.nodes[key].spec.idle_watts_per_gpu
        return max(0.0, self.ctx.loaded_watts[pool][key] - idle)

    def _most_within_caps(
        self, usage: _Usage, key: NodePoolKey, pool: PoolKey, want: int, i: int
    ) -> int:
        """The most of `want` replicas that keep every cap, at worst-case watts."""
        gpr = self.ctx.fleet.pools[pool].gpus_per_replica
        busy = self._busy_per_gpu(pool, key)
        scopes = [n for n, scope in self.budgets.items() if key in scope]
        if not scopes:
            return want
        base = {n: usage.budget_watts(n) for n in scopes}
        now = usage.node_watts(key, usage.gpus[key], usage.busy[key])

        def fits(r: int) -> bool:
            after = usage.node_watts(
                key, usage.gpus[key] + r * gpr, usage.busy[key] + r * gpr * busy
            )
            return all(base[n] + after - now <= self.caps[n][i] + 1e-6 for n in scopes)

        lo, hi = 0, want
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _place(
        self, needs: dict[PoolKey, float], i: int, limits: dict[NodePoolKey, int]
    ) -> Placement:
        ctx = self.ctx
        usage = _Usage(ctx, self.budgets)
        out: Placement = {}
        for pool in self.pools:
            spec = ctx.fleet.pools[pool]
            gpr = spec.gpus_per_replica
            need, count = needs[pool], 0
            placed: dict[NodePoolKey, int] = {}
            for key in self.order[pool]:
                rate = ctx.rates[pool][key]
                want = max(math.ceil(need / rate - 1e-9), spec.min_replicas - count)
                if want <= 0:
                    break
                n = ctx.cluster.nodes[key].spec
                room = min(n.max_nodes * n.gpus_per_node, usage.quota_left(key))
                if key in limits:
                    room = min(room, limits[key] * n.gpus_per_node)
                fit = max(0, (room - usage.gpus[key]) // gpr)
                got = min(want, fit, spec.max_replicas - count)
                got = self._most_within_caps(usage, key, pool, got, i) if got > 0 else 0
                if got <= 0:
                    continue
                usage.add(key, got, gpr, self._busy_per_gpu(pool, key))
                placed[key] = got
                count += got
                need -= got * rate
            out[pool] = placed
        return out

    # --- each step ---------------------------------------------------------------------

    def decide(self, view: View) -> Decision:
        ctx = self.ctx
        i = min(round(view.t / ctx.step), self.steps - 1)
        targets: Placement = {
            p: {k: int(a[i]) for k, a in by_key.items()} for p, by_key in self.hold.items()
        }
        for pool in self.pools:
            self._catch_up(pool, i, targets)
        self._trim(i, targets)
        d = Decision()
        gpus = dict.fromkeys(ctx.cluster.nodes, 0)
        for pool in self.pools:
            gpr = ctx.fleet.pools[pool].gpus_per_replica
            d.replicas[pool] = {k: targets[pool].get(k, 0) for k in ctx.rates[pool]}
            for k, n in targets[pool].items():
                gpus[k] += n * gpr
        d.nodes = {
            k: math.ceil(g / ctx.cluster.nodes[k].spec.gpus_per_node) for k, g in gpus.items()
        }
        return d

    def _usage(self, targets: Placement) -> _Usage:
        usage = _Usage(self.ctx, self.budgets)
        for p, by_key in targets.items():
            gpr = self.ctx.fleet.pools[p].gpus_per_replica
            for k, n in by_key.items():
                usage.add(k, n, gpr, self._busy_per_gpu(p, k))
        return usage

    def _catch_up(self, pool: PoolKey, i: int, targets: Placement) -> None:
        """More work queued than planned: hold replicas to clear it within a lead time,
        where node pools and caps have room."""
        ctx = self.ctx
        queue = ctx.queues.get(pool)
        if queue is None or not self.order[pool]:
            return
        excess = queue.backlog - float(self.planned_backlog[pool][i])
        if excess <= 1e-6 * max(1.0, float(self.planned_backlog[pool].max())):
            return
        rate_needed = excess / (self.catch_up_steps[pool] * ctx.step)
        spec = ctx.fleet.pools[pool]
        count = sum(targets[pool].values())
        usage = self._usage(targets)
        for key in self.order[pool]:
            n = ctx.cluster.nodes[key].spec
            room = min(n.max_nodes * n.gpus_per_node, usage.quota_left(key)) - usage.gpus[key]
            add = min(
                math.ceil(rate_needed / ctx.rates[pool][key] - 1e-9),
                max(0, room // spec.gpus_per_replica),
                spec.max_replicas - count,
            )
            add = self._most_within_caps(usage, key, pool, add, i) if add > 0 else 0
            if add > 0:
                targets[pool][key] += add
                usage.add(key, add, spec.gpus_per_replica, self._busy_per_gpu(pool, key))
                count += add
                rate_needed -= add * ctx.rates[pool][key]
            if rate_needed <= 0:
                return

    def _trim(self, i: int, targets: Placement) -> None:
        """Replicas held for later must not break a cap now (each step's placement keeps
        its caps, but holding several steps' placements at once may not): drop them one at
        a time, lowest priority first and last-preferred node pools first. A pool never
        goes below what it needs now, unless a higher-priority pool still holds replicas for
        later there: then the lower pool waits now rather than the higher one later (who
        waits, when the caps cannot hold both, is what priority says)."""
        ctx = self.ctx

        def over() -> list[str]:
            usage = self._usage(targets)
            return [n for n in self.budgets if usage.budget_watts(n) > self.caps[n][i] + 1e-6]

        names = over()
        if not names:
            return
        keys = sorted(
            {k for n in names for k in self.budgets[n]},
            key=lambda k: (
                ctx.fleet.providers[k.provider].role != Role.PRIMARY,
                ctx.fleet.providers[k.provider].order,
                k,
            ),
            reverse=True,
        )

        def floor(pool: PoolKey, key: NodePoolKey) -> int:
            return int(self.ready[pool][key][i]) if key in self.ready[pool] else 0

        def holds_for_later(pool: PoolKey) -> bool:
            return any(targets[pool].get(k, 0) > floor(pool, k) for k in keys)

        low_first = list(reversed(self.pools))
        for index, pool in enumerate(low_first):
            priority = ctx.fleet.pools[pool].priority
            higher = [q for q in low_first[index + 1 :] if ctx.fleet.pools[q].priority > priority]
            for key in keys:
                while targets[pool].get(key, 0) > floor(pool, key):
                    targets[pool][key] -= 1
                    if not over():
                        return
            if any(holds_for_later(q) for q in higher):
                for key in keys:
                    while targets[pool].get(key, 0) > 0:
                        targets[pool][key] -= 1
                        if not over():
                            return

"""How the bounds (`oracle`, `reactive`) turn a service rate into replicas and nodes.

Both size the same way, so that what separates them is only what they know: a rate in work
units/s per pool is placed on the node pools the pool may use, in the planner's preference
order (the GPU types the policies under test buy), within maxNodes, provider quotas,
maxReplicas, failures and every power cap in force, with nodes counted whole and at their
worst-case watts (overhead and idle watts per GPU from the boot request on, loaded watts
on every replica). GPUs left idle on the Ready nodes held then run extra replicas (spares)
where every cap allows: a node is paid for whether its GPUs serve or not. Where replicas a
pool needs within a model load find no GPU on Ready nodes, lower-priority replicas there
go back to pending (preemption), as the planner's priority order says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gpufleet.api import Role
from gpufleet.api.pool import ServingPoolSpec
from gpufleet.planner.sharing import MAX_ROUNDS, priority_groups, text_hash
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.sim.policies.placement import Placement, nodes_for, order
from gpufleet.sim.policy import Context, Decision, View
from gpufleet.sim.power import caps_by_step, in_scope, node_watts

DEFAULT_SLO_SECONDS = 10.0  # as the engine counts a pool without an SLO
DEFAULT_TARGET_PERCENT = 99  # the API's default targetPercent


def deadline_steps(slo_seconds: float, step: float) -> int:
    """Steps a request may wait and still count within the SLO (as the histogram counts)."""
    return int(slo_seconds / step + 1e-9)


def pool_slo(spec: ServingPoolSpec, step: float) -> tuple[int, float]:
    """A pool's deadline in steps and the share of requests that must meet it."""
    slo = spec.slo
    seconds = float(slo.queue_wait_seconds) if slo else DEFAULT_SLO_SECONDS
    target = slo.target_percent if slo else DEFAULT_TARGET_PERCENT
    return deadline_steps(seconds, step), target / 100.0


class Usage:
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


def run_steps(ctx: Context) -> int:
    """The run's length in steps: the longest pool's demand."""
    return max((len(d.work) for d in ctx.demand.values()), default=1)


def padded_demand(
    ctx: Context, pool: PoolKey, steps: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The pool's requests and work per step over `steps` steps (zeros where it has none)."""
    d = ctx.demand.get(pool)
    if d is None:
        return np.zeros(steps), np.zeros(steps)
    return np.pad(d.counts, (0, steps - len(d.counts))), np.pad(d.work, (0, steps - len(d.work)))


@dataclass
class _Want:
    """One pool's placement under way in `Sizer.place`."""

    pool: PoolKey
    need: float  # work units/s still to serve
    count: int = 0
    index: int = 0  # the first of its node pools that may still take replicas
    placed: dict[NodePoolKey, int] = field(default_factory=dict)


class Sizer:
    """Placement, caps and spares for one run, shared by the oracle and the reactive bound."""

    def __init__(self, ctx: Context, steps: int) -> None:
        self.ctx = ctx
        fleet, nodes = ctx.fleet, ctx.cluster.nodes
        load = ctx.load.at(1.0)  # the longest model load: capacity is ready by then
        self.lead = {
            k: math.ceil((n.spec.boot_seconds + load) / ctx.step - 1e-9) for k, n in nodes.items()
        }
        self.load_max_steps = math.ceil(load / ctx.step - 1e-9)
        # A replica on a node that is there serves after a typical model load
        self.load_steps = math.ceil(ctx.load.at(0.5) / ctx.step - 1e-9)
        # Highest priority first, each priority's pools in the planner's turn order.
        self.groups = priority_groups(fleet.pools, fleet.priority)
        self.pools = [p for group in self.groups for p in group]
        self.order = {p: order(ctx, p) for p in self.pools}
        self.budgets = {name: in_scope(fleet, b) for name, b in fleet.budgets.items()}
        self.caps = {
            name: caps_by_step(b, ctx.start_epoch, steps, ctx.step)
            for name, b in fleet.budgets.items()
        }
        self.steps = steps
        self._busy = {
            (p, k): max(0.0, ctx.loaded_watts[p][k] - nodes[k].spec.idle_watts_per_gpu)
            for p in fleet.pools
            for k in ctx.loaded_watts[p]
        }
        self._memo: dict[tuple[object, ...], Decision] = {}

    def slo(self, pool: PoolKey) -> tuple[int, float]:
        """The pool's deadline in steps and the share of requests that must meet it."""
        return pool_slo(self.ctx.fleet.pools[pool], self.ctx.step)

    def busy_per_gpu(self, pool: PoolKey, key: NodePoolKey) -> float:
        """Watts a busy replica's GPU draws above idle."""
        return self._busy[pool, key]

    def limits(self, i: int, ahead: bool) -> dict[NodePoolKey, int]:
        """Node limits from failures. Ahead (the oracle): capacity ready at step i was
        requested within the lead time before it, so a failure in that span limits it.
        Otherwise only the failures in force at step i."""
        out: dict[NodePoolKey, int] = {}
        t = i * self.ctx.step
        for f in self.ctx.failures:
            start = t - self.lead[f.node_pool] * self.ctx.step if ahead else t
            if f.start <= t and start < f.end:
                out[f.node_pool] = min(out.get(f.node_pool, f.max_nodes), f.max_nodes)
        return out

    def most_within_caps(
        self, usage: Usage, key: NodePoolKey, pool: PoolKey, want: int, i: int
    ) -> int:
        """The most of `want` replicas that keep every cap, at worst-case watts."""
        gpr = self.ctx.fleet.pools[pool].gpus_per_replica
        busy = self.busy_per_gpu(pool, key)
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

        if fits(want):  # the common case: one look instead of a search
            return want
        lo, hi = 0, want - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def place(
        self, needs: Mapping[PoolKey, float], i: int, limits: Mapping[NodePoolKey, int]
    ) -> Placement:
        """Replicas per pool and node pool that serve `needs` (work units/s) at step i:
        highest priority first; pools of one priority share by namespace, max-min, as the
        planner does (planner/sharing.py)."""
        usage = Usage(self.ctx, self.budgets)
        out: Placement = {}
        for group in self.groups:
            wants = [_Want(pool, needs[pool]) for pool in group]
            if len(group) == 1:
                self._step(wants[0], None, usage, i, limits)
            else:
                self._share(wants, usage, i, limits)
            for w in wants:
                out[w.pool] = w.placed
        return out

    def _share(
        self, wants: list[_Want], usage: Usage, i: int, limits: Mapping[NodePoolKey, int]
    ) -> None:
        # A budget of 0 places nothing: it only finds the pools already served.
        active = [w for w in wants if not self._step(w, 0, usage, i, limits)]
        groups: dict[str, list[_Want]] = {}
        for w in active:
            groups.setdefault(w.pool.namespace, []).append(w)
        order = sorted(groups, key=lambda ns: (text_hash(ns), ns))
        done: set[PoolKey] = set()
        rounds = 0
        while order:
            gpr = {w.pool: self.ctx.fleet.pools[w.pool].gpus_per_replica for w in active}
            needs = [
                sum(self._first_want(w) * gpr[w.pool] for w in groups[ns] if w.pool not in done)
                for ns in order
            ]
            alone = len(order) == 1 or rounds >= MAX_ROUNDS
            quantum = None if alone else max(1, math.ceil(min(needs) / 2))
            for k in range(len(order)):
                namespace = order[(rounds + k) % len(order)]
                pools = [w for w in groups[namespace] if w.pool not in done]
                left = quantum
                for j in range(len(pools)):
                    w = pools[(rounds + j) % len(pools)]
                    if left is not None and left <= 0:
                        break
                    budget = (
                        None
                        if left is None
                        else max(1, math.ceil(left / (gpr[w.pool] * len(pools))))
                    )
                    before = w.count
                    if self._step(w, budget, usage, i, limits):
                        done.add(w.pool)
                    if left is not None:
                        left -= (w.count - before) * gpr[w.pool]
            if alone:
                break  # each took all it could
            order = [ns for ns in order if any(w.pool not in done for w in groups[ns])]
            rounds += 1

    def _first_want(self, w: _Want) -> int:
        spec = self.ctx.fleet.pools[w.pool]
        order = self.order[w.pool]
        if w.index >= len(order):
            return 0
        rate = self.ctx.rates[w.pool][order[w.index]]
        return max(math.ceil(w.need / rate - 1e-9), spec.min_replicas - w.count)

    def _step(
        self,
        w: _Want,
        budget: int | None,
        usage: Usage,
        i: int,
        limits: Mapping[NodePoolKey, int],
    ) -> bool:
        """Place up to `budget` more replicas of the pool (None: all it needs) on its node
        pools in order; whether it is done (served, or no node pool can take more)."""
        ctx = self.ctx
        spec = ctx.fleet.pools[w.pool]
        gpr = spec.gpus_per_replica
        order = self.order[w.pool]
        taken = 0
        while w.index < len(order):
            key = order[w.index]
            rate = ctx.rates[w.pool][key]
            want = max(math.ceil(w.need / rate - 1e-9), spec.min_replicas - w.count)
            if want <= 0:
                w.index = len(order)
                break
            if budget is not None:
                want = min(want, budget - taken)
                if want <= 0:
                    return False
            n = ctx.cluster.nodes[key].spec
            room = min(n.max_nodes * n.gpus_per_node, usage.quota_left(key))
            if key in limits:
                room = min(room, limits[key] * n.gpus_per_node)
            fit = max(0, (room - usage.gpus[key]) // gpr)
            got = min(want, fit, spec.max_replicas - w.count)
            got = self.most_within_caps(usage, key, w.pool, got, i) if got > 0 else 0
            if got > 0:
                usage.add(key, got, gpr, self.busy_per_gpu(w.pool, key))
                w.placed[key] = w.placed.get(key, 0) + got
                w.count += got
                w.need -= got * rate
                taken += got
            if got < want:
                w.index += 1  # this node pool takes no more of the pool's replicas
        return True

    def usage(self, targets: Placement) -> Usage:
        usage = Usage(self.ctx, self.budgets)
        for p, by_key in targets.items():
            gpr = self.ctx.fleet.pools[p].gpus_per_replica
            for k, n in by_key.items():
                usage.add(k, n, gpr, self.busy_per_gpu(p, k))
        return usage

    def over(self, targets: Placement, i: int) -> list[str]:
        usage = self.usage(targets)
        return [n for n in self.budgets if usage.budget_watts(n) > self.caps[n][i] + 1e-6]

    def trim(self, i: int, targets: Placement, floor: Placement) -> None:
        """Replicas held for later must not break a cap now (each step's placement keeps
        its caps, but holding several steps' placements at once may not): drop them one at
        a time, lowest priority first and last-preferred node pools first. A pool never
        goes below what it needs now (`floor`), unless a higher-priority pool still holds
        replicas for later there: then the lower pool waits now rather than the higher one
        later (who waits, when the caps cannot hold both, is what priority says)."""
        ctx = self.ctx
        names = self.over(targets, i)
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

        def holds_for_later(pool: PoolKey) -> bool:
            return any(targets[pool].get(k, 0) > floor[pool].get(k, 0) for k in keys)

        low_first = list(reversed(self.pools))
        for index, pool in enumerate(low_first):
            priority = ctx.fleet.priority(pool)
            higher = [q for q in low_first[index + 1 :] if ctx.fleet.priority(q) > priority]
            for key in keys:
                while targets[pool].get(key, 0) > floor[pool].get(key, 0):
                    targets[pool][key] -= 1
                    if not self.over(targets, i):
                        return
            if any(holds_for_later(q) for q in higher):
                for key in keys:
                    while targets[pool].get(key, 0) > 0:
                        targets[pool][key] -= 1
                        if not self.over(targets, i):
                            return

    def nodes(self, targets: Placement) -> dict[NodePoolKey, int]:
        return nodes_for(self.ctx, targets)

    def spares(
        self, i: int, targets: Placement, nodes: Mapping[NodePoolKey, int], view: View
    ) -> None:
        """Fill the GPUs left idle on `nodes` with replicas, highest priority first, within
        maxReplicas and every cap at worst-case watts; never a node more. Only GPUs of
        Ready nodes: a spare that waited for a node would take it, by priority, ahead of
        a lower-priority pool's replicas that are needed."""
        ctx = self.ctx
        usage = self.usage(targets)
        for pool in self.pools:
            spec = ctx.fleet.pools[pool]
            gpr = spec.gpus_per_replica
            count = sum(targets[pool].values())
            for key in self.order[pool]:
                gpn = ctx.cluster.nodes[key].spec.gpus_per_node
                ready = min(nodes[key], view.node_pools[key].ready_nodes)
                add = min((ready * gpn - usage.gpus[key]) // gpr, spec.max_replicas - count)
                add = self.most_within_caps(usage, key, pool, add, i) if add > 0 else 0
                if add > 0:
                    targets[pool][key] = targets[pool].get(key, 0) + add
                    usage.add(key, add, gpr, self.busy_per_gpu(pool, key))
                    count += add

    def evictions(
        self, targets: Placement, soon: Placement, view: View
    ) -> dict[PoolKey, dict[NodePoolKey, int]]:
        """Replicas of lower-priority pools to send back to pending where replicas a pool
        needs soon (`soon`: within a model load, the time one placed now takes to serve)
        find no free GPU on the Ready nodes: priority decides who waits for the nodes still
        to come. Replicas held for longer and spares never evict."""
        ctx = self.ctx
        out: dict[PoolKey, dict[NodePoolKey, int]] = {}
        for key, obs in view.node_pools.items():
            kept = {
                p: min(view.bound[p].get(key, 0), targets.get(p, {}).get(key, 0))
                for p in self.pools
            }
            gpr = {p: ctx.fleet.pools[p].gpus_per_replica for p in self.pools}
            free = obs.ready_nodes * ctx.cluster.nodes[key].spec.gpus_per_node - sum(
                kept[p] * gpr[p] for p in self.pools
            )
            for index, pool in enumerate(self.pools):  # highest priority first
                want = max(0, soon.get(pool, {}).get(key, 0) - kept[pool]) * gpr[pool]
                if want <= free:
                    free -= want
                    continue
                short, free = want - free, 0
                priority = ctx.fleet.priority(pool)
                for victim in reversed(self.pools[index + 1 :]):  # lowest priority first
                    if short <= 0 or ctx.fleet.priority(victim) >= priority:
                        continue
                    take = min(kept[victim], math.ceil(short / gpr[victim]))
                    if take > 0:
                        out.setdefault(victim, {})[key] = out.get(victim, {}).get(key, 0) + take
                        kept[victim] -= take
                        short -= take * gpr[victim]
                free = max(0, -short)
        return out

    def finish(
        self, i: int, targets: Placement, floor: Placement, soon: Placement, view: View
    ) -> Decision:
        """`trim` to `floor`, then `decision` (evicting for `soon`), remembered: the
        targets, caps and cluster repeat from step to step far more often than they
        change."""
        key = (
            _frozen(targets),
            _frozen(floor),
            _frozen(soon),
            tuple(c[i] for c in self.caps.values()),
            tuple((k, o.ready_nodes) for k, o in view.node_pools.items()),
            _frozen(view.bound),
        )
        d = self._memo.get(key)
        if d is None:
            if len(self._memo) > 100_000:
                self._memo.clear()
            self.trim(i, targets, floor)
            d = self._memo[key] = self.decision(i, targets, soon, view)
        return Decision(
            replicas={p: dict(v) for p, v in d.replicas.items()},
            nodes=dict(d.nodes),
            evict={p: dict(v) for p, v in d.evict.items()},
        )

    def decision(self, i: int, targets: Placement, soon: Placement, view: View) -> Decision:
        """Nodes for `targets`, lower priorities evicted where replicas higher ones need
        soon find no GPU, idle GPUs of Ready nodes filled with spares, as a decision."""
        d = Decision(evict=self.evictions(targets, soon, view))
        nodes = self.nodes(targets)
        self.spares(i, targets, nodes, view)
        for pool in self.pools:
            d.replicas[pool] = {k: targets[pool].get(k, 0) for k in self.ctx.rates[pool]}
        d.nodes = nodes
        return d


def _frozen(placement: Mapping[PoolKey, Mapping[NodePoolKey, int]]) -> tuple[object, ...]:
    return tuple((p, tuple(by_key.items())) for p, by_key in placement.items())

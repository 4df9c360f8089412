"""Spending an SLO's allowance: the oracle plans for targetPercent, not for 100 %.

A pool with `slo.targetPercent: 99` may start 1 % of its requests late. The plan that
meets every deadline holds a node for each short peak of need: a node booted for the peak
is held over its lead time (boot plus model load), so a peak of a few seconds costs minutes
of a node. With the allowance the oracle lets the costliest of those peaks go late instead.

The plan is per node pool a curve of nodes needed ready in each step. A cut lowers it by
one node over a maximal stretch where it is at or above some level (a peak of the curve at
that level, with everything above it); the replicas of the lowest-priority pools there go
first. Each cut is weighed by GPU-hours saved (the held nodes no longer needed) per share of
the pools' allowances it spends, and cuts are taken best first while every pool's late
requests stay within its allowance. Late requests are counted exactly as the FIFO fluid
queue counts them: with capacity c per step, the work served by step n is
S(n) = min over s <= n of (A(s) + C(n) - C(s)) (A, C cumulative arrivals and capacity), and
the requests of step i are late for the part of their work above S(i + deadline + 1).

The capacity counted is conservative, so that the real queue does no worse than planned:
only the replicas needed ready, plus spares on their nodes where every power cap holds with
all held nodes and replicas busy; and, within a lead time of the start, only the replicas
the run starts with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.sim.policies.envelope import window_max
from gpufleet.sim.policies.placement import Placement
from gpufleet.sim.policies.sizing import Sizer

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Curves = dict[PoolKey, dict[NodePoolKey, IntArray]]


def served(work: FloatArray, capacity: FloatArray) -> FloatArray:
    """Cumulative work a work-conserving FIFO queue has served by the start of each step
    (length n + 1), given the work arriving and the capacity in each step."""
    arrived = np.concatenate(([0.0], np.cumsum(work)))
    cap = np.concatenate(([0.0], np.cumsum(capacity)))
    return np.asarray(cap + np.minimum.accumulate(arrived - cap), dtype=np.float64)


def late_requests(counts: FloatArray, work: FloatArray, done: FloatArray, deadline: int) -> float:
    """Requests that start more than `deadline` steps after their arrival, for the served
    curve `done`. Requests still waiting at the end count with the wait they have then, as
    the run counts them, so the last `deadline` steps' are never late."""
    n = len(work)
    arrived = np.concatenate(([0.0], np.cumsum(work)))
    due = np.arange(n) + deadline + 1
    inside = due <= n
    by_due = done[np.minimum(due, n)]
    short = arrived[1:] - np.maximum(arrived[:-1], by_due)
    frac = np.clip(short / np.where(work > 0, work, 1.0), 0.0, 1.0)
    frac[(work <= 0) | ~inside] = 0.0
    return float(np.dot(frac, counts))


@dataclass(frozen=True)
class _Cut:
    key: NodePoolKey
    level: int  # at most level - 1 nodes over [start, end)
    start: int
    end: int


class Allowance:
    """The oracle's plan of replicas needed ready, cut where the allowance pays best."""

    def __init__(
        self,
        sizer: Sizer,
        ready: Curves,
        start: Placement,
        counts: dict[PoolKey, FloatArray],
        work: dict[PoolKey, FloatArray],
    ) -> None:
        self.sizer, self.ready, self.counts, self.work = sizer, ready, counts, work
        ctx = sizer.ctx
        self.n = sizer.steps
        self.pools = sizer.pools
        self.keys = sorted({k for p in self.pools for k in sizer.order[p]})
        self.on = {k: [p for p in self.pools if k in sizer.order[p]] for k in self.keys}
        self.gpn = {k: ctx.cluster.nodes[k].spec.gpus_per_node for k in self.keys}
        self.gpr = {p: ctx.fleet.pools[p].gpus_per_replica for p in self.pools}
        self.unit = {p: {k: ctx.rates[p][k] * ctx.step for k in sizer.order[p]} for p in self.pools}
        self.lead_max = max((sizer.lead[k] for k in self.keys), default=0)
        self.start = {
            p: {k: start.get(p, {}).get(k, 0) for k in sizer.order[p]} for p in self.pools
        }
        self.deadline, self.allowed = {}, {}
        for p in self.pools:
            self.deadline[p], target = sizer.slo(p)
            self.allowed[p] = (1.0 - target) * float(counts[p].sum())
        self.hold: Curves = {p: {} for p in self.pools}
        self.nodes: dict[NodePoolKey, IntArray] = {}
        self.capacity = {p: np.zeros(self.n) for p in self.pools}
        self._refresh(0, self.n)
        self.late = {p: self._late(p) for p in self.pools}

    # --- the plan's curves, recomputed over a span -------------------------------------

    def _refresh(self, lo: int, hi: int) -> None:
        """Held replicas, held nodes and planned capacity over [lo, hi) from `ready`."""
        lo, hi = max(0, lo), min(self.n, hi)
        if lo >= hi:
            return
        sizer, span = self.sizer, hi - lo
        gpus_ready = {k: np.zeros(span, dtype=np.int64) for k in self.keys}
        gpus_held = {k: np.zeros(span, dtype=np.int64) for k in self.keys}
        for p in self.pools:
            for k in sizer.order[p]:
                r = self.ready[p][k]
                held = window_max(r[lo : hi + sizer.lead[k]], sizer.lead[k] + 1)[:span]
                self.hold[p].setdefault(k, np.zeros(self.n, dtype=np.int64))[lo:hi] = held
                gpus_ready[k] += r[lo:hi] * self.gpr[p]
                gpus_held[k] += held * self.gpr[p]
        for k in self.keys:
            self.nodes.setdefault(k, np.zeros(self.n, dtype=np.int64))[lo:hi] = -(
                -gpus_held[k] // self.gpn[k]
            )
        spare = self._spares(lo, hi, gpus_ready, gpus_held)
        replicas = {
            p: {k: self.ready[p][k][lo:hi] + spare[p][k] for k in sizer.order[p]}
            for p in self.pools
        }
        for k in self.keys:
            self._from_start(k, lo, hi, replicas)
        for p in self.pools:
            cap = np.zeros(span)
            for k in sizer.order[p]:
                cap += replicas[p][k] * self.unit[p][k]
            self.capacity[p][lo:hi] = cap

    def _from_start(
        self, k: NodePoolKey, lo: int, hi: int, replicas: dict[PoolKey, dict[NodePoolKey, IntArray]]
    ) -> None:
        """Until a node asked for at the start has booted and loaded a model, a node pool
        serves with the replicas the run starts with, and once a model load has passed,
        with replicas on all the GPUs of the nodes it starts with (highest priority first).
        Loads are taken at their median here, not the longest: the start, the same for
        every policy, should not spend the allowance on a slowness it seldom has."""
        spec = self.sizer.ctx.cluster.nodes[k].spec
        fresh = math.ceil(spec.boot_seconds / self.sizer.ctx.step - 1e-9) + self.sizer.load_steps
        end = min(hi, fresh)
        if lo >= end:
            return
        loaded = self.sizer.load_steps
        gpus = sum(self.start[p].get(k, 0) * self.gpr[p] for p in self.on[k])
        free = np.full(end - lo, -(-gpus // self.gpn[k]) * self.gpn[k], dtype=np.int64)
        t = np.arange(lo, end)
        for p in self.on[k]:
            r = replicas[p][k][: end - lo]
            took = np.where(
                t < loaded, np.minimum(r, self.start[p][k]), np.minimum(r, free // self.gpr[p])
            )
            r[:] = took
            free = free - took * self.gpr[p]

    def _spares(
        self,
        lo: int,
        hi: int,
        gpus_ready: dict[NodePoolKey, IntArray],
        gpus_held: dict[NodePoolKey, IntArray],
    ) -> dict[PoolKey, dict[NodePoolKey, IntArray]]:
        """Replicas on the GPUs that the nodes the ready replicas need (those are Ready)
        have left after every replica held, highest priority first; none in a step where
        some cap over the node pool would not hold them."""
        sizer, ctx, span = self.sizer, self.sizer.ctx, hi - lo
        free = {
            k: np.maximum(0, -(-gpus_ready[k] // self.gpn[k]) * self.gpn[k] - gpus_held[k])
            for k in self.keys
        }
        spare: dict[PoolKey, dict[NodePoolKey, IntArray]] = {}
        for p in self.pools:
            count = sum(self.hold[p][k][lo:hi] for k in sizer.order[p])
            room = np.maximum(0, ctx.fleet.pools[p].max_replicas - count)
            spare[p] = {}
            for k in sizer.order[p]:
                s = np.minimum(free[k] // self.gpr[p], room)
                spare[p][k] = s
                free[k] = free[k] - s * self.gpr[p]
                room = room - s
        for name, scope in sizer.budgets.items():
            watts = np.zeros(span)
            for k in scope:
                if k not in self.nodes:
                    continue
                spec = ctx.cluster.nodes[k].spec
                base = spec.node_overhead_watts + spec.gpus_per_node * spec.idle_watts_per_gpu
                watts += self.nodes[k][lo:hi] * base
                for p in self.on[k]:
                    busy = self.gpr[p] * sizer.busy_per_gpu(p, k)
                    watts += (self.hold[p][k][lo:hi] + spare[p][k]) * busy
            broken = watts > np.asarray(sizer.caps[name][lo:hi]) + 1e-6
            for k in scope:
                for p in self.on.get(k, []):
                    spare[p][k] = np.where(broken, 0, spare[p][k])
        return spare

    def _late(self, p: PoolKey) -> float:
        done = served(self.work[p], self.capacity[p])
        return late_requests(self.counts[p], self.work[p], done, self.deadline[p])

    def served(self, p: PoolKey) -> FloatArray:
        return served(self.work[p], self.capacity[p])

    # --- cuts ----------------------------------------------------------------------------

    def _needed_nodes(self, k: NodePoolKey) -> IntArray:
        gpus = sum(self.ready[p][k] * self.gpr[p] for p in self.on[k])
        return np.asarray(-(-np.asarray(gpus) // self.gpn[k]), dtype=np.int64)

    def candidates(self) -> list[_Cut]:
        out = []
        for k in self.keys:
            need = self._needed_nodes(k)
            for level in range(1, int(need.max(initial=0)) + 1):
                edges = np.diff(np.concatenate(([0], (need >= level).astype(np.int64), [0])))
                starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
                out += [_Cut(k, level, int(a), int(b)) for a, b in zip(starts, ends, strict=True)]
        return out

    def _apply(self, cut: _Cut) -> tuple[dict[PoolKey, IntArray], float] | None:
        """Cut the plan; return what it replaced and the GPU-steps saved, or None if the
        plan is already at or below the cut there."""
        k, a, b = cut.key, cut.start, cut.end
        limit = (cut.level - 1) * self.gpn[k]
        gpus = sum(self.ready[p][k][a:b] * self.gpr[p] for p in self.on[k])
        excess = np.asarray(gpus) - limit
        if not np.any(excess > 0):
            return None
        old = {p: self.ready[p][k][a:b].copy() for p in self.on[k]}
        for p in reversed(self.on[k]):  # lowest priority first
            r = self.ready[p][k][a:b]
            count = sum(self.ready[p][key][a:b] for key in self.sizer.order[p])
            above_min = np.maximum(0, count - self.sizer.ctx.fleet.pools[p].min_replicas)
            take = np.minimum(np.minimum(r, above_min), np.maximum(0, -(-excess // self.gpr[p])))
            r -= take
            excess = excess - take * self.gpr[p]
        if all(np.array_equal(old[p], self.ready[p][k][a:b]) for p in old):
            return None  # minReplicas holds the plan there
        lo, hi = a - self.lead_max, b
        before = self._node_steps(lo, hi)
        self._refresh(lo, hi)
        return old, before - self._node_steps(lo, hi)

    def _undo(self, cut: _Cut, old: dict[PoolKey, IntArray]) -> None:
        for p, r in old.items():
            self.ready[p][cut.key][cut.start : cut.end] = r
        self._refresh(cut.start - self.lead_max, cut.end)

    def _node_steps(self, lo: int, hi: int) -> float:
        lo, hi = max(0, lo), min(self.n, hi)
        return float(sum(self.nodes[k][lo:hi].sum() * self.gpn[k] for k in self.keys))

    def _try(self, cut: _Cut, keep: bool) -> tuple[float, dict[PoolKey, float]] | None:
        """GPU-steps saved and late requests per pool after the cut; kept only if `keep`
        and every pool stays within its allowance."""
        applied = self._apply(cut)
        if applied is None:
            return None
        old, saved = applied
        late = {p: self._late(p) for p in self.on[cut.key]}
        if keep and saved > 0 and all(late[p] <= self.allowed[p] for p in late):
            self.late.update(late)
            return saved, late
        self._undo(cut, old)
        return saved, late

    def spend(self) -> None:
        """Take the cuts best first while every pool's allowance holds."""
        if not any(self.allowed[p] > 0 for p in self.pools):
            return
        scored = []
        for cut in self.candidates():
            tried = self._try(cut, keep=False)
            if tried is None:
                continue
            saved, late = tried
            if saved <= 0 or any(late[p] > self.allowed[p] for p in late):
                continue
            spent = sum(
                (late[p] - self.late[p]) / self.allowed[p] for p in late if self.allowed[p] > 0
            )
            scored.append((saved / max(spent, 1e-12), saved, cut))
        scored.sort(key=lambda s: (-s[0], -s[1], s[2].start))
        for _, _, cut in scored:
            self._try(cut, keep=True)

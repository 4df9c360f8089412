"""`reactive`: the bound for policies without a forecast; the oracle's sizing, on the
present alone.

At every step it knows the true arrivals of that instant and never the future: the work
arriving per second over the pool's SLO window ending now (a request may wait that long,
so no shorter span matters to the pool), and the work queued now. It sizes as the oracle
does (`sizing`: the same node pools in the same order, the same caps, quotas and spares)
for that rate held, plus what the queue holds beyond the SLO window's worth, spread over a
lead time and the deadline as the oracle's catch-up spreads it. With a fluid queue and the
rate held, 99 % and 100 % need the same rate, so the SLO target changes nothing here: the
allowance can only be spent knowing which peaks will pass, which is the future.

Capacity starts only at the instant it is sized, and pays the same node boot and model
load as everyone's. What it sized it holds for a lead time (boot plus the longest model
load), as the oracle holds capacity a lead time ahead: released capacity could not be
back sooner. Only failures in force at the instant limit it; replicas it needs now preempt
lower priorities, as in `sizing`. On a sudden step no policy
without a forecast starts capacity sooner, so the SLO it misses there is physics (boot and
load), and what another policy misses beyond it is that policy's.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.sim.policies.placement import Placement
from gpufleet.sim.policies.sizing import Sizer, padded_demand, run_steps
from gpufleet.sim.policy import Context, Decision, Policy, View


class _WindowMax:
    """The largest value pushed within the last `width` pushes (a monotone deque)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.items: deque[tuple[int, int]] = deque()

    def push(self, i: int, value: int) -> int:
        while self.items and self.items[-1][1] <= value:
            self.items.pop()
        self.items.append((i, value))
        while self.items[0][0] <= i - self.width:
            self.items.popleft()
        return self.items[0][1]


class ReactivePolicy(Policy):
    name = "reactive"

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        self.period = ctx.step
        steps = run_steps(ctx)
        self.steps = steps
        sizer = self.sizer = Sizer(ctx, steps)
        self.window: dict[PoolKey, int] = {}
        self.arrived: dict[PoolKey, np.ndarray] = {}
        self.catch_up: dict[PoolKey, int] = {}
        for pool in sizer.pools:
            deadline, _ = sizer.slo(pool)
            self.window[pool] = max(1, deadline)
            _, work = padded_demand(ctx, pool, steps)
            self.arrived[pool] = np.concatenate(([0.0], np.cumsum(work)))
            lead = max((sizer.lead[k] for k in sizer.order[pool]), default=0)
            self.catch_up[pool] = lead + deadline
        self.held: dict[tuple[PoolKey, NodePoolKey], _WindowMax] = {
            (p, k): _WindowMax(sizer.lead[k] + 1) for p in sizer.pools for k in sizer.order[p]
        }

    def rate(self, pool: PoolKey, i: int) -> float:
        """Work units/s arriving over the SLO window ending with step i (never after it;
        before the start, nothing the run replays)."""
        window, arrived = self.window[pool], self.arrived[pool]
        lo = max(0, i + 1 - window)
        return float(arrived[i + 1] - arrived[lo]) / (window * self.ctx.step)

    def need(self, pool: PoolKey, i: int) -> float:
        """The rate now, plus the queue beyond a window's worth of it cleared over a lead
        time and the deadline."""
        rate = self.rate(pool, i)
        queue = self.ctx.queues.get(pool)
        backlog = queue.backlog if queue is not None else 0.0
        excess = max(0.0, backlog - rate * self.window[pool] * self.ctx.step)
        return rate + excess / (self.catch_up[pool] * self.ctx.step)

    def decide(self, view: View) -> Decision:
        sizer = self.sizer
        i = min(round(view.t / self.ctx.step), self.steps - 1)
        needs = {p: self.need(p, i) for p in sizer.pools}
        now = sizer.place(needs, i, sizer.limits(i, ahead=False))
        floor: Placement = {p: {k: now[p].get(k, 0) for k in sizer.order[p]} for p in sizer.pools}
        targets: Placement = {
            p: {k: self.held[p, k].push(i, floor[p][k]) for k in sizer.order[p]}
            for p in sizer.pools
        }
        return sizer.finish(i, targets, floor, floor, view)  # no future: soon is now

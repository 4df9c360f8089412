"""`static`: capacity fixed for the whole run at the trace's peak need (the least constant
rate that starts every request within the SLO: the taut string's steepest slope), placed
once on the allowed node pools in preference order."""

from __future__ import annotations

import math

import numpy as np

from gpufleet.planner.types import NodePoolKey
from gpufleet.sim.policies.envelope import least_service
from gpufleet.sim.policies.placement import Room, order
from gpufleet.sim.policies.sizing import deadline_steps
from gpufleet.sim.policy import Context, Decision, Policy, View


class StaticPolicy(Policy):
    name = "static"
    period = 60.0

    def setup(self, ctx: Context) -> None:
        room = Room(ctx)
        self.decision = Decision()
        pools = sorted(ctx.fleet.pools, key=lambda p: -ctx.fleet.priority(p))
        for pool in pools:
            spec, demand = ctx.fleet.pools[pool], ctx.demand.get(pool)
            need = 0.0
            if demand is not None and len(demand.work):
                slo = float(spec.slo.queue_wait_seconds) if spec.slo else 10.0
                served = least_service(demand.work, deadline_steps(slo, demand.step))
                need = float(np.max(served)) / demand.step
            placed: dict[NodePoolKey, int] = {}
            count = 0
            for key in order(ctx, pool):
                if need <= 1e-12 and count >= spec.min_replicas:
                    break
                rate = ctx.rates[pool][key]
                want = max(math.ceil(need / rate), spec.min_replicas - count)
                got = min(want, room.fits(key, spec.gpus_per_replica), spec.max_replicas - count)
                if got <= 0:
                    continue
                room.take(key, got, spec.gpus_per_replica)
                placed[key] = got
                count += got
                need -= got * rate
            self.decision.replicas[pool] = placed
        self.decision.nodes = {k: room.nodes(k) for k in ctx.cluster.nodes}

    def decide(self, view: View) -> Decision:
        return self.decision

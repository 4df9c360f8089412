"""Where the reference policies may put a pool's replicas, and how many fit."""

from __future__ import annotations

import math
from collections.abc import Mapping

from gpufleet.api import Role
from gpufleet.planner.placement import Catalog, candidates
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.sim.policy import Context

Placement = dict[PoolKey, dict[NodePoolKey, int]]


def order(ctx: Context, pool: PoolKey, primary_only: bool = False) -> list[NodePoolKey]:
    """Node pools the pool can run on, in the planner's preference order: primaries, the
    user's provider order, Spot where allowed, price per GPU. Every policy compared grows
    in this order, so all of them buy the same GPU types."""
    spec = ctx.fleet.pools[pool]
    rates = ctx.rates[pool]
    terms = ctx.fleet.terms_of(pool.namespace)
    options = candidates(spec, Catalog(ctx.fleet.providers), terms, pool.namespace)
    keys = [k for k in options.grow if k in rates]
    if primary_only:
        keys = [k for k in keys if ctx.fleet.providers[k.provider].role == Role.PRIMARY]
    return keys


class Room:
    """GPUs left per node pool under maxNodes and provider quotas, as replicas are placed."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.gpus = {k: 0 for k in ctx.cluster.nodes}

    def nodes(self, key: NodePoolKey) -> int:
        return math.ceil(self.gpus[key] / self.ctx.cluster.nodes[key].spec.gpus_per_node)

    def fits(self, key: NodePoolKey, gpus: int) -> int:
        """How many more replicas of `gpus` GPUs fit."""
        n = self.ctx.cluster.nodes[key]
        gpn = n.spec.gpus_per_node
        limit = n.spec.max_nodes * gpn
        quota = n.provider.gpu_quota
        if quota is not None:
            used = sum(
                math.ceil(self.gpus[k] / self.ctx.cluster.nodes[k].spec.gpus_per_node)
                * self.ctx.cluster.nodes[k].spec.gpus_per_node
                for k in self.gpus
                if k.provider == key.provider and k != key
            )
            limit = min(limit, (quota - used) // gpn * gpn)
        return max(0, (limit - self.gpus[key]) // gpus)

    def take(self, key: NodePoolKey, replicas: int, gpus: int) -> None:
        self.gpus[key] += replicas * gpus


def start_state(ctx: Context, first_work: Mapping[PoolKey, float]) -> Placement:
    """The replicas every policy starts with: the fleet ran before the trace began, so it
    holds what serves each pool's first lead time at its SLO target (units/s,
    `engine.first_work`) at the rate replicas truly serve (`ctx.rates`: measured,
    or the run's own), at least minReplicas, placed highest priority first in the
    planner's order within maxNodes and quotas. The nodes are those the replicas fill.

    Not the declared rate: a pool whose work is heavier than it declares would otherwise
    start short by that factor under every policy, a shortfall no policy could avoid and
    that says nothing of how each one learns (the oracle itself would miss its target).
    Starting at the true work puts each policy where any autoscaler would have left a
    fleet that had run at that load, and asks of it only to keep what it needs."""
    room = Room(ctx)
    out: Placement = {}
    for pool in sorted(ctx.fleet.pools, key=lambda p: (-ctx.fleet.priority(p), p)):
        spec = ctx.fleet.pools[pool]
        need, count = first_work.get(pool, 0.0), 0
        placed: dict[NodePoolKey, int] = {}
        for key in order(ctx, pool):
            per_replica = ctx.rates[pool][key]
            want = max(math.ceil(need / per_replica - 1e-9), spec.min_replicas - count)
            if want <= 0:
                break
            got = min(want, room.fits(key, spec.gpus_per_replica), spec.max_replicas - count)
            if got <= 0:
                continue
            room.take(key, got, spec.gpus_per_replica)
            placed[key] = got
            count += got
            need -= got * per_replica
        out[pool] = placed
    return out


def nodes_for(ctx: Context, placement: Placement) -> dict[NodePoolKey, int]:
    """The nodes each node pool needs for `placement`, counted whole."""
    gpus = dict.fromkeys(ctx.cluster.nodes, 0)
    for pool, by_key in placement.items():
        for key, n in by_key.items():
            gpus[key] += n * ctx.fleet.pools[pool].gpus_per_replica
    return {k: math.ceil(g / ctx.cluster.nodes[k].spec.gpus_per_node) for k, g in gpus.items()}

"""Where the reference policies may put a pool's replicas, and how many fit."""

from __future__ import annotations

import math

from gpufleet.api import Role
from gpufleet.planner.placement import Catalog, candidates
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.sim.policy import Context


def order(
    ctx: Context, pool: PoolKey, primary_only: bool = False, fewest_gpus: bool = False
) -> list[NodePoolKey]:
    """Node pools the pool can run on, in the planner's preference order: primaries, the
    user's provider order, Spot where allowed, price per GPU.

    With `fewest_gpus` (the oracle, a bound on GPU-hours) the node pools that serve the
    most work per GPU come first, the planner's order breaking ties.
    """
    spec = ctx.fleet.pools[pool]
    rates = ctx.rates[pool]
    keys = [k for k in candidates(spec, Catalog(ctx.fleet.providers)).grow if k in rates]
    if primary_only:
        keys = [k for k in keys if ctx.fleet.providers[k.provider].role == Role.PRIMARY]
    if fewest_gpus:
        keys.sort(key=lambda k: -rates[k])  # stable: ties keep the planner's order
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

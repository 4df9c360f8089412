"""Burst copies in the fleet loop: their replicas in the snapshot (their changes are in
reconcilers/changes.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from gpufleet.api.pool import ServingPoolSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.planner.types import NodePoolKey, PoolKey, frozen_map
from gpufleet.reconcilers.burst.copies import Copy, attribute
from gpufleet.reconcilers.observe import Observed


def add_remote_replicas(
    observed: Observed,
    pools: Mapping[PoolKey, ServingPoolSpec],
    providers: Mapping[str, CloudProviderSpec],
    copies: Mapping[str, Mapping[PoolKey, Copy]],
    last_placements: Mapping[PoolKey, Mapping[NodePoolKey, int]],
) -> Observed:
    """`observed` with each pool's replicas on a remote provider: its copy's replicas
    there; those serving are its copy's ready replicas, as the remote controller counts
    them, so a throttle holds while burst capacity loads its model."""
    snapshot = observed.snapshot
    running = [
        (provider, key, copy)
        for provider, found in sorted(copies.items())
        for key, copy in sorted(found.items())
        if key in snapshot.pools and copy.replicas > 0
    ]
    if not running:  # most ticks of most fleets: nothing to add, nothing to copy
        return observed
    pool_obs = dict(snapshot.pools)
    current = dict(observed.current_by_provider)
    for provider, key, copy in running:
        placed = dict(pool_obs[key].replicas)
        for np_key, count in attribute(
            provider,
            copy.replicas,
            providers[provider],
            last_placements.get(key, {}),
            pools[key].gpu_types,
        ).items():
            placed[np_key] = placed.get(np_key, 0) + count
        ready = pool_obs[key].ready_replicas
        pool_obs[key] = replace(
            pool_obs[key],
            replicas=frozen_map(placed),
            ready_replicas=None if ready is None else ready + min(copy.ready, copy.replicas),
        )
        by_provider = dict(current.get(key, {}))
        by_provider[provider] = by_provider.get(provider, 0) + copy.replicas
        current[key] = by_provider
    return replace(
        observed,
        snapshot=replace(snapshot, pools=frozen_map(pool_obs)),
        current_by_provider=current,
    )

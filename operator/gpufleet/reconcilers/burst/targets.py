"""Burst copies in the fleet loop: their replicas in the snapshot, their resizes as targets."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from gpufleet.api.pool import Mode, ServingPoolSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.planner.types import Fleet, FleetPlan, NodePoolKey, PoolKey, frozen_map
from gpufleet.reconcilers.burst.copies import Copy, attribute, stale
from gpufleet.reconcilers.burst.copies import target as remote_target
from gpufleet.reconcilers.burst.remote import RemoteClusters
from gpufleet.reconcilers.cache import WorkloadEntry
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
    pool_obs = dict(snapshot.pools)
    current = {k: dict(v) for k, v in observed.current_by_provider.items()}
    for provider, found in sorted(copies.items()):
        for key, copy in sorted(found.items()):
            if key not in pool_obs or copy.replicas <= 0:
                continue
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
            by_provider = current.setdefault(key, {})
            by_provider[provider] = by_provider.get(provider, 0) + copy.replicas
    return replace(
        observed,
        snapshot=replace(snapshot, pools=frozen_map(pool_obs)),
        current_by_provider=current,
    )


def remote_targets(
    remote: RemoteClusters | None,
    plan: FleetPlan,
    fleet: Fleet,
    targets: Mapping[PoolKey, WorkloadEntry],
    observed: Observed,
    copies: Mapping[str, Mapping[PoolKey, Copy]],
    known: set[PoolKey],
    current: dict[str, int],
    planned: dict[str, int],
    setters: dict[str, Callable[[int, str], Awaitable[bool]]],
) -> list[str]:
    """Add each burst copy (wanted or existing) to the targets; those to re-apply."""
    if remote is None:
        return []
    wanted: dict[tuple[str, PoolKey], int] = {}
    for pool_key, pool_plan in plan.pools.items():
        if fleet.pools[pool_key].mode == Mode.DRY_RUN:
            continue
        for (provider, _), count in pool_plan.placements.items():
            if fleet.providers[provider].cluster.kubeconfig_secret_ref is not None:
                wanted[(provider, pool_key)] = wanted.get((provider, pool_key), 0) + count
    # A copy whose pool is gone is deleted; one whose pool is invalid, has no target or
    # is in DryRun is held (a typo must not drain a burst), as are other installations'.
    for provider, found in copies.items():
        for pool_key in found:
            planned_pool = pool_key in plan.pools and pool_key in fleet.pools
            active = planned_pool and fleet.pools[pool_key].mode != Mode.DRY_RUN
            gone = pool_key not in known and remote.owns(pool_key.namespace)
            if active or gone:
                wanted.setdefault((provider, pool_key), 0)
    refresh: list[str] = []
    for (provider, pool_key), size in sorted(wanted.items()):
        if provider in observed.snapshot.unreachable_providers:
            continue  # neither seen nor reachable: hold what is there
        copy = copies.get(provider, {}).get(pool_key)
        workload = targets.get(pool_key)
        name = copy.name if copy else workload.name if workload else None
        if name is None:
            continue
        target = remote_target(provider, pool_key.namespace, name)
        current[target] = copy.replicas if copy else 0
        setters[target] = functools.partial(remote.resize, provider, pool_key, copy, workload)
        if copy is not None and size == 0:
            current[target] = -1  # an empty copy is still there to delete
        if size != current[target]:
            planned[target] = size
        elif copy and workload and size > 0 and stale(copy, workload):
            refresh.append(target)
    return refresh

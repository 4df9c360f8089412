"""What a tick changes, as data: the plan and the observation in, typed changes out.

Pure: no I/O, no clock, no logging. The fleet loop gathers what only I/O can tell (each
pool's drain request, which moved pools still wait, which node pools hold pods the plan does
not count) into `Inputs` first; reconcilers/actuation.py applies the result.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from gpufleet.api.pool import Mode
from gpufleet.drivers.base import NodePoolRef, NodePoolState
from gpufleet.planner.types import Fleet, FleetPlan, NodePoolKey, NodePoolPlan, PoolKey, PoolPlan
from gpufleet.reconcilers.actuation import (
    ApplyCopy,
    Change,
    DeleteCopy,
    MoveReplicas,
    ResizeNodePool,
    ScaleWorkload,
    ordered,
)
from gpufleet.reconcilers.burst.copies import Copy, stale
from gpufleet.reconcilers.cache import NodeEntry, PodEntry, WorkloadEntry
from gpufleet.reconcilers.drain import DrainRequest


@dataclass(frozen=True)
class Copies:
    """The burst copies found in each reachable remote cluster, the pools that still exist
    (valid or not) and which namespaces' copies are this installation's to delete."""

    found: Mapping[str, Mapping[PoolKey, Copy]]
    known: Collection[PoolKey]
    owns: Callable[[str], bool]


@dataclass(frozen=True)
class Inputs:
    plan: FleetPlan
    fleet: Fleet
    workloads: Mapping[PoolKey, WorkloadEntry]
    # Node pools the loop can resize: a driver, a state and a reachable provider.
    node_pool_refs: Mapping[NodePoolKey, NodePoolRef]
    node_pool_sizes: Mapping[NodePoolKey, int]
    unreachable: Collection[str] = ()
    drains: Mapping[PoolKey, DrainRequest] = field(default_factory=dict)
    # Pools that moved replicas and must wait to recreate them (Drainer.holds).
    waiting: Collection[PoolKey] = ()
    # Node pools running pods the plan does not count: they grow, never shrink.
    hold_shrinks: Collection[NodePoolKey] = ()
    copies: Copies | None = None  # None: remote clusters are not enabled
    # Pools whose drain state could not be read: no change for them, no node pool shrinks.
    failed: Collection[PoolKey] = ()
    # Per node pool whose nodes' pods the loop sees: its nodes, first to remove first.
    removal: Mapping[NodePoolKey, tuple[str, ...]] = field(default_factory=dict)


def plan_changes(inputs: Inputs) -> tuple[tuple[Change, ...], dict[PoolKey, Exception]]:
    """Every change this tick makes, in the order to make them, and the pools whose changes
    could not be worked out (an unexpected error: theirs only; no node pool shrinks then,
    since those pools' pods may run anywhere)."""
    changes: list[Change] = []
    failed: dict[PoolKey, Exception] = {}
    for pool_key, pool_plan in sorted(inputs.plan.pools.items()):
        if pool_key in inputs.failed:
            continue
        try:
            change = workload_change(inputs, pool_key, pool_plan)
        except Exception as exc:  # one pool's failure must not stop the others
            failed[pool_key] = exc
            continue
        if change is not None:
            changes.append(change)
    hold = set(inputs.plan.node_pools) if failed or inputs.failed else set(inputs.hold_shrinks)
    changes += node_pool_changes(
        inputs.plan.node_pools, inputs.node_pool_sizes, inputs.node_pool_refs, hold, inputs.removal
    )
    if inputs.copies is not None:
        changes += copy_changes(inputs, inputs.copies)
    return ordered(changes), failed


def local_replicas(pool_plan: PoolPlan, fleet: Fleet) -> int:
    """The replicas the plan places in this cluster (the pool's own workload)."""
    return sum(
        count
        for (provider, _), count in pool_plan.placements.items()
        if fleet.providers[provider].cluster.kubeconfig_secret_ref is None
    )


def workload_change(inputs: Inputs, pool_key: PoolKey, pool_plan: PoolPlan) -> Change | None:
    """A resize of the pool's workload, a move of its preempted replicas, or nothing: in
    DryRun, at its size, or while replicas it moved wait for the pools they yielded to."""
    if inputs.fleet.pools[pool_key].mode == Mode.DRY_RUN:
        return None
    workload = inputs.workloads[pool_key]
    local = local_replicas(pool_plan, inputs.fleet)
    drain = inputs.drains.get(pool_key)
    if local > workload.replicas and pool_key in inputs.waiting:
        return None
    if local != workload.replicas:
        return ScaleWorkload(pool_key, workload, workload.replicas, local, drain)
    if drain is not None:
        return MoveReplicas(pool_key, workload, drain)
    return None


def node_pool_changes(
    plans: Mapping[NodePoolKey, NodePoolPlan],
    sizes: Mapping[NodePoolKey, int],
    refs: Mapping[NodePoolKey, NodePoolRef],
    hold_shrinks: Collection[NodePoolKey],
    removal: Mapping[NodePoolKey, tuple[str, ...]] | None = None,
) -> list[ResizeNodePool]:
    """Resizes of the node pools the loop can resize (`refs` and `sizes`); none of those in
    `hold_shrinks` to smaller than now. A shrink names the nodes to remove where `removal`
    orders the node pool's nodes."""
    out = []
    for key, plan in sorted(plans.items()):
        if key not in refs or key not in sizes:
            continue
        current, wanted = sizes[key], plan.desired_nodes
        if wanted == current or (key in hold_shrinks and wanted < current):
            continue
        order = removal.get(key, ()) if removal and wanted < current else ()
        # The target may exceed the nodes there are (Karpenter's is a limit; nodes not
        # launched yet): name only nodes beyond what is wanted, never one that would stay.
        named = order[: max(0, min(current, len(order)) - wanted)]
        out.append(ResizeNodePool(key, refs[key], current, wanted, named))
    return out


def removal_order(
    all_nodes: Sequence[str], ready_nodes: Collection[str], gpu_pods: Mapping[str, int]
) -> tuple[str, ...]:
    """A node pool's nodes in the order a shrink removes them: fewest GPU pods bound first,
    so idle nodes go before any that serve (a replica on a removed node is lost until it
    loads elsewhere, and a node kept idle for a scale-down probe is the one meant to go,
    planner/nodes.py); among equals, those not ready yet (nothing runs there), then by name.
    Cluster API's default delete policy is random and Karpenter's and an Auto Scaling
    group's are the newest or oldest nodes: none looks at what runs where."""
    ready = set(ready_nodes)
    return tuple(sorted(all_nodes, key=lambda n: (gpu_pods.get(n, 0), n in ready, n)))


def wanted_copies(inputs: Inputs, copies: Copies) -> dict[tuple[str, PoolKey], int]:
    """The size of each pool's copy on each remote provider: the plan's placements there; 0
    for a copy whose pool is gone. A copy whose pool is invalid, has no target or is in
    DryRun is held (a typo must not drain a burst), as are other installations' copies."""
    plan, fleet = inputs.plan, inputs.fleet
    wanted: dict[tuple[str, PoolKey], int] = {}
    for pool_key, pool_plan in plan.pools.items():
        if fleet.pools[pool_key].mode == Mode.DRY_RUN:
            continue
        for (provider, _), count in pool_plan.placements.items():
            if fleet.providers[provider].cluster.kubeconfig_secret_ref is not None:
                wanted[(provider, pool_key)] = wanted.get((provider, pool_key), 0) + count
    for provider, found in copies.found.items():
        for pool_key in found:
            planned = pool_key in plan.pools and pool_key in fleet.pools
            active = planned and fleet.pools[pool_key].mode != Mode.DRY_RUN
            gone = pool_key not in copies.known and copies.owns(pool_key.namespace)
            if active or gone:
                wanted.setdefault((provider, pool_key), 0)
    return wanted


def copy_changes(inputs: Inputs, copies: Copies) -> list[Change]:
    """Applies, resizes, refreshes and deletes of burst copies on reachable providers (one
    neither seen nor reachable holds what is there)."""
    out: list[Change] = []
    for (provider, pool_key), size in sorted(wanted_copies(inputs, copies).items()):
        if provider in inputs.unreachable:
            continue
        copy = copies.found.get(provider, {}).get(pool_key)
        workload = inputs.workloads.get(pool_key)
        if size == 0:
            if copy is not None:
                out.append(DeleteCopy(provider, pool_key, copy))
            continue
        if workload is None:
            continue
        current = copy.replicas if copy else 0
        spec = inputs.fleet.providers.get(provider)
        access = spec.cluster if spec is not None else None
        if size != current or (copy is not None and stale(copy, workload, access)):
            out.append(ApplyCopy(provider, pool_key, workload, copy, current, size))
    return out


def removals(
    shrinking: Collection[NodePoolKey],
    states: Mapping[NodePoolKey, NodePoolState],
    nodes: Sequence[NodeEntry],
    pods: Mapping[str, Sequence[PodEntry]],
) -> dict[NodePoolKey, tuple[str, ...]]:
    """`removal_order` for each node pool in `shrinking` whose Nodes the loop watches (by
    the node pool label, in this cluster). One whose ready nodes it does not all see, a
    remote cluster's, is left to its backend: names it cannot match to pods would only
    pick at random. `pods`: the GPU pods by namespace."""
    if not shrinking:
        return {}  # most ticks: no pod is counted
    seen: dict[NodePoolKey, set[str]] = {}
    for node in nodes:
        key = NodePoolKey(node.provider, node.node_pool)
        if key in shrinking:
            seen.setdefault(key, set()).add(node.name)
    gpu_pods: dict[str, int] = {}
    for in_namespace in pods.values():
        for pod in in_namespace:
            if pod.node_name is not None and not (pod.terminating or pod.finished):
                gpu_pods[pod.node_name] = gpu_pods.get(pod.node_name, 0) + 1
    out = {}
    for key in shrinking:
        state, names = states.get(key), seen.get(key)
        if state is None or names is None or not names.issuperset(state.ready_nodes):
            continue
        out[key] = removal_order(state.all_nodes, state.ready_nodes, gpu_pods)
    return out

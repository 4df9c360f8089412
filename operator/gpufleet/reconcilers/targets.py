"""Which pool scales a workload that several pools name.

Two pools that set one Deployment's size would set it in turn every tick (20 wanted, then
1) and both report Ready. One of them must keep it, and the rule must not let a newcomer
take a workload from the pool already scaling it: tenants of one namespace can create
pools, and "the last one wins" (or "nobody scales it", which a new pool could cause at
will) would let any of them stop a running service from scaling. So the oldest pool keeps
it, by metadata.creationTimestamp, then uid for pools created in the same second (the uid
is random but fixed, so every tick and every replica picks the same one), then name, which
only identical timestamps and uids reach. The others scale nothing and say who holds it.

Only pools with a valid spec claim a workload: a pool whose spec fails to parse has no
target the operator may trust, and it scales nothing anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from gpufleet.planner.types import PoolKey
from gpufleet.reconcilers.cache import PoolEntry

# (namespace, kind, name): a workload, keyed as View.workloads is.
TargetKey = tuple[str, str, str]

TARGET_CONFLICT = "TargetConflict"
_NEVER = datetime.min.replace(tzinfo=UTC)


def target_of(entry: PoolEntry) -> TargetKey | None:
    """The workload the pool's replicas are set on; None without a valid spec.

    A GIE InferencePool (spec.inferencePoolRef) has no scale subresource, so the key stays
    the workload's even behind one. Two pools behind one InferencePool with two workloads
    do not conflict here: each sees the other's pods in its selector, and neither is planned
    (reconcilers/inference_pools.py)."""
    spec = entry.parsed.value
    if spec is None:
        return None
    ref = spec.scale_target_ref
    return (entry.namespace, str(ref.kind), ref.name)


def _age(entry: PoolEntry) -> tuple[bool, datetime, str, str]:
    """Oldest first. A pool without a readable creation time (never the API server's) goes
    last: it cannot prove it came first."""
    try:
        created = datetime.fromisoformat(entry.created)
    except ValueError:
        return (True, _NEVER, entry.uid, entry.name)
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return (False, created, entry.uid, entry.name)


def claims(
    entries: Iterable[PoolEntry],
) -> tuple[dict[TargetKey, PoolKey], dict[PoolKey, PoolKey]]:
    """holders: each named workload and the pool that scales it; conflicts: every other
    pool that names a held workload, and the pool holding it."""
    named: dict[TargetKey, list[PoolEntry]] = {}
    for entry in entries:
        target = target_of(entry)
        if target is not None:
            named.setdefault(target, []).append(entry)
    holders: dict[TargetKey, PoolKey] = {}
    conflicts: dict[PoolKey, PoolKey] = {}
    for target, pools in named.items():
        oldest, *others = sorted(pools, key=_age)
        holder = PoolKey(oldest.namespace, oldest.name)
        holders[target] = holder
        for other in others:
            conflicts[PoolKey(other.namespace, other.name)] = holder
    return holders, conflicts

"""The simulated clouds: node pools that boot, replicas that schedule and load, failures.

This is the ground truth the policies act on. Node scale-ups take the node pool's
bootSeconds; a replica needs a free GPU on a Ready node, then loads its model for a time
drawn from the measured distribution. Quotas (the provider's gpuQuota) and injected
capacity errors truncate scale-ups and leave `last_error` for the policy to see.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

from gpufleet.api import CloudProviderSpec, NodePool, ServingPoolSpec
from gpufleet.planner.sharing import priority_groups
from gpufleet.planner.types import (
    CapacityError,
    CapacityErrorKind,
    Fleet,
    NodePoolKey,
    PoolKey,
)
from gpufleet.sim.data import Quantiles
from gpufleet.sim.scenario import Failure


@dataclass
class Nodes:
    key: NodePoolKey
    spec: NodePool
    provider: CloudProviderSpec
    ready: int = 0
    booting: list[float] = field(default_factory=list)  # ready times, sorted
    last_error: CapacityError | None = None

    @property
    def total(self) -> int:
        return self.ready + len(self.booting)

    @property
    def gpus(self) -> int:
        return self.ready * self.spec.gpus_per_node


@dataclass
class Replicas:
    """One pool's replicas on one node pool."""

    pending: int = 0
    loading: list[float] = field(default_factory=list)  # ready times, sorted
    ready: int = 0

    @property
    def total(self) -> int:
        return self.pending + len(self.loading) + self.ready


class Cluster:
    def __init__(
        self,
        fleet: Fleet,
        failures: list[Failure],
        load: Quantiles,
        seed: int,
        load_scale: dict[PoolKey, float] | None = None,
    ) -> None:
        self.fleet = fleet
        self.failures = failures
        self.load = load
        self.rng = random.Random(seed)
        self.nodes: dict[NodePoolKey, Nodes] = {}
        for pname, provider in sorted(fleet.providers.items()):
            for np_spec in provider.node_pools:
                self.nodes[NodePoolKey(pname, np_spec.name)] = Nodes(
                    NodePoolKey(pname, np_spec.name), np_spec, provider
                )
        self.replicas: dict[PoolKey, dict[NodePoolKey, Replicas]] = {
            p: {k: Replicas() for k in self.nodes} for p in fleet.pools
        }
        # Pools in the order the scheduler serves them: higher priority first; pools of one
        # priority take turns (`_schedule`), as the planner shares among them.
        self.groups = priority_groups(fleet.pools, fleet.priority)
        self.order = [p for group in self.groups for p in group]
        self._turn = 0  # rotates which pool of a group starts its turns
        self.load_scale = load_scale or {}
        self.next_event = 0.0
        self.epoch0 = 0.0  # wall clock of t = 0: errors carry wall-clock times
        self.node_actions = 0
        self.replica_actions = 0

    # --- actuation ---------------------------------------------------------------------

    def _limit(self, n: Nodes, now: float) -> tuple[int, CapacityErrorKind | None]:
        """Most nodes the cloud grants now, and the error a request beyond it gets."""
        limit, kind = 10**9, None
        quota = n.provider.gpu_quota
        if quota is not None:
            others = sum(
                o.total * o.spec.gpus_per_node
                for k, o in self.nodes.items()
                if k.provider == n.key.provider and k != n.key
            )
            limit, kind = (
                max(0, (quota - others) // n.spec.gpus_per_node),
                CapacityErrorKind.QUOTA_EXCEEDED,
            )
        for f in self.failures:
            if f.node_pool == n.key and f.start <= now < f.end and f.max_nodes < limit:
                limit, kind = f.max_nodes, CapacityErrorKind(f.kind)
        return min(limit, n.spec.max_nodes), kind

    def set_nodes(self, key: NodePoolKey, target: int, now: float, warm: bool = False) -> None:
        n = self.nodes[key]
        if target == n.total:
            return
        self.node_actions += 1
        if target > n.total:
            limit, kind = self._limit(n, now)
            grant = max(n.total, min(target, limit))
            if grant < target and kind is not None:
                n.last_error = CapacityError(kind, self.epoch0 + now)
            add = grant - n.total
            if warm:
                n.ready += add
            else:
                ready_at = now + n.spec.boot_seconds
                n.booting.extend([ready_at] * add)
                self.next_event = min(self.next_event, ready_at) if add else self.next_event
            return
        drop = n.total - target
        while drop and n.booting:  # cancel the newest boots first
            n.booting.pop()
            drop -= 1
        n.ready -= drop
        self._evict(key)
        self.next_event = min(self.next_event, now)  # evicted replicas may fit elsewhere

    def set_replicas(
        self, pool: PoolKey, key: NodePoolKey, target: int, now: float, warm: bool = False
    ) -> None:
        r = self.replicas[pool][key]
        if target == r.total:
            return
        self.replica_actions += 1
        if target > r.total:
            add = target - r.total
            if warm:
                r.ready += add
            else:
                r.pending += add
                self.next_event = now
            return
        drop = r.total - target
        take = min(drop, r.pending)  # remove what serves nothing yet first
        r.pending -= take
        drop -= take
        if drop:  # GPUs come free: other pools' pending replicas schedule at once
            self.next_event = min(self.next_event, now)
        while drop and r.loading:
            r.loading.pop()
            drop -= 1
        r.ready -= drop

    def preempt(self, pool: PoolKey, key: NodePoolKey, count: int, target: int, now: float) -> None:
        """Evict up to `count` of the pool's replicas on the node pool's nodes, as the
        operator's drain does before resizing to `target`: unscheduled replicas beyond the
        shrink are earlier moves already made, so they count as evicted. The evicted ones
        become pending; the next schedule hands their GPUs to higher-priority pools first.
        In-flight requests are not modelled: a replica serves until it is evicted."""
        r = self.replicas[pool][key]
        shrink = max(0, r.total - target)
        self.evict(pool, key, max(0, count - max(0, r.pending - shrink)), now)

    def evict(self, pool: PoolKey, key: NodePoolKey, count: int, now: float) -> None:
        """Move up to `count` of the pool's scheduled replicas on the node pool back to
        pending, loading ones first (kube-scheduler's preemption of lower priorities: the
        Deployment keeps its count, so they wait for GPUs again)."""
        r = self.replicas[pool][key]
        while count and (r.loading or r.ready):
            if r.loading:
                r.loading.pop()
            else:
                r.ready -= 1
            r.pending += 1
            count -= 1
            self.next_event = min(self.next_event, now)  # schedule them at the next step

    def _used_gpus(self, key: NodePoolKey) -> int:
        return sum(
            (len(rs[key].loading) + rs[key].ready) * self.fleet.pools[p].gpus_per_replica
            for p, rs in self.replicas.items()
        )

    def _evict(self, key: NodePoolKey) -> None:
        """Nodes went away: replicas beyond the GPUs left become pending (the Deployment
        recreates them), lowest priority first; pools of one priority lose one in turn."""
        free = self.nodes[key].gpus - self._used_gpus(key)
        for group in reversed(self.groups):
            while free < 0:
                running = [
                    p for p in group if self.replicas[p][key].loading or self.replicas[p][key].ready
                ]
                if not running:
                    break
                for pool in running:
                    if free >= 0:
                        break
                    r = self.replicas[pool][key]
                    if r.loading:
                        r.loading.pop()
                    else:
                        r.ready -= 1
                    r.pending += 1
                    free += self.fleet.pools[pool].gpus_per_replica
            if free >= 0:
                return

    # --- time --------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Boot nodes, schedule pending replicas, finish model loads due by `now`."""
        if now < self.next_event:
            return
        nxt = float("inf")
        for key, n in self.nodes.items():
            if n.booting and n.booting[0] <= now:
                i = bisect.bisect_right(n.booting, now)
                n.ready += i
                del n.booting[:i]
            if n.booting:
                nxt = min(nxt, n.booting[0])
            free = n.gpus - self._used_gpus(key)
            for group in self.groups:
                free = self._schedule(group, key, free, now)
            for pool in self.order:
                r = self.replicas[pool][key]
                if r.loading and r.loading[0] <= now:
                    i = bisect.bisect_right(r.loading, now)
                    r.ready += i
                    del r.loading[:i]
                if r.loading:
                    nxt = min(nxt, r.loading[0])
        self.next_event = nxt

    def _schedule(self, group: list[PoolKey], key: NodePoolKey, free: int, now: float) -> int:
        """Start pending replicas of pools of one priority on the node pool's free GPUs;
        what is left. Alone, a pool takes all it can; otherwise namespaces take one replica
        each in turn (and a namespace's pools in turn among themselves), so that when GPUs
        are short each tenant gets about an equal part, never by name or by how many pools
        it has: the planner's rule (planner/sharing.py)."""
        by_namespace: dict[str, list[PoolKey]] = {}
        for pool in group:
            if self.replicas[pool][key].pending:
                by_namespace.setdefault(pool.namespace, []).append(pool)
        waiting = list(by_namespace)
        if len(waiting) > 1:
            start = self._turn % len(waiting)
            self._turn += 1
            waiting = waiting[start:] + waiting[:start]
        turns = dict.fromkeys(waiting, 0)
        while waiting:
            still = []
            for namespace in waiting:
                pools = [
                    p
                    for p in by_namespace[namespace]
                    if self.replicas[p][key].pending
                    and self.fleet.pools[p].gpus_per_replica <= free
                ]
                if not pools:
                    continue
                pool = pools[turns[namespace] % len(pools)]
                turns[namespace] += 1
                r = self.replicas[pool][key]
                r.pending -= 1
                free -= self.fleet.pools[pool].gpus_per_replica
                scale = self.load_scale.get(pool, 1.0)
                bisect.insort(r.loading, now + scale * self.load.sample(self.rng))
                still.append(namespace)
            waiting = still
        return free

    # --- observation -------------------------------------------------------------------

    def pending(self, pool: PoolKey) -> int:
        return sum(r.pending for r in self.replicas[pool].values())

    def pool_spec(self, pool: PoolKey) -> ServingPoolSpec:
        return self.fleet.pools[pool]

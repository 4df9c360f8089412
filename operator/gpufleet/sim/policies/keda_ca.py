"""`keda-ca`: KEDA scalers feeding the HPA, with Cluster-Autoscaler node scaling, on one
cloud, with no power awareness and no burst. Two configurations are compared:

- `keda-ca`, as a competent platform team runs it: a ScaledObject with two Prometheus
  triggers, the pool's queue query (target `queue.targetPerReplica`) and its arrival-rate
  query (target 70 % of the per-replica rate the pool declares for its slowest GPU type,
  in requests/s); Cluster Autoscaler with `--scale-down-unneeded-time` and
  `--scale-down-delay-after-add` at 300 s; and the pools' PriorityClasses (Fleet.priorities),
  so that kube-scheduler preempts lower-priority replicas for pending higher-priority ones.
- `keda-ca-defaults`: the queue trigger alone, Cluster Autoscaler's 10-minute defaults, no
  PriorityClass. On an empty queue it shrinks to one replica whatever the arrival rate.

KEDA (v2 defaults): pollingInterval 30 s decides activation from zero; the HPA reads the
metrics (one scrape old) every 15 s (--horizontal-pod-autoscaler-sync-period). Per metric
it wants ceil(metric / target) (KEDA's AverageValue targets), or the current count within
its 10 % tolerance, and takes the highest; scale-up has no stabilization and is limited to
max(4 pods, 100 %) per 15 s; scale-down is stabilised over 300 s (the highest
recommendation of the window, the first of which is the replicas it found running) and
limited to 100 % per 15 s. KEDA's cooldownPeriod (300 s) holds the last replica before
scaling to zero.

Cluster Autoscaler: scans every 10 s (--scan-interval); adds nodes only for pending
replicas, counting nodes still booting; removes a node after it has been unneeded for the
unneeded time, not within the delay after a scale-up, at most 10 empty nodes at a time;
backs a node group off 5 min after a failed scale-up.

kube-scheduler: replicas take free GPUs on Ready nodes; a replica left pending evicts
scheduled replicas of lower-priority pools on its node pools, lowest priority first (they
go back to pending, and Cluster Autoscaler adds nodes for them).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from gpufleet.api import Role
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.sim.policies.placement import order
from gpufleet.sim.policy import Context, Decision, Policy, View

POLLING = 30.0
HPA_SYNC = 15.0
TOLERANCE = 0.1
STABILIZE_DOWN = 300.0
COOLDOWN = 300.0
CA_SCAN = 10.0
EMPTY_BULK = 10
BACKOFF = 300.0
ARRIVAL_TARGET_SHARE = 0.7  # of the declared per-replica rate


@dataclass(frozen=True)
class KedaCaConfig:
    arrival_trigger: bool  # a second trigger on the pool's arrivalRateQuery
    unneeded_seconds: float  # --scale-down-unneeded-time
    delay_after_add_seconds: float  # --scale-down-delay-after-add
    preemption: bool  # kube-scheduler preempts by the pools' PriorityClasses


TUNED = KedaCaConfig(
    arrival_trigger=True, unneeded_seconds=300.0, delay_after_add_seconds=300.0, preemption=True
)
DEFAULTS = KedaCaConfig(
    arrival_trigger=False, unneeded_seconds=600.0, delay_after_add_seconds=600.0, preemption=False
)


class KedaCaPolicy(Policy):
    period = 5.0  # the greatest common divisor of the timers above

    def __init__(self, config: KedaCaConfig = TUNED, name: str = "keda-ca") -> None:
        self.config = config
        self.name = name

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        primaries = sorted(
            (p.order, n) for n, p in ctx.fleet.providers.items() if p.role == Role.PRIMARY
        )
        self.cloud = primaries[0][1] if primaries else ""
        self.groups: dict[PoolKey, list[NodePoolKey]] = {
            pool: [k for k in order(ctx, pool, primary_only=True) if k.provider == self.cloud]
            for pool in ctx.fleet.pools
        }
        self.arrival_target = {
            pool: target
            for pool in ctx.fleet.pools
            if (target := self._arrival_target(pool)) is not None
        }
        self.recs: dict[PoolKey, deque[tuple[float, int]]] = {p: deque() for p in ctx.fleet.pools}
        self.last_active: dict[PoolKey, float] = {}
        self.unneeded: dict[NodePoolKey, deque[tuple[float, int]]] = {}
        self.last_add = -math.inf

    def _arrival_target(self, pool: PoolKey) -> float | None:
        """Requests/s per replica the arrival trigger targets: 70 % of the slowest declared
        rate; None without the trigger, an arrivalRateQuery or a declared rate."""
        spec = self.ctx.fleet.pools[pool]
        rates = [r.requests_per_minute for r in spec.service_rates if r.gpu_type in spec.gpu_types]
        if not (self.config.arrival_trigger and spec.queue.arrival_rate_query and rates):
            return None
        return ARRIVAL_TARGET_SHARE * min(rates) / 60.0

    # --- KEDA + HPA ------------------------------------------------------------------

    def _metrics(self, pool: PoolKey, view: View) -> list[tuple[float, float]]:
        """(value, per-replica target) of each trigger."""
        spec = self.ctx.fleet.pools[pool]
        out = [(view.scrape.queue_depth.get(pool, 0.0), float(spec.queue.target_per_replica))]
        if pool in self.arrival_target:
            out.append((view.scrape.arrival_rate.get(pool, 0.0), self.arrival_target[pool]))
        return out

    def _hpa(self, pool: PoolKey, view: View) -> int:
        spec = self.ctx.fleet.pools[pool]
        current = sum(view.replicas[pool].get(k, 0) for k in self.groups[pool])
        metrics = self._metrics(pool, view)
        queue = metrics[0][0]
        active = queue > spec.queue.activation_threshold or any(v > 0 for v, _ in metrics[1:])
        if active:
            self.last_active[pool] = view.t
        if current == 0:
            # Activation is KEDA's, on its polling interval
            if view.t % POLLING == 0 and active:
                want = max(math.ceil(v / target) for v, target in metrics)
                return max(1, spec.min_replicas, min(spec.max_replicas, want))
            return max(0, spec.min_replicas)
        raw = 0
        for value, target in metrics:
            want = math.ceil(value / target)
            if abs(value / (target * current) - 1.0) <= TOLERANCE:
                want = current
            raw = max(raw, want)
        recs = self.recs[pool]
        if not recs:  # the HPA's first sight of a target records its current replicas
            recs.append((view.t, current))
        recs.append((view.t, raw))
        while recs and recs[0][0] < view.t - STABILIZE_DOWN:
            recs.popleft()
        desired = raw
        if raw < current:  # stabilised: the highest recommendation of the window
            desired = min(current, max(r for _, r in recs))
        desired = min(desired, max(current + 4, 2 * current))
        floor = 1 if view.t - self.last_active.get(pool, -math.inf) < COOLDOWN else 0
        return max(spec.min_replicas, floor, min(spec.max_replicas, desired))

    def _place(self, pool: PoolKey, want: int, view: View, d: Decision) -> None:
        groups = self.groups[pool]
        if not groups:
            return
        cur = {k: view.replicas[pool].get(k, 0) for k in groups}
        delta = want - sum(cur.values())
        gpr = self.ctx.fleet.pools[pool].gpus_per_replica
        if delta > 0:
            for k in groups:  # the scheduler: free GPUs on Ready nodes first
                free = self._free_gpus(k, view) // gpr
                take = max(0, min(delta, free))
                cur[k] += take
                delta -= take
            if delta > 0:  # pending: CA's expander picks the first group with room
                room = [
                    k
                    for k in groups
                    if view.node_pools[k].target_nodes < self.ctx.cluster.nodes[k].spec.max_nodes
                ]
                cur[(room or groups)[0]] += delta
        elif delta < 0:
            for k in reversed(groups):
                take = min(-delta, cur[k])
                cur[k] -= take
                delta += take
        d.replicas[pool] = cur

    def _free_gpus(self, key: NodePoolKey, view: View) -> int:
        gpn = self.ctx.cluster.nodes[key].spec.gpus_per_node
        used = sum(
            view.bound[p].get(key, 0) * self.ctx.fleet.pools[p].gpus_per_replica for p in view.bound
        )
        return view.node_pools[key].ready_nodes * gpn - used

    # --- kube-scheduler preemption ---------------------------------------------------

    def _preempt(self, view: View, d: Decision) -> None:
        """Pending replicas of a pool evict lower-priority replicas scheduled on the same
        node pool, lowest priority first, as far as free GPUs fall short."""
        fleet = self.ctx.fleet
        pools = sorted(fleet.pools, key=lambda p: -fleet.priority(p))
        evicted: dict[PoolKey, dict[NodePoolKey, int]] = {}
        for pool in pools:
            spec = fleet.pools[pool]
            victims = sorted(
                (v for v in pools if fleet.priority(v) < fleet.priority(pool)),
                key=fleet.priority,
            )
            for key in self.groups[pool]:
                pending = view.replicas[pool].get(key, 0) - view.bound[pool].get(key, 0)
                short = pending * spec.gpus_per_replica - max(0, self._free_gpus(key, view))
                for v in victims:
                    if short <= 0:
                        break
                    gone = evicted.setdefault(v, {})
                    left = view.bound[v].get(key, 0) - gone.get(key, 0)
                    gpr = fleet.pools[v].gpus_per_replica
                    take = min(left, math.ceil(short / gpr))
                    if take > 0:
                        gone[key] = gone.get(key, 0) + take
                        short -= take * gpr
        d.evict = {v: by_key for v, by_key in evicted.items() if by_key}

    # --- Cluster Autoscaler ----------------------------------------------------------

    def _ca(self, view: View, d: Decision) -> None:
        nodes = self.ctx.cluster.nodes
        unneeded, delay = self.config.unneeded_seconds, self.config.delay_after_add_seconds
        for key, n in nodes.items():
            if key.provider != self.cloud:
                continue
            obs = view.node_pools[key]
            gpn = n.spec.gpus_per_node
            err = obs.last_error
            backed_off = err is not None and view.epoch - err.time < BACKOFF
            want_gpus = sum(
                (d.replicas.get(p, view.replicas[p]).get(key, 0))
                * self.ctx.fleet.pools[p].gpus_per_replica
                for p in view.replicas
            )
            needed = math.ceil(want_gpus / gpn)
            if needed > obs.target_nodes and not backed_off:
                d.nodes[key] = min(n.spec.max_nodes, needed)
                self.last_add = view.t
                continue
            # Scale down: nodes not needed by bound replicas, continuously for the unneeded time
            bound = sum(
                view.bound[p].get(key, 0) * self.ctx.fleet.pools[p].gpus_per_replica
                for p in view.bound
            )
            spare = max(0, obs.ready_nodes - max(math.ceil(bound / gpn), needed, n.spec.min_nodes))
            hist = self.unneeded.setdefault(key, deque())
            hist.append((view.t, spare))
            # Keep the last scan at or before the window's start: it says since when
            while len(hist) >= 2 and hist[1][0] <= view.t - unneeded:
                hist.popleft()
            if hist[0][0] > view.t - unneeded or view.t - self.last_add < delay:
                continue
            remove = min(min(s for _, s in hist), EMPTY_BULK)
            if remove > 0:
                d.nodes[key] = obs.target_nodes - remove
                hist.clear()

    def decide(self, view: View) -> Decision:
        d = Decision()
        if view.t % HPA_SYNC == 0:
            for pool in self.ctx.fleet.pools:
                self._place(pool, self._hpa(pool, view), view, d)
        if self.config.preemption:
            self._preempt(view, d)
        if view.t % CA_SCAN == 0:
            self._ca(view, d)
        return d

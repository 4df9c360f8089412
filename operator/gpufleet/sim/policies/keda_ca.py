"""`keda-ca`: a KEDA queue scaler feeding the HPA, with Cluster-Autoscaler node scaling,
at their default timings, on one cloud, with no power awareness and no burst.

KEDA (v2 defaults): pollingInterval 30 s decides activation from zero; the HPA reads the
queue metric (one scrape old) every 15 s (--horizontal-pod-autoscaler-sync-period) and wants
ceil(queue / targetPerReplica), with a 10 % tolerance, scale-up limited to max(4 pods, 100 %)
per 15 s, and scale-down stabilised over 300 s and limited to 100 % per 15 s. KEDA's
cooldownPeriod (300 s) holds the last replica before scaling to zero.

Cluster Autoscaler: scans every 10 s (--scan-interval); adds nodes only for pending replicas,
counting nodes still booting; removes a node after it is unneeded for 10 min
(--scale-down-unneeded-time), not within 10 min of a scale-up (--scale-down-delay-after-add),
at most 10 empty nodes at a time; backs a node group off 5 min after a failed scale-up.
"""

from __future__ import annotations

import math
from collections import deque

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
UNNEEDED = 600.0
DELAY_AFTER_ADD = 600.0
EMPTY_BULK = 10
BACKOFF = 300.0


class KedaCaPolicy(Policy):
    name = "keda-ca"
    period = 5.0  # the greatest common divisor of the timers below

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
        self.recs: dict[PoolKey, deque[tuple[float, int]]] = {p: deque() for p in ctx.fleet.pools}
        self.last_active: dict[PoolKey, float] = {}
        self.unneeded: dict[NodePoolKey, deque[tuple[float, int]]] = {}
        self.last_add = -math.inf

    # --- KEDA + HPA ------------------------------------------------------------------

    def _hpa(self, pool: PoolKey, view: View) -> int:
        spec = self.ctx.fleet.pools[pool]
        current = sum(view.replicas[pool].get(k, 0) for k in self.groups[pool])
        queue = view.scrape.queue_depth.get(pool, 0.0)
        target = spec.queue.target_per_replica
        if queue > spec.queue.activation_threshold:
            self.last_active[pool] = view.t
        if current == 0:
            # Activation is KEDA's, on its polling interval
            if view.t % POLLING == 0 and queue > spec.queue.activation_threshold:
                return max(1, spec.min_replicas, min(spec.max_replicas, math.ceil(queue / target)))
            return max(0, spec.min_replicas)
        raw = math.ceil(queue / target)
        if abs(raw / current - 1.0) <= TOLERANCE:
            raw = current
        recs = self.recs[pool]
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
                n = self.ctx.cluster.nodes[k].spec
                used = sum(
                    view.bound[p].get(k, 0) * self.ctx.fleet.pools[p].gpus_per_replica
                    for p in view.bound
                )
                free = (view.node_pools[k].ready_nodes * n.gpus_per_node - used) // gpr
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

    # --- Cluster Autoscaler ----------------------------------------------------------

    def _ca(self, view: View, d: Decision) -> None:
        nodes = self.ctx.cluster.nodes
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
            # Scale down: nodes not needed by bound replicas, continuously for 10 min
            bound = sum(
                view.bound[p].get(key, 0) * self.ctx.fleet.pools[p].gpus_per_replica
                for p in view.bound
            )
            spare = max(0, obs.ready_nodes - max(math.ceil(bound / gpn), needed, n.spec.min_nodes))
            hist = self.unneeded.setdefault(key, deque())
            hist.append((view.t, spare))
            while hist and hist[0][0] < view.t - UNNEEDED:
                hist.popleft()
            if hist[0][0] > view.t - UNNEEDED + CA_SCAN or view.t - self.last_add < DELAY_AFTER_ADD:
                continue
            remove = min(min(s for _, s in hist), EMPTY_BULK)
            if remove > 0:
                d.nodes[key] = obs.target_nodes - remove
                hist.clear()

    def decide(self, view: View) -> Decision:
        d = Decision()
        if view.t % HPA_SYNC == 0 or view.t == 0:
            for pool in self.ctx.fleet.pools:
                self._place(pool, self._hpa(pool, view), view, d)
        if view.t % CA_SCAN == 0:
            self._ca(view, d)
        return d

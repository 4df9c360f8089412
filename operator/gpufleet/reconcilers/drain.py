"""Preemption with drain (issue 10): replicas that a higher-priority pool displaces leave
through the Eviction API, so PodDisruptionBudgets hold and each server gets time to finish.

The planner marks, per node pool, the replicas a pool no longer keeps on the existing nodes
because pools placed before it took the room (`PoolPlan.preempted`), whether or not they
are placed again on new nodes. The fleet loop resizes such a pool's workload here instead
of with a plain scale: that many of its pods on nodes of those node pools are evicted, each
with the pool's `preemption.drainTimeoutSeconds` as its grace period (SIGTERM, then up to
the timeout to finish in-flight requests, as `kubectl drain --grace-period` does), and the
workload is made smaller only by the evictions the API server accepted, so its ReplicaSet
removes no other pod. Where the pool keeps its size (its replicas are placed again on new
nodes), the evicted replicas are scaled away too and recreated (`holds`) only once the
higher-priority pools' pods are scheduled, so those get the GPUs; the recreated pods then
wait for the new nodes (docs/preemption.md). An eviction refused with
HTTP 429 (a PodDisruptionBudget allows no disruption now) leaves the pod and its replica in
place; the rest is tried again after `RETRY_SECONDS`. The part of a shrink that is not
preemption (the pool's own scale-down, pods not yet scheduled) is a plain scale, as the HPA
does.

Only Deployments drain this way (a StatefulSet recreates an evicted ordinal); replicas on
remote clusters (burst copies) shrink with their copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gpufleet.api.labels import NODE_POOL_LABEL, PROVIDER_LABEL
from gpufleet.planner.types import Fleet, FleetPlan, NodePoolKey, PoolKey, Snapshot
from gpufleet.reconcilers.cache import WorkloadEntry, pod_entry, ready_condition
from gpufleet.reconcilers.intent import Drained, Move
from gpufleet.reconcilers.kube import EvictionRefused, Workloads
from gpufleet.reconcilers.leader import NotLeading
from gpufleet.reconcilers.selectors import Selector

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # between tries after a refusal, as `kubectl drain` waits
# After a move, how long the moved pool waits to recreate its replicas while the pools it
# yielded to still have pods to schedule (the scheduler's back-off is at most 10 s).
MOVE_HOLD_SECONDS = 60.0
INDEX_LAG_SECONDS = 10.0  # how long a resize of ours may take to show in the index
DRAINABLE_KINDS = frozenset({"Deployment"})


@dataclass(frozen=True)
class DrainRequest:
    """What the plan asks of one pool: replicas to drain per local node pool."""

    node_pools: Mapping[NodePoolKey, int]
    timeout_seconds: int
    by: tuple[str, ...] = ()  # pools placed before it that grew on those node pools

    @property
    def replicas(self) -> int:
        return sum(self.node_pools.values())


@dataclass(frozen=True)
class DrainOutcome:
    """What draining a pool did this tick, for its `Preempted` condition."""

    wanted: int = 0  # pods to evict this tick
    evicted: int = 0  # evictions the API server accepted this tick
    draining: int = 0  # evicted pods still within their drain timeout
    blocked: str = ""  # the API server's refusal, naming the PodDisruptionBudget
    error: str = ""
    by: tuple[str, ...] = ()


def request_for(
    pool_key: PoolKey, plan: FleetPlan, fleet: Fleet, snapshot: Snapshot
) -> DrainRequest | None:
    """The drain a pool's plan asks for on node pools of this cluster, or None."""
    pool_plan = plan.pools.get(pool_key)
    spec = fleet.pools.get(pool_key)
    if pool_plan is None or spec is None or not pool_plan.preempted:
        return None
    local = {
        np_key: count
        for np_key, count in sorted(pool_plan.preempted.items())
        if np_key.provider in fleet.providers
        and fleet.providers[np_key.provider].cluster.kubeconfig_secret_ref is None
    }
    if not local:
        return None
    priority = fleet.priority(pool_key)
    # Pools of strictly higher priority that grew there (equal priorities never take each
    # other's running replicas: docs/preemption.md); once their new replicas are counted as
    # existing (scheduled or not), those placed there at all.
    grew, there = [], []
    for other, other_plan in sorted(plan.pools.items()):
        if other not in fleet.pools or fleet.priority(other) <= priority:
            continue
        seen = snapshot.pools.get(other)
        before = seen.replicas if seen is not None else {}
        if any(other_plan.placements.get(k, 0) > before.get(k, 0) for k in local):
            grew.append(str(other))
        if any(other_plan.placements.get(k, 0) for k in local):
            there.append(str(other))
    by = grew or there
    if not by:
        # Displaced only by pools of equal priority (their replicas in flight, or nodes
        # lost): only strictly higher priority evicts (docs/preemption.md).
        return None
    timeout = max(1, spec.preemption.drain_timeout_seconds)  # 0 would force-delete
    return DrainRequest(local, timeout, tuple(by))


def selector_text(selector: Selector) -> str:
    """The string form of a label selector, for a list call."""
    parts = []
    for r in selector.requirements:
        values = ",".join(sorted(r.values))
        if r.operator == "In" and len(r.values) == 1:
            parts.append(f"{r.key}={values}")
        elif r.operator in ("In", "NotIn"):
            parts.append(f"{r.key} {r.operator.lower()} ({values})")
        elif r.operator == "Exists":
            parts.append(r.key)
        else:
            parts.append(f"!{r.key}")
    return ",".join(parts)


@dataclass(frozen=True)
class _Pod:
    name: str
    node: str | None
    ready: bool
    created: str


def _active_pods(workload: WorkloadEntry, bodies: Sequence[Mapping[str, Any]]) -> list[_Pod]:
    pods = []
    for body in bodies:
        meta = body.get("metadata") or {}
        entry = pod_entry(workload.namespace, str(meta.get("name", "")), body)
        if entry.terminating or not workload.selector.matches(entry.labels):
            continue
        ready = ready_condition(body)  # strict: a pod without status serves nothing yet
        pods.append(_Pod(entry.name, entry.node_name, ready, str(meta.get("creationTimestamp"))))
    return pods


def pick(
    pods: Sequence[_Pod], nodes: Mapping[NodePoolKey, set[str]], wanted: Mapping[NodePoolKey, int]
) -> list[_Pod]:
    """Up to `wanted` pods per node pool on its nodes: not ready ones first (they serve
    nothing), then the newest (as a ReplicaSet chooses), by name for a stable order."""
    chosen: list[_Pod] = []
    for np_key, count in sorted(wanted.items()):
        there = [p for p in pods if p.node is not None and p.node in nodes.get(np_key, set())]
        newest_first = sorted(there, key=lambda p: p.created, reverse=True)
        ordered = sorted(newest_first, key=lambda p: p.ready)  # stable: not ready first
        chosen.extend(ordered[:count])
    return chosen


async def _nodes_of(kube: Workloads, request: DrainRequest) -> dict[NodePoolKey, set[str]]:
    """The names of the nodes in each node pool the drain takes replicas from."""
    return {
        np_key: set(
            await kube.list_node_names(
                f"{PROVIDER_LABEL}={np_key.provider},{NODE_POOL_LABEL}={np_key.node_pool}"
            )
        )
        for np_key in sorted(request.node_pools)
    }


@dataclass
class Drainer:
    """Drains preempted replicas; remembers evictions in flight and refusals between ticks."""

    outcomes: dict[PoolKey, DrainOutcome] = field(default_factory=dict)
    in_flight: dict[PoolKey, dict[str, float]] = field(default_factory=dict)  # pod: deadline
    retry_at: dict[PoolKey, float] = field(default_factory=dict)
    resized: dict[PoolKey, tuple[int, float]] = field(default_factory=dict)  # size, when
    # Pools that moved replicas: the pools they yielded to, and when.
    moved: dict[PoolKey, tuple[tuple[PoolKey, ...], float]] = field(default_factory=dict)

    def waiting(self, now: float) -> tuple[Move, ...]:
        """The moves still within their wait, for the intent record."""
        return tuple(
            Move(str(pool), tuple(str(k) for k in to), since)
            for pool, (to, since) in sorted(self.moved.items())
            if now - since < MOVE_HOLD_SECONDS
        )

    def memory(self, now: float) -> tuple[Drained, ...]:
        """What a leader taking over must know not to evict or resize twice: the evictions
        still draining and the resizes the index may not show yet, for the intent record."""
        out = []
        for pool in sorted(set(self.in_flight) | set(self.resized)):
            evicted = tuple(
                sorted((p, t) for p, t in self.in_flight.get(pool, {}).items() if t > now)
            )
            last = self.resized.get(pool)
            resized = last if last is not None and now - last[1] < INDEX_LAG_SECONDS else None
            if evicted or resized is not None:
                out.append(Drained(str(pool), evicted, resized))
        return tuple(out)

    def take_over_drains(self, drains: Sequence[Drained], now: float) -> None:
        """Continue from the drain memory another leader (or this process before a restart)
        recorded: its evictions count as in flight, its last resize as ours."""
        for drained in drains:
            pool = PoolKey.parse(drained.pool)
            flight = {p: t for p, t in drained.evicted if t > now}
            if flight and pool not in self.in_flight:
                self.in_flight[pool] = flight
            last = drained.resized
            if last is not None and now - last[1] < INDEX_LAG_SECONDS and pool not in self.resized:
                self.resized[pool] = last

    def take_over(self, moves: Sequence[Move], now: float) -> None:
        """Keep waiting for the moves another leader (or this process before a restart)
        recorded, where they are still within their wait."""
        for move in moves:
            pool = PoolKey.parse(move.pool)
            if now - move.since < MOVE_HOLD_SECONDS and pool not in self.moved:
                self.moved[pool] = (tuple(PoolKey.parse(k) for k in move.to), move.since)

    def holds(self, pool_key: PoolKey, unscheduled: Callable[[PoolKey], int], now: float) -> bool:
        """Whether a pool that moved replicas must wait to recreate them: until the pools it
        yielded to have their pods scheduled, so the GPUs it freed go to them and not back
        to its own new pods (which would race them for the scheduler)."""
        record = self.moved.get(pool_key)
        if record is None:
            return False
        to, since = record
        if now - since < MOVE_HOLD_SECONDS and any(unscheduled(k) for k in to):
            return True
        del self.moved[pool_key]
        return False

    async def begin(
        self,
        kube: Workloads,
        workload: WorkloadEntry,
        pool_key: PoolKey,
        request: DrainRequest | None,
        now: float,
    ) -> None:
        """Start the pool's tick: forget evicted pods that are gone or past their timeout,
        and a refusal once the plan no longer asks for a drain."""
        if request is None:
            self.retry_at.pop(pool_key, None)
        flight = {p: t for p, t in self.in_flight.get(pool_key, {}).items() if t > now}
        if flight:
            try:
                bodies = await kube.list_pods(workload.namespace, selector_text(workload.selector))
                names = {str((b.get("metadata") or {}).get("name")) for b in bodies}
                flight = {p: t for p, t in flight.items() if p in names}
            except NotLeading:
                raise
            except Exception as exc:  # the condition may show a drain a little longer
                log.info("pods of %s not listed: %s", pool_key, exc, extra={"pool": str(pool_key)})
        if flight:
            self.in_flight[pool_key] = flight
        else:
            self.in_flight.pop(pool_key, None)
        previous = self.outcomes.pop(pool_key, None)
        if previous is not None and previous.blocked and pool_key in self.retry_at:
            # Between tries the refusal stands, as it was last told.
            self.outcomes[pool_key] = replace(previous, draining=len(flight))
        elif flight:  # evicted pods drain until they are gone
            by = previous.by if previous is not None else ()
            self.outcomes[pool_key] = DrainOutcome(draining=len(flight), by=by)

    async def resize(
        self,
        kube: Workloads,
        workload: WorkloadEntry,
        pool_key: PoolKey,
        request: DrainRequest,
        size: int,
        now: float,
    ) -> bool:
        """Resize the workload to `size`, draining the preempted replicas first: removed when
        it shrinks, moved (evicted and recreated, to wait for new nodes) where it does not.
        True when it is at `size` with every drain done; False when part waits for a later
        tick (refused, or not yet seen)."""
        if workload.kind not in DRAINABLE_KINDS:
            await kube.scale(workload.kind, workload.namespace, workload.name, size)
            return True
        last = self.resized.pop(pool_key, None)
        if last is not None and last[0] != workload.replicas and now - last[1] < INDEX_LAG_SECONDS:
            self.resized[pool_key] = last
            return False  # our last resize is not in the index yet: never act on it twice
        if now < self.retry_at.get(pool_key, 0.0):
            return False
        self.retry_at.pop(pool_key, None)
        namespace = workload.namespace
        bodies = await kube.list_pods(namespace, selector_text(workload.selector))
        pods = _active_pods(workload, bodies)
        shrink = max(0, workload.replicas - size)
        # A ReplicaSet removes pods that are not scheduled first: those need no eviction. The
        # unscheduled ones a shrink leaves are replacements of pods this drain moved already.
        unscheduled = sum(1 for p in pods if p.node is None)
        wanted = max(0, request.replicas - max(0, unscheduled - shrink))
        chosen = pick(pods, await _nodes_of(kube, request), request.node_pools)[:wanted]
        # Evictions beyond the shrink are moves: their replacements wait for new nodes.
        plain = shrink - min(len(chosen), shrink)  # pods not found there: a plain scale
        evicted, blocked, error = await self._evict(kube, namespace, chosen, pool_key, request, now)
        if shrink == 0:
            # A move: the evicted replicas are recreated once the pools they yield to have
            # their pods scheduled (`holds`), so those pods get the GPUs first.
            target = workload.replicas - len(evicted)
            if evicted:
                to = tuple(PoolKey.parse(name) for name in request.by)
                self.moved[pool_key] = (to, now)
            elif size > workload.replicas and pool_key not in self.moved:
                target = size
        else:
            target = workload.replicas - plain - min(len(evicted), shrink)
        if target != workload.replicas:
            await kube.scale(workload.kind, namespace, workload.name, target)
            self.resized[pool_key] = (target, now)
        draining = len(self.in_flight.get(pool_key, {}))
        outcome = DrainOutcome(len(chosen), len(evicted), draining, blocked, error, request.by)
        previous = self.outcomes.get(pool_key)
        self.outcomes[pool_key] = outcome
        await self._tell(kube, pool_key, request, evicted, outcome, previous)
        return len(evicted) == len(chosen) and target == size

    async def _evict(
        self,
        kube: Workloads,
        namespace: str,
        chosen: Sequence[_Pod],
        pool_key: PoolKey,
        request: DrainRequest,
        now: float,
    ) -> tuple[list[str], str, str]:
        """Evict `chosen` in order until one is refused: the evicted (accepted, or gone
        already), a PodDisruptionBudget's refusal, another error."""
        evicted: list[str] = []
        for pod in chosen:
            try:
                if await kube.evict(namespace, pod.name, request.timeout_seconds):
                    self.in_flight.setdefault(pool_key, {})[pod.name] = (
                        now + request.timeout_seconds
                    )
                evicted.append(pod.name)
            except EvictionRefused as exc:
                self.retry_at[pool_key] = now + RETRY_SECONDS
                return evicted, *((str(exc), "") if exc.budget else ("", str(exc)))
            except NotLeading:  # no further eviction: the tick stops
                raise
            except Exception as exc:  # the rest waits for a later tick
                return evicted, "", f"eviction of {pod.name} failed: {exc}"[:512]
        return evicted, "", ""

    async def _tell(
        self,
        kube: Workloads,
        pool_key: PoolKey,
        request: DrainRequest,
        evicted: Sequence[str],
        outcome: DrainOutcome,
        previous: DrainOutcome | None,
    ) -> None:
        """A log line and an Event per eviction batch and per new refusal, not per tick."""
        where = ", ".join(str(k) for k in sorted(request.node_pools))
        by = f" to {', '.join(request.by[:3])}" if request.by else " to higher-priority pools"
        events: list[tuple[str, str, bool]] = []
        if evicted:
            events.append(
                (
                    "Preempted",
                    f"yielding {outcome.wanted} replicas on {where}{by}: evicted "
                    f"{', '.join(evicted[:5])}{' and more' if len(evicted) > 5 else ''} with "
                    f"{request.timeout_seconds}s to drain",
                    False,
                )
            )
        if outcome.blocked and (previous is None or previous.blocked != outcome.blocked):
            events.append(
                (
                    "DrainBlockedByDisruptionBudget",
                    f"yielding replicas on {where}{by}: eviction refused: {outcome.blocked}",
                    True,
                )
            )
        for reason, message, warning in events:
            log.info(
                "pool %s: %s",
                pool_key,
                message,
                extra={"pool": str(pool_key), "reason": reason, "evicted": len(evicted)},
            )
            try:
                await kube.event(
                    "ServingPool",
                    pool_key.namespace,
                    pool_key.name,
                    None,
                    reason,
                    message,
                    warning=warning,
                )
            except NotLeading:
                raise
            except Exception as exc:
                log.info("event for %s not posted: %s", pool_key, exc)

"""One fleet reconcile: observe, plan, actuate, report. Level-based: every tick recomputes
from the specs and what is observed; the planner's memory is the only state carried."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gpufleet.api.pool import InferencePoolSpec, Mode
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import CapacityError as DriverCapacityError
from gpufleet.drivers.base import DriverError, NodePoolDriver, QuotaExceeded
from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.metrics.source import MetricsSource
from gpufleet.planner import plan_fleet
from gpufleet.planner.types import (
    CapacityError,
    CapacityErrorKind,
    Fleet,
    FleetPlan,
    NodePoolKey,
    PlannerState,
    PoolKey,
    frozen_map,
)
from gpufleet.reconcilers.cache import (
    View,
    WorkloadEntry,
)
from gpufleet.reconcilers.intent import Action, Journal
from gpufleet.reconcilers.kube import Kube
from gpufleet.reconcilers.observe import Observed, observe, ref_for
from gpufleet.reconcilers.remote import Copy, RemoteClusters, attribute, source_hash
from gpufleet.reconcilers.remote import target as remote_target
from gpufleet.reconcilers.report import Reporter

log = logging.getLogger(__name__)
DriverFactory = Callable[[str, CloudProviderSpec], NodePoolDriver]


@dataclass
class FleetLoop:
    kube: Kube
    source: MetricsSource | None
    make_driver: DriverFactory
    metrics: OperatorMetrics
    clock: Callable[[], float] = time.time
    state: PlannerState = field(default_factory=PlannerState)
    drivers: dict[str, tuple[CloudProviderSpec, NodePoolDriver]] = field(default_factory=dict)
    capacity_errors: dict[NodePoolKey, CapacityError] = field(default_factory=dict)
    last_placements: dict[PoolKey, Mapping[NodePoolKey, int]] = field(default_factory=dict)
    last_plan: FleetPlan | None = None
    reporter: Reporter = field(init=False)

    def __post_init__(self) -> None:
        self.reporter = Reporter(self.kube, self.metrics)

    # The intent record (crash safety, HA); None acts without one (tests, one replica).
    journal: Journal | None = None
    # Remote clusters (kubeconfigSecretRef); None: such providers are unreachable.
    remote: RemoteClusters | None = None

    def _driver(self, name: str, spec: CloudProviderSpec) -> NodePoolDriver | None:
        cached = self.drivers.get(name)
        if cached is not None and cached[0] == spec:
            return cached[1]
        try:
            driver = self.make_driver(name, spec)
        except DriverError as exc:
            log.warning("no driver for provider %s: %s", name, exc, extra={"provider": name})
            return None
        self.drivers[name] = (spec, driver)
        return driver

    async def tick(self, view: View) -> FleetPlan:
        started = time.perf_counter()
        now = self.clock()
        pools: dict[PoolKey, InferencePoolSpec] = {}
        targets: dict[PoolKey, WorkloadEntry] = {}
        target_errors: dict[PoolKey, str] = {}
        for entry in view.pools:
            spec = entry.parsed.value
            if spec is None:
                continue
            key = PoolKey(entry.namespace, entry.name)
            ref = spec.scale_target_ref
            workload = view.workloads.get((entry.namespace, ref.kind, ref.name))
            if workload is None:
                target_errors[key] = (
                    f"spec.scaleTargetRef: {ref.kind} {entry.namespace}/{ref.name} not found "
                    "(supported kinds: Deployment, StatefulSet)"
                )
                continue
            pools[key] = spec
            targets[key] = workload
        providers = {e.name: e.parsed.value for e in view.providers if e.parsed.value is not None}
        budgets = {e.name: e.parsed.value for e in view.budgets if e.parsed.value is not None}
        remote = {n for n, p in providers.items() if p.cluster.kubeconfig_secret_ref is not None}
        drivers = {
            n: d
            for n, spec in providers.items()
            if n not in remote and (d := self._driver(n, spec)) is not None
        }
        copies: dict[str, dict[PoolKey, Copy]] = {}
        copy_errors: dict[str, str] = {}
        credential_errors: dict[str, str] = {}
        if self.remote is not None:
            drivers.update(await self.remote.connect({n: providers[n] for n in remote}))
            copies, copy_errors = await self.remote.copies([n for n in remote if n in drivers])
            credential_errors = dict(self.remote.errors)
        else:
            credential_errors = dict.fromkeys(remote, "remote clusters are not enabled")
        # A provider is reachable with a driver and, if remote, a listing of its copies.
        unreachable = {n for n in providers if n not in drivers} | set(copy_errors)
        # Local pods are attributed to local node pools only; remote ones come from copies.
        local_last = {
            k: {np: c for np, c in v.items() if np.provider not in remote}
            for k, v in self.last_placements.items()
        }
        observed = await observe(
            pools,
            targets,
            providers,
            budgets,
            view.nodes,
            view.pods,
            drivers,
            unreachable,
            self.capacity_errors,
            local_last,
            self.source,
        )
        observed.driver_errors.update(copy_errors)
        self._add_remote_replicas(observed, pools, providers, copies)
        fleet = Fleet(frozen_map(pools), frozen_map(providers), frozen_map(budgets))
        plan = plan_fleet(fleet, observed.snapshot, self.state, now)
        self.state = plan.state
        known = {PoolKey(e.namespace, e.name) for e in view.pools}
        await self._actuate(plan, fleet, targets, drivers, observed, now, copies, known)
        await self.reporter.report(
            view, plan, fleet, observed, target_errors, credential_errors, now
        )
        self.last_plan = plan
        self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
        return plan

    def _add_remote_replicas(
        self,
        observed: Observed,
        pools: Mapping[PoolKey, InferencePoolSpec],
        providers: Mapping[str, CloudProviderSpec],
        copies: Mapping[str, Mapping[PoolKey, Copy]],
    ) -> None:
        """A pool's replicas on a remote provider are its copy's replicas there."""
        snapshot = observed.snapshot
        pool_obs = dict(snapshot.pools)
        for provider, found in sorted(copies.items()):
            for key, copy in sorted(found.items()):
                if key not in pool_obs or copy.replicas <= 0:
                    continue
                placed = dict(pool_obs[key].replicas)
                for np_key, count in attribute(
                    provider,
                    copy.replicas,
                    providers[provider],
                    self.last_placements.get(key, {}),
                    pools[key].gpu_types,
                ).items():
                    placed[np_key] = placed.get(np_key, 0) + count
                pool_obs[key] = replace(pool_obs[key], replicas=frozen_map(placed))
                by_provider = observed.current_by_provider.setdefault(key, {})
                by_provider[provider] = by_provider.get(provider, 0) + copy.replicas
        observed.snapshot = replace(snapshot, pools=frozen_map(pool_obs))

    async def _actuate(
        self,
        plan: FleetPlan,
        fleet: Fleet,
        targets: Mapping[PoolKey, WorkloadEntry],
        drivers: Mapping[str, NodePoolDriver],
        observed: Observed,
        now: float,
        copies: Mapping[str, Mapping[PoolKey, Copy]] | None = None,
        known: set[PoolKey] | None = None,
    ) -> None:
        # Every target this tick can resize: its observed size, the size the plan wants
        # where that differs, and how to set it. Then record intent, act, record the result.
        current: dict[str, int] = {}
        planned: dict[str, int] = {}
        setters: dict[str, Callable[[int, str], Awaitable[bool]]] = {}
        for key, node_plan in sorted(plan.node_pools.items()):
            driver = drivers.get(key.provider)
            state = observed.node_states.get(key)
            if (
                driver is None
                or state is None
                or key.provider in observed.snapshot.unreachable_providers
            ):
                continue
            target = f"nodepool/{key.provider}/{key.node_pool}"
            current[target] = state.target_size
            ref = ref_for(key.provider, fleet.providers[key.provider], key.node_pool)
            setters[target] = functools.partial(self._set_nodes, driver, ref, key, now)
            if node_plan.desired_nodes != state.target_size:
                planned[target] = node_plan.desired_nodes
        for pool_key, pool_plan in sorted(plan.pools.items()):
            spec = fleet.pools[pool_key]
            self.last_placements[pool_key] = pool_plan.placements
            if spec.mode == Mode.DRY_RUN:
                continue
            local = sum(
                count
                for (provider, _), count in pool_plan.placements.items()
                if fleet.providers[provider].cluster.kubeconfig_secret_ref is None
            )
            workload = targets[pool_key]
            target = f"{workload.kind}/{pool_key.namespace}/{workload.name}"
            current[target] = workload.replicas
            setters[target] = functools.partial(self._scale, workload, pool_key)
            if local != workload.replicas:
                planned[target] = local
        refresh = self._remote_targets(
            plan, fleet, targets, observed, copies or {}, known or set(), current, planned, setters
        )
        if self.journal is None:
            actions: tuple[Action, ...] | None = tuple(
                Action(f"{t}={n}@{int(now)}", t, n) for t, n in planned.items()
            )
        else:
            actions = await self.journal.begin(planned, current)
        if actions is None:
            return  # another writer recorded first: it acts
        done: set[str] = set()
        # Node pools first: capacity before the replicas that need it.
        for action in sorted(
            actions, key=lambda a: (not a.target.startswith("nodepool/"), a.target)
        ):
            setter = setters.get(action.target)
            if setter is not None and await setter(action.size, action.id):
                log.info(
                    "applied %s",
                    action.id,
                    extra={"actionId": action.id, "target": action.target, "size": action.size},
                )
                done.add(action.id)
        if self.journal is not None:
            await self.journal.finish(done)
        # A copy whose source template changed is re-applied at its size (no resize).
        for target in refresh:
            if target not in planned and (setter := setters.get(target)) is not None:
                await setter(current[target], f"{target}@{int(now)}")

    def _remote_targets(
        self,
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
        if self.remote is None:
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
                gone = pool_key not in known and self.remote.owns(pool_key.namespace)
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
            setters[target] = functools.partial(
                self.remote.resize, provider, pool_key, name, workload
            )
            if copy is not None and size == 0:
                current[target] = -1  # an empty copy is still there to delete
            if size != current[target]:
                planned[target] = size
            elif copy and workload and size > 0 and copy.source_hash != source_hash(workload):
                refresh.append(target)
        return refresh

    async def _set_nodes(
        self, driver: NodePoolDriver, ref: Any, key: NodePoolKey, now: float, size: int, action: str
    ) -> bool:
        try:
            await driver.set_target_size(ref, size, action_id=action)
        except DriverCapacityError as exc:
            kind = (
                CapacityErrorKind.QUOTA_EXCEEDED
                if isinstance(exc, QuotaExceeded)
                else CapacityErrorKind.INSUFFICIENT_CAPACITY
            )
            self.capacity_errors[key] = CapacityError(kind, now)
            log.warning(
                "node pool %s: %s",
                key,
                exc.reason,
                extra={"nodePool": str(key), "reason": exc.reason},
            )
            return False
        except DriverError as exc:
            self.metrics.reconcile_errors.labels("actuate").inc()
            log.warning(
                "node pool %s: %s",
                key,
                exc.reason,
                extra={"nodePool": str(key), "reason": exc.reason},
            )
            return False
        return True

    async def _scale(self, workload: WorkloadEntry, pool_key: PoolKey, size: int, _: str) -> bool:
        try:
            await self.kube.scale(workload.kind, pool_key.namespace, workload.name, size)
        except Exception as exc:  # one pool's failure must not stop the others
            self.metrics.reconcile_errors.labels("scale").inc()
            log.warning("scale %s failed: %s", pool_key, exc, extra={"pool": str(pool_key)})
            return False
        return True

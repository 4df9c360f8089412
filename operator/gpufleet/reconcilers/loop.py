"""One fleet reconcile: observe, plan, actuate, report. Level-based: every tick recomputes
from the specs and what is observed; the planner's memory is the only state carried."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
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
        drivers = {
            n: d for n, spec in providers.items() if (d := self._driver(n, spec)) is not None
        }
        # Remote clusters (kubeconfigSecretRef) are reached by the burst machinery; until it
        # runs, nothing is placed there and what exists there is held.
        remote = {n for n, p in providers.items() if p.cluster.kubeconfig_secret_ref is not None}
        unreachable = remote | {n for n in providers if n not in drivers}
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
            self.last_placements,
            self.source,
        )
        fleet = Fleet(frozen_map(pools), frozen_map(providers), frozen_map(budgets))
        plan = plan_fleet(fleet, observed.snapshot, self.state, now)
        self.state = plan.state
        await self._actuate(plan, fleet, targets, drivers, observed, now)
        await self.reporter.report(view, plan, fleet, observed, target_errors, remote, now)
        self.last_plan = plan
        self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
        return plan

    async def _actuate(
        self,
        plan: FleetPlan,
        fleet: Fleet,
        targets: Mapping[PoolKey, WorkloadEntry],
        drivers: Mapping[str, NodePoolDriver],
        observed: Observed,
        now: float,
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
        if self.journal is None:
            actions: tuple[Action, ...] | None = tuple(
                Action(f"{t}={n}@{int(now)}", t, n) for t, n in planned.items()
            )
        else:
            actions = await self.journal.begin(planned, current)
        if not actions:
            return
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

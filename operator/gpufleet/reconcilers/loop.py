"""One fleet reconcile: observe, plan, actuate, report. Level-based: every tick recomputes
from the specs and what is observed; the planner's memory is the only state carried."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import Histogram

from gpufleet.api.pool import Mode, ServingPoolSpec
from gpufleet.api.power import PowerBudgetSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import DriverError, NodePoolDriver, NodePoolRef
from gpufleet.drivers.registry import removes_named_nodes
from gpufleet.drivers.simulated import WatchedNodes
from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.metrics.source import MetricsSource
from gpufleet.planner.types import (
    CapacityError,
    Fleet,
    FleetPlan,
    NodePoolKey,
    PlannerState,
    PoolKey,
    frozen_map,
)
from gpufleet.reconcilers import selectors
from gpufleet.reconcilers.actuation import execute
from gpufleet.reconcilers.apply import Effects
from gpufleet.reconcilers.burst.copies import Copy
from gpufleet.reconcilers.burst.remote import RemoteClusters
from gpufleet.reconcilers.burst.targets import add_remote_replicas
from gpufleet.reconcilers.burst.teardown import ProviderTeardown
from gpufleet.reconcilers.cache import NodeEntry, PodEntry, View, WorkloadEntry
from gpufleet.reconcilers.changes import Copies, Inputs, local_replicas, plan_changes, removals
from gpufleet.reconcilers.credentials import credential_source
from gpufleet.reconcilers.drain import Drainer, DrainRequest, request_for
from gpufleet.reconcilers.inference_pools import serving, unserved
from gpufleet.reconcilers.intent import Journal
from gpufleet.reconcilers.isolation import plan_isolated
from gpufleet.reconcilers.kube import Fence, Kube
from gpufleet.reconcilers.leader import NotLeading
from gpufleet.reconcilers.observe import Observed, observe, ref_for, replicas_by_node_pool
from gpufleet.reconcilers.pod_index import selected
from gpufleet.reconcilers.problems import Problem
from gpufleet.reconcilers.reporting.gateway import GatewayConfigMap
from gpufleet.reconcilers.reporting.reporter import Reporter
from gpufleet.reconcilers.targets import TARGET_CONFLICT, claims
from gpufleet.reconcilers.tenancy import Grants, grants

log = logging.getLogger(__name__)
PODS_NOT_WATCHED = "PodsNotWatched"
DriverFactory = Callable[[str, CloudProviderSpec], NodePoolDriver]


@dataclass(frozen=True)
class Reach:
    """Which providers this tick can act on, and why the others cannot."""

    remote: set[str]  # providers in a cluster of their own (kubeconfigSecretRef)
    drivers: dict[str, NodePoolDriver]
    copies: dict[str, dict[PoolKey, Copy]]  # burst copies found in each remote cluster
    copy_errors: dict[str, Problem]
    credential_errors: dict[str, str]
    unreachable: set[str]


def scale_targets(
    view: View, pod_label_selector: str | None = None
) -> tuple[dict[PoolKey, ServingPoolSpec], dict[PoolKey, WorkloadEntry], dict[PoolKey, Problem]]:
    """The valid pools whose workload exists and is theirs to scale, their workloads, and why
    the others have none. Of the pools that name one workload the oldest scales it
    (reconcilers/targets.py); the others are left out of the plan like an invalid pool,
    and say which pool holds it. A pool behind an InferencePool must agree with it
    (reconcilers/inference_pools.py); its workload then counts only the pods it selects.
    With `pod_label_selector` (the pods the operator watches), a workload whose pods lack
    those labels is invisible: its pool is left out too."""
    watched = selectors.parse(pod_label_selector) if pod_label_selector else None
    pools: dict[PoolKey, ServingPoolSpec] = {}
    targets: dict[PoolKey, WorkloadEntry] = {}
    errors: dict[PoolKey, Problem] = {}
    _, conflicts = claims(view.pools)
    for entry in view.pools:
        spec = entry.parsed.value
        if spec is None:
            continue
        key = PoolKey(entry.namespace, entry.name)
        ref = spec.scale_target_ref
        workload = view.workloads.get((entry.namespace, ref.kind, ref.name))
        if workload is None:
            errors[key] = Problem(
                "TargetNotFound",
                f"spec.scaleTargetRef: {ref.kind} {entry.namespace}/{ref.name} not found "
                "(supported kinds: Deployment, StatefulSet)",
            )
            continue
        holder = conflicts.get(key)
        if holder is not None:
            errors[key] = Problem(
                TARGET_CONFLICT,
                f"spec.scaleTargetRef: {ref.kind} {entry.namespace}/{ref.name} is scaled by "
                f"ServingPool {holder.name}, the older pool (creationTimestamp, then uid); "
                "this pool scales nothing while both name it",
            )
            continue
        if watched is not None and not watched.matches(dict(workload.template_labels)):
            errors[key] = Problem(
                PODS_NOT_WATCHED,
                f"spec.scaleTargetRef: the pod template of {ref.kind} {entry.namespace}/"
                f"{ref.name} lacks the labels the operator watches pods by "
                f"({pod_label_selector}, set by the platform admin): gpufleet cannot see its "
                "replicas, so this pool scales nothing. Add them to the template",
            )
            continue
        served = serving(entry.namespace, spec, workload, view.inference_pools, view.pods)
        if isinstance(served, Problem):
            errors[key] = served
            continue
        pools[key] = spec
        targets[key] = served
    return pools, targets, errors


def split_providers(
    view: View,
) -> tuple[dict[str, CloudProviderSpec], dict[str, CloudProviderSpec]]:
    """The valid providers that take placements, and the remote ones being deleted: those
    take none, and their finalizer's step removes their copies (burst/teardown.py)."""
    valid = {e.name: e.parsed.value for e in view.providers if e.parsed.value is not None}
    leaving = {
        e.name: spec
        for e in view.providers
        if e.deleting
        and (spec := valid.get(e.name)) is not None
        and spec.cluster.kubeconfig_secret_ref is not None
    }
    return {n: p for n, p in valid.items() if n not in leaving}, leaving


def fleet_of(
    pools: Mapping[PoolKey, ServingPoolSpec],
    providers: Mapping[str, CloudProviderSpec],
    budgets: Mapping[str, PowerBudgetSpec],
    granted: Grants,
) -> Fleet:
    """What the planner plans: the valid specs and what the platform grants."""
    return Fleet(
        frozen_map(pools),
        frozen_map(providers),
        frozen_map(budgets),
        priorities=frozen_map(granted.priority_values),
        terms=frozen_map(granted.terms),
        namespace_gpus=frozen_map(granted.namespace_gpus),
    )


class _Phases:
    """A tick's time by phase (`gpufleet_reconcile_phase_seconds`): each phase from the end
    of the one before, so that the phases of a tick add up to it."""

    ORDER = ("observe", "plan", "actuate", "report")

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.started = self.mark = time.perf_counter()
        self.done = 0  # phases ended

    def ended(self, name: str) -> None:
        assert name == self.ORDER[self.done], f"phase {name} out of order"
        self._observe(name)
        self.done += 1

    def close(self) -> None:
        if self.done < len(self.ORDER):
            self._observe(self.ORDER[self.done])

    @property
    def total(self) -> float:
        return self.mark - self.started

    def _observe(self, name: str) -> None:
        at = time.perf_counter()
        self.histogram.labels(name).observe(at - self.mark)
        self.mark = at


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
    drainer: Drainer = field(default_factory=Drainer)  # preempted replicas (issue 10)
    moves_loaded: bool = False  # the journal's moves taken over (once per process)

    def __post_init__(self) -> None:
        self.reporter = Reporter(self.kube, self.metrics)

    # The intent record (crash safety, HA); None acts without one (tests, one replica).
    journal: Journal | None = None
    # Remote clusters (kubeconfigSecretRef); None: such providers are unreachable.
    remote: RemoteClusters | None = None
    # Their finalizer: a deleted one's copies go first; None: no finalizer is kept.
    teardown: ProviderTeardown | None = None
    # The sustainable rates for a gateway (--gateway-config-map); None: not published.
    gateway: GatewayConfigMap | None = None
    # Each pod's peak GPU draw (--power-query); None: pools' busy GPUs count at nameplate.
    power_query: str | None = None
    # Confine pools' queries to their namespace's series by this label (--confine-queries).
    namespace_label: str | None = None
    # The label of a series' namespace (--query-namespace-label), which the queries gpufleet
    # writes itself (an InferencePool's queue) select by, confined or not.
    series_label: str = "namespace"
    # The pods the operator watches (--pod-label-selector); None: every GPU pod.
    pod_label_selector: str | None = None
    # Whether the pod index holds every GPU pod of the cluster (no --namespace, no
    # --pod-label-selector): only then may a shrink name the nodes it removes, or a node
    # running pods it cannot see would count as idle.
    sees_every_pod: bool = True
    # Local Simulated drivers read their Nodes here, fed from the node index each tick;
    # None: they list them.
    watched_nodes: WatchedNodes | None = None

    def _driver(self, name: str, spec: CloudProviderSpec) -> NodePoolDriver | None:
        cached = self.drivers.get(name)
        if cached is not None and cached[0] == spec:
            return cached[1]
        try:
            driver = self.make_driver(name, spec)
        except DriverError as exc:
            log.warning("no driver for provider %s: %s", name, exc, extra={"provider": name})
            return None
        except Exception:  # an untyped bug building one provider's driver: that one only
            log.exception("no driver for provider %s", name, extra={"provider": name})
            return None
        self.drivers[name] = (spec, driver)
        return driver

    async def _read_credentials(
        self, providers: Mapping[str, CloudProviderSpec], remote: set[str]
    ) -> dict[str, str]:
        """Refreshes the factories' AWS credentials (credentialsSecretRef) before drivers
        are built or used; why each unusable provider's are (it is unreachable this tick)."""
        errors: dict[str, str] = {}
        factories = (self.make_driver, self.remote.make_driver if self.remote else None)
        for factory, remote_ones in zip(factories, (False, True), strict=True):
            source = credential_source(factory)
            if source is not None:
                mine = {n: p for n, p in providers.items() if (n in remote) == remote_ones}
                errors.update(await source.refresh(self.kube, mine))
        return errors

    async def tick(self, view: View) -> FleetPlan:
        phases = _Phases(self.metrics.phase_seconds)
        try:
            plan = await self._tick(view, phases.ended)
        finally:
            phases.close()  # a tick that raised: its time up to there, under its phase
        self.metrics.reconcile_seconds.observe(phases.total)
        return plan

    async def _tick(self, view: View, ended: Callable[[str], None]) -> FleetPlan:
        now = self.clock()
        if self.watched_nodes is not None:
            self.watched_nodes.update(view.nodes)
        pools, targets, target_errors = scale_targets(view, self.pod_label_selector)
        providers, leaving = split_providers(view)
        budgets = {e.name: e.parsed.value for e in view.budgets if e.parsed.value is not None}
        known = {PoolKey(e.namespace, e.name) for e in view.pools}
        reach = await self._reach(providers, leaving, known)
        observed = await self._observe(view, pools, targets, providers, budgets, reach)
        ended("observe")
        granted = grants(view, pools, targets)
        fleet = fleet_of(pools, providers, budgets, granted)
        plan, unplanned = plan_isolated(fleet, observed.snapshot, self.state, now)
        self.state = plan.state
        self.metrics.last_plan.set(time.time())
        ended("plan")
        # Pools left out of the plan keep their replicas, and so the nodes under them.
        # A pool in TargetConflict has no workload of its own: its holder's plan counts it.
        left_out = [targets[k] for k in unplanned if k in targets]
        left_out += unserved(view, target_errors)  # at odds with their InferencePool
        await self._actuate(
            plan,
            fleet,
            targets,
            reach,
            observed,
            now,
            known,
            view.pods,
            node_pools_under(left_out, view.pods, view.nodes),
            view.nodes,
        )
        await self._settle_providers(view, known, now)
        ended("actuate")
        self.reporter.workloads = targets  # what their copies name (status.burstReferences)
        await self.reporter.report(
            view,
            plan,
            fleet,
            observed,
            target_errors,
            reach.credential_errors,
            now,
            unplanned,
            granted,
        )
        await self._publish(view, plan, now)
        ended("report")
        self.last_plan = plan
        return plan

    async def _observe(
        self,
        view: View,
        pools: Mapping[PoolKey, ServingPoolSpec],
        targets: Mapping[PoolKey, WorkloadEntry],
        providers: Mapping[str, CloudProviderSpec],
        budgets: Mapping[str, PowerBudgetSpec],
        reach: Reach,
    ) -> Observed:
        """The snapshot: Prometheus, drivers, indexes, and the replicas of remote copies."""
        # Local pods are attributed to local node pools only; remote ones come from copies.
        local_last = {
            k: {np: c for np, c in v.items() if np.provider not in reach.remote}
            for k, v in self.last_placements.items()
        }
        observed = await observe(
            pools,
            targets,
            providers,
            budgets,
            view.nodes,
            view.pods,
            reach.drivers,
            reach.unreachable,
            self.capacity_errors,
            local_last,
            self.source,
            self.power_query,
            namespace_label=self.namespace_label,
            series_label=self.series_label,
        )
        observed = dataclasses.replace(
            observed, driver_errors={**observed.driver_errors, **reach.copy_errors}
        )
        return add_remote_replicas(observed, pools, providers, reach.copies, self.last_placements)

    async def _settle_providers(self, view: View, known: Collection[PoolKey], now: float) -> None:
        """Refused copies for BurstActive, and deleted providers' finalizer steps."""
        if self.remote is not None:  # copies refused this tick: BurstActive says why
            self.reporter.refusals = self.remote.refused()
        if self.teardown is not None:  # finalizers; deleted providers' copies go
            self._fresh()  # its remote deletes are not fenced per write
            await self.teardown.step(view.providers, known, now)
            self.reporter.deleting = self.teardown.deleting

    async def _reach(
        self,
        providers: Mapping[str, CloudProviderSpec],
        leaving: Mapping[str, CloudProviderSpec] | None = None,
        known: Collection[PoolKey] = (),
    ) -> Reach:
        """Drivers for the providers usable this tick; remote ones also list their copies
        (adopting unlabelled ones of `known` pools). Remote providers being deleted
        (`leaving`) stay connected for their finalizer's step, but get no driver here."""
        remote = {n for n, p in providers.items() if p.cluster.kubeconfig_secret_ref is not None}
        credential_errors = await self._read_credentials(providers, remote)
        drivers = {
            n: d
            for n, spec in providers.items()
            if n not in remote
            and n not in credential_errors
            and (d := self._driver(n, spec)) is not None
        }
        copies: dict[str, dict[PoolKey, Copy]] = {}
        copy_errors: dict[str, Problem] = {}
        if self.remote is not None:
            usable = {n: providers[n] for n in remote if n not in credential_errors}
            connected = await self.remote.connect({**(leaving or {}), **usable})
            drivers.update({n: d for n, d in connected.items() if n in usable})
            copies, copy_errors = await self.remote.copies(
                [n for n in remote if n in drivers], known
            )
            credential_errors.update(self.remote.errors)
        else:
            credential_errors.update(dict.fromkeys(remote, "remote clusters are not enabled"))
        # A provider is reachable with a driver and, if remote, a listing of its copies.
        unreachable = {n for n in providers if n not in drivers} | set(copy_errors)
        return Reach(remote, drivers, copies, copy_errors, credential_errors, unreachable)

    async def _publish(self, view: View, plan: FleetPlan, now: float) -> None:
        if self.gateway is None:
            return
        try:
            await self.gateway.publish(view, plan, now)
        except NotLeading:
            raise
        except Exception:  # the gateway's figures wait for the next tick; scaling does not
            self.metrics.reconcile_errors.labels("gateway").inc()
            log.exception("publishing the gateway ConfigMap failed")

    async def _actuate(
        self,
        plan: FleetPlan,
        fleet: Fleet,
        targets: Mapping[PoolKey, WorkloadEntry],
        reach: Reach,
        observed: Observed,
        now: float,
        known: set[PoolKey],
        pods: Mapping[str, Sequence[PodEntry]],
        held_node_pools: Collection[NodePoolKey] = (),
        nodes: Sequence[NodeEntry] = (),
    ) -> None:
        """Work out this tick's changes (reconcilers/changes.py, pure) and apply them through
        the intent journal (reconcilers/actuation.py, reconcilers/apply.py). No node pool in
        `held_node_pools` shrinks: pods the plan does not count run there."""
        self.reporter.drains = self.drainer.outcomes  # for the Preempted conditions
        drains, waiting, failed = await self._drains(plan, fleet, targets, observed, pods, now)
        refs, sizes = usable_node_pools(plan, fleet, reach.drivers, observed)
        copies = Copies(reach.copies, known, self.remote.owns) if self.remote is not None else None
        shrinking = {
            key
            for key, node_plan in plan.node_pools.items()
            if self.sees_every_pod
            and key in refs
            and node_plan.desired_nodes < sizes.get(key, 0)
            and removes_named_nodes(fleet.providers[key.provider])
        }
        inputs = Inputs(
            plan,
            fleet,
            targets,
            refs,
            sizes,
            observed.snapshot.unreachable_providers,
            drains,
            waiting,
            held_node_pools,
            copies,
            failed,
            removals(shrinking, observed.node_states, nodes, pods),
        )
        changes, unworked = plan_changes(inputs)
        for pool_key, exc in unworked.items():
            self.metrics.reconcile_errors.labels("actuate").inc()
            log.error(
                "pool %s: changes not worked out: %r", pool_key, exc, extra={"pool": str(pool_key)}
            )
        effects = Effects(
            self.kube,
            reach.drivers,
            self.drainer,
            self.remote,
            self.metrics,
            self.capacity_errors,
            now,
        )
        if await execute(changes, effects, self.journal, now, self._fresh) is None:
            return  # another writer recorded first: it acts
        if self.journal is not None:  # a move's wait outlives this leader
            await self.journal.record_moves(self.drainer.waiting(now), self.drainer.memory(now))
        if self.remote is not None:  # namespaces that gpufleet made and whose copies went
            self._fresh()  # remote deletes are not fenced per write
            await self.remote.sweep(observed.snapshot.unreachable_providers)

    def _fresh(self) -> None:
        """Raises NotLeading unless this replica's term is fresh; no fence: it acts alone."""
        fence: Fence | None = getattr(self.kube, "fence", None)  # test doubles have none
        if fence is not None:
            fence.fresh()

    async def _drains(
        self,
        plan: FleetPlan,
        fleet: Fleet,
        targets: Mapping[PoolKey, WorkloadEntry],
        observed: Observed,
        pods: Mapping[str, Sequence[PodEntry]],
        now: float,
    ) -> tuple[dict[PoolKey, DrainRequest], set[PoolKey], set[PoolKey]]:
        """Each pool's drain request (replicas that yield to higher-priority pools are
        drained, not just scaled away) with its evictions in flight brought up to date; the
        pools whose moved replicas wait; the pools where that failed."""
        if self.journal is not None and not self.moves_loaded:
            # A move's wait outlives the leader that began it (HA takeover, restart).
            self.drainer.take_over(await self.journal.recorded_moves(), now)
            self.drainer.take_over_drains(await self.journal.recorded_drains(), now)
            self.moves_loaded = True
        unscheduled = _unscheduled_counter(targets, pods)
        drains: dict[PoolKey, DrainRequest] = {}
        waiting: set[PoolKey] = set()
        failed: set[PoolKey] = set()
        for pool_key, pool_plan in sorted(plan.pools.items()):
            self.last_placements[pool_key] = pool_plan.placements
            try:
                workload = targets[pool_key]
                drain = request_for(pool_key, plan, fleet, observed.snapshot)
                await self.drainer.begin(self.kube, workload, pool_key, drain, now)
                if drain is not None:
                    drains[pool_key] = drain
                grows = local_replicas(pool_plan, fleet) > workload.replicas
                active = fleet.pools[pool_key].mode != Mode.DRY_RUN
                if active and grows and self.drainer.holds(pool_key, unscheduled, now):
                    waiting.add(pool_key)
            except NotLeading:
                raise
            except Exception:  # one pool's failure must not stop the others
                failed.add(pool_key)
                self.metrics.reconcile_errors.labels("actuate").inc()
                log.exception("pool %s: actuation failed", pool_key, extra={"pool": str(pool_key)})
        return drains, waiting, failed


def usable_node_pools(
    plan: FleetPlan, fleet: Fleet, drivers: Mapping[str, NodePoolDriver], observed: Observed
) -> tuple[dict[NodePoolKey, NodePoolRef], dict[NodePoolKey, int]]:
    """The planned node pools the loop can resize (a driver, a state, a reachable provider)
    with their refs, and every observed node pool's target size."""
    refs = {
        key: ref_for(key.provider, fleet.providers[key.provider], key.node_pool)
        for key in plan.node_pools
        if key.provider in drivers
        and key in observed.node_states
        and key.provider not in observed.snapshot.unreachable_providers
    }
    sizes = {key: state.target_size for key, state in observed.node_states.items()}
    return refs, sizes


def node_pools_under(
    workloads: Sequence[WorkloadEntry],
    pods: Mapping[str, Sequence[PodEntry]],
    nodes: Sequence[NodeEntry],
) -> set[NodePoolKey]:
    """The node pools where the pods of `workloads` run."""
    if not workloads:
        return set()
    node_pool_of = {n.name: NodePoolKey(n.provider, n.node_pool) for n in nodes}
    return {
        key
        for workload in workloads
        for key in replicas_by_node_pool(
            workload,
            node_pool_of,
            {},
            selected_pods=selected(pods, workload.namespace, workload.selector),
        )[0]
    }


def _unscheduled_counter(
    targets: Mapping[PoolKey, WorkloadEntry], pods: Mapping[str, Sequence[PodEntry]]
) -> Callable[[PoolKey], int]:
    """How many of a pool's pods wait for a node (the drain's hold reads it)."""

    def unscheduled(pool_key: PoolKey) -> int:
        workload = targets.get(pool_key)
        if workload is None:
            return 0
        return sum(
            1
            for pod in selected(pods, pool_key.namespace, workload.selector)
            if pod.node_name is None and not pod.terminating
        )

    return unscheduled

"""Status, Events and metrics from a plan: written only when what they say changes."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpufleet.api.common import Model
from gpufleet.api.pool import BurstReference, ServingPoolSpec, ServingPoolStatus
from gpufleet.api.power import MeasurementType, PowerBudgetSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.planner.types import Fleet, FleetPlan, PoolKey, PoolPlan, Reason
from gpufleet.reconcilers.burst.copies import pool_references
from gpufleet.reconcilers.cache import (
    BudgetEntry,
    PoolEntry,
    ProviderEntry,
    TenantPolicyEntry,
    View,
    WorkloadEntry,
)
from gpufleet.reconcilers.drain import DrainOutcome
from gpufleet.reconcilers.kube import Kube
from gpufleet.reconcilers.observe import Observed
from gpufleet.reconcilers.problems import Problem
from gpufleet.reconcilers.reporting import status as st
from gpufleet.reconcilers.reporting.conditions import Cond, ready
from gpufleet.reconcilers.reporting.series import PoolSeries
from gpufleet.reconcilers.reporting.tenancy import (
    policy_status,
    priority_condition,
    priority_status,
)
from gpufleet.reconcilers.tenancy import Grants

log = logging.getLogger(__name__)
# Status writes in flight at once (the client's threads bound them further).
REPORT_CONCURRENCY = 16


@dataclass
class _Reported:
    """A planned pool's last status: what it was built from, the body written, and the
    stored status object last found equal to that body (the index keeps that very object
    until a watch event brings another, so it is compared once)."""

    inputs: tuple[Any, ...]
    body: dict[str, Any]
    matched: Mapping[str, Any] | None = None


@dataclass
class Reporter:
    kube: Kube
    metrics: OperatorMetrics
    # What draining preempted replicas did this tick (reconcilers/drain.py), per pool.
    drains: Mapping[PoolKey, DrainOutcome] = field(default_factory=dict)
    # Each pool's first burst copy refused this tick (reconcilers/burst/remote.py): reason,
    # message.
    refusals: Mapping[PoolKey, tuple[str, str]] = field(default_factory=dict)
    # Each pool's workload this tick: what its burst copies would name (status.burstReferences).
    workloads: Mapping[PoolKey, WorkloadEntry] = field(default_factory=dict)
    # Providers being deleted while their remote copies go (reconcilers/burst/teardown.py):
    # reason, message of their Deleting condition.
    deleting: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    # Per planned pool, what its last status was built from and the status itself: while
    # neither moved, the same status would be built again (`_unchanged`).
    _reported: dict[PoolKey, _Reported] = field(default_factory=dict)
    series: PoolSeries = field(default_factory=PoolSeries)

    async def report(
        self,
        view: View,
        plan: FleetPlan,
        fleet: Fleet,
        observed: Observed,
        target_errors: Mapping[PoolKey, Problem],
        credential_errors: Mapping[str, str],
        now: float,
        unplanned: Mapping[PoolKey, Problem] | None = None,
        granted: Grants | None = None,
    ) -> None:
        """Each object's status, metrics and Events; one object's failure is logged with its
        name and the others are reported all the same."""
        granted = granted or Grants()
        # Statuses go out side by side: one at a time, a fleet whose 1,000 pools' statuses all
        # change (a surge) spent its tick waiting on round trips, and then its providers'
        # (benchmarks/fleet_scale.py).
        gate = asyncio.Semaphore(REPORT_CONCURRENCY)

        async def gated(
            kind: str,
            name: str,
            work: Awaitable[object],
            fallback: Callable[[Problem], Awaitable[None]] | None = None,
        ) -> None:
            async with gate:
                await self._guard(kind, name, work, fallback)

        # A quiet pool costs no task: most pools are quiet on most ticks.
        pools = [
            gated(
                "servingpool",
                f"{entry.namespace}/{entry.name}",
                self._report_pool(
                    entry, plan, fleet, observed, target_errors, now, unplanned or {}, granted
                ),
                functools.partial(self._pool_failed, entry, now),
            )
            for entry in view.pools
            if not self._settled(entry, plan, fleet, observed, granted)
        ]
        policies = [
            gated("tenantpolicy", policy.name, self._report_policy(policy, granted, now))
            for policy in view.tenant_policies
        ]
        providers = [
            gated(
                "cloudprovider",
                entry.name,
                self._report_provider(entry, plan, observed, credential_errors, now),
            )
            for entry in view.providers
        ]
        budgets = [
            gated("powerbudget", entry.name, self._report_budget(entry, plan, observed, now))
            for entry in view.budgets
        ]
        await asyncio.gather(*pools, *policies, *providers, *budgets)
        present = {PoolKey(e.namespace, e.name) for e in view.pools}
        for gone in set(self._reported) - present:
            del self._reported[gone]
        self.series.forget(present)

    async def _guard(
        self,
        kind: str,
        name: str,
        work: Awaitable[object],
        fallback: Callable[[Problem], Awaitable[None]] | None = None,
    ) -> None:
        try:
            await work
        except Exception as exc:
            self.metrics.reconcile_errors.labels("status").inc()
            log.exception("reporting %s %s failed", kind, name, extra={kind: name})
            if fallback is not None:
                await self._guard(kind, name, fallback(Problem.of(exc)))

    def _settled(
        self, entry: PoolEntry, plan: FleetPlan, fleet: Fleet, observed: Observed, granted: Grants
    ) -> bool:
        """Whether a planned pool's status, metrics and Event need nothing (`_unchanged`);
        False where that cannot be told (`_report_pool` then says why, under its guard)."""
        key = PoolKey(entry.namespace, entry.name)
        spec = entry.parsed.value
        pool_plan = plan.pools.get(key)
        if spec is None or pool_plan is None or key not in self._reported:
            return False
        try:
            references = tuple(self._burst_references(key, spec, fleet))
            inputs = self._inputs(key, entry, pool_plan, fleet, observed, granted, references)
            return self._unchanged(key, entry, inputs)
        except Exception:
            return False

    async def _pool_failed(self, entry: PoolEntry, now: float, problem: Problem) -> None:
        """A status that says only why the full one could not be made."""
        failed = Cond("ScalingActive", False, problem.reason, f"status: {problem.message}")
        conds = [ready([failed], st.POOL_HEALTHY), failed]
        status = st.pool_status(entry.status, entry.generation, conds, now)
        await self._write("servingpools", entry.namespace, entry.name, entry.status, status)

    async def _report_pool(
        self,
        entry: PoolEntry,
        plan: FleetPlan,
        fleet: Fleet,
        observed: Observed,
        target_errors: Mapping[PoolKey, Problem],
        now: float,
        unplanned: Mapping[PoolKey, Problem],
        granted: Grants,
    ) -> None:
        key = PoolKey(entry.namespace, entry.name)
        # Known again only once the new status is written: an attempt that fails after
        # setting the gauges, its fallback status unwritten too, left the older entry to
        # judge a later tick with that entry's inputs settled, the gauges still the
        # failed attempt's.
        self._reported.pop(key, None)
        spec = entry.parsed.value
        pool_plan = plan.pools.get(key)
        if spec is None:
            status = st.pool_status(
                entry.status,
                entry.generation,
                st.invalid_pool_conditions(entry.parsed.errors),
                now,
            )
        elif pool_plan is None and key in unplanned:
            problem = unplanned[key]
            failed = Cond("ScalingActive", False, problem.reason, problem.message)
            conds = [ready([failed], st.POOL_HEALTHY), Cond("SpecValid", True, "Valid"), failed]
            status = st.pool_status(entry.status, entry.generation, conds, now)
        elif pool_plan is None:
            problem = target_errors.get(key) or Problem("TargetNotFound", "")
            target = Cond("TargetFound", False, problem.reason, problem.message)
            conds = [ready([target], st.POOL_HEALTHY), Cond("SpecValid", True, "Valid"), target]
            status = st.pool_status(entry.status, entry.generation, conds, now)
        else:
            references = tuple(self._burst_references(key, spec, fleet))
            # Not `_settled` (report() asked before making this task): build and write.
            inputs = self._inputs(key, entry, pool_plan, fleet, observed, granted, references)
            status = await self._planned_status(
                entry, spec, pool_plan, fleet, observed, now, granted, references
            )
            body = await self._write(
                "servingpools", entry.namespace, entry.name, entry.status, status
            )
            self._reported[key] = _Reported(inputs, body)
            return
        await self._write("servingpools", entry.namespace, entry.name, entry.status, status)

    def _inputs(
        self,
        key: PoolKey,
        entry: PoolEntry,
        pool_plan: PoolPlan,
        fleet: Fleet,
        observed: Observed,
        granted: Grants,
        references: tuple[BurstReference, ...],
    ) -> tuple[Any, ...]:
        """Everything a planned pool's status, metrics and scale Event are made of, but the
        stored status and the clock: the spec by its generation, the rest by value."""
        current = observed.current_by_provider.get(key) or {}
        return (
            entry.generation,
            pool_plan,
            observed.metrics_errors.get(key),
            observed.queue.get(key),
            observed.arrival.get(key),
            tuple(sorted(current.items())),
            self.drains.get(key),
            self.refusals.get(key),
            granted.priorities.get(key),
            st.burst_percent(pool_plan, fleet.providers),
            references,
        )

    def _unchanged(self, key: PoolKey, entry: PoolEntry, inputs: tuple[Any, ...]) -> bool:
        """Whether the pool's last status was built from these inputs and is the one stored.
        Then building it again gives the same status (time enters only where a condition or
        the desired size changes), its gauges hold their values and no Event is due: at
        1,000 pools that building was a third of a quiet tick (benchmarks/fleet_scale.py)."""
        last = self._reported.get(key)
        if last is None or last.inputs != inputs:
            return False
        if last.matched is entry.status:
            return True
        if not st.same(entry.status, last.body):
            return False
        last.matched = entry.status
        return True

    async def _planned_status(
        self,
        entry: PoolEntry,
        spec: ServingPoolSpec,
        pool_plan: PoolPlan,
        fleet: Fleet,
        observed: Observed,
        now: float,
        granted: Grants,
        references: tuple[BurstReference, ...],
    ) -> ServingPoolStatus:
        """A planned pool's status; its metrics and scale Event on the way (they do not
        depend on the status being writable)."""
        key = pool_plan.key
        self._pool_metrics(key, pool_plan, observed)
        await self._scale_event(entry, pool_plan, self.drains.get(key))
        conds = st.pool_conditions(
            spec,
            pool_plan,
            observed.metrics_errors.get(key),
            None,
            self.drains.get(key),
            self.refusals.get(key),
        )
        priority = granted.priorities.get(key)
        if priority is not None:
            conds.append(priority_condition(priority))
        status = st.pool_status(
            entry.status,
            entry.generation,
            conds,
            now,
            pool_plan,
            observed.queue.get(key),
            fleet.providers,
            observed.current_by_provider.get(key),
            observed.arrival.get(key),
            references,
        )
        if priority is not None:
            status = status.model_copy(update={"priority": priority_status(priority)})
        return status

    def _burst_references(
        self, key: PoolKey, spec: ServingPoolSpec, fleet: Fleet
    ) -> list[BurstReference]:
        workload = self.workloads.get(key)
        if workload is None:
            return []
        found = pool_references(key, spec, workload, fleet.providers, fleet.terms_of(key.namespace))
        return [BurstReference(kind=kind, name=name) for kind, name in found]

    async def _report_policy(self, policy: TenantPolicyEntry, granted: Grants, now: float) -> None:
        governed = granted.governed.get(policy.name, 0)
        status = policy_status(policy, policy.status, governed, now)
        await self._write("tenantpolicies", None, policy.name, policy.status, status)

    async def _report_provider(
        self,
        provider_entry: ProviderEntry,
        plan: FleetPlan,
        observed: Observed,
        credential_errors: Mapping[str, str],
        now: float,
    ) -> None:
        provider_spec = provider_entry.parsed.value
        node_plans = {
            k.node_pool: p for k, p in plan.node_pools.items() if k.provider == provider_entry.name
        }
        ready_nodes = {
            n: s.ready
            for k, s in observed.node_states.items()
            if k.provider == provider_entry.name
            for n in [k.node_pool]
        }
        error = observed.driver_errors.get(provider_entry.name)
        credentials_error = credential_errors.get(provider_entry.name)
        if credentials_error:
            error = Problem("CredentialsInvalid", "no usable credentials: see CredentialsValid")
        status = (
            st.provider_status(
                provider_entry.status,
                provider_entry.generation,
                provider_spec,
                node_plans,
                ready_nodes,
                error,
                now,
                provider_entry.parsed.errors,
                credentials_error,
                self.deleting.get(provider_entry.name),
            )
            if provider_spec is not None
            else st.provider_status(
                provider_entry.status,
                provider_entry.generation,
                _EMPTY_PROVIDER,
                {},
                {},
                None,
                now,
                provider_entry.parsed.errors,
            )
        )
        for np_key, np_plan in plan.node_pools.items():
            if np_key.provider == provider_entry.name:
                self.metrics.desired_nodes.labels(np_key.provider, np_key.node_pool).set(
                    np_plan.desired_nodes
                )
                self.metrics.current_nodes.labels(np_key.provider, np_key.node_pool).set(
                    np_plan.current_nodes
                )
        await self._write(
            "cloudproviders", None, provider_entry.name, provider_entry.status, status
        )

    async def _report_budget(
        self, budget_entry: BudgetEntry, plan: FleetPlan, observed: Observed, now: float
    ) -> None:
        budget_plan = plan.budgets.get(budget_entry.name)
        budget_spec: PowerBudgetSpec | None = budget_entry.parsed.value
        measured = (
            budget_spec is not None and budget_spec.measurement.type == MeasurementType.PROMETHEUS
        )
        status = st.budget_status(
            budget_entry.status,
            budget_entry.generation,
            budget_plan,
            measured,
            now,
            budget_entry.parsed.errors,
            observed.budget_errors.get(budget_entry.name),
        )
        if budget_plan is not None:
            drawn = (
                budget_plan.measured_watts
                if budget_plan.measured_watts is not None
                else budget_plan.planned_watts
            )
            self.metrics.budget_drawn_kw.labels(budget_entry.name).set(drawn / 1000)
            self.metrics.budget_planned_kw.labels(budget_entry.name).set(
                budget_plan.planned_watts / 1000
            )
            self.metrics.budget_allowed_kw.labels(budget_entry.name).set(
                budget_plan.allowed_watts / 1000
            )
        await self._write("powerbudgets", None, budget_entry.name, budget_entry.status, status)

    def _pool_metrics(self, key: PoolKey, plan: Any, observed: Observed) -> None:
        m = self.metrics
        desired = plan.replicas_by_provider()
        current = observed.current_by_provider.get(key, {})
        values: dict[tuple[Any, tuple[str, ...]], float] = {}
        for provider in sorted(set(desired) | set(current)):
            values[m.desired_replicas, (provider,)] = desired.get(provider, 0)
            values[m.current_replicas, (provider,)] = current.get(provider, 0)
        queue = observed.queue.get(key)
        values[m.metrics_available, ()] = 0 if queue is None else 1
        if queue is not None:
            values[m.queue_depth, ()] = queue
        values[m.pool_watts, ()] = plan.planned_watts
        values[m.burst_replicas, ()] = plan.burst_replicas
        throttle = plan.throttle
        if throttle is None:
            values[m.sustainable_rate, ("",)] = float("nan")
        else:
            values[m.sustainable_rate, ("",)] = throttle.sustainable
            for tier in throttle.tiers:
                values[m.sustainable_rate, (tier.name,)] = tier.allowed
        self.series.report(key, values)

    async def _scale_event(
        self, entry: PoolEntry, plan: PoolPlan, drain: DrainOutcome | None
    ) -> None:
        if plan.desired_replicas == plan.current_replicas and Reason.DRY_RUN not in plan.reasons:
            return
        previous = (entry.status or {}).get("desiredReplicas")
        if previous == plan.desired_replicas:
            return  # already told: one Event per decision, not per tick
        reason, message = scale_event(plan, drain)
        self.series.count(PoolKey(entry.namespace, entry.name), self.metrics.decisions, reason)
        log.info(
            "pool %s/%s: %s",
            entry.namespace,
            entry.name,
            message,
            extra={
                "pool": f"{entry.namespace}/{entry.name}",
                "reason": reason,
                "desired": plan.desired_replicas,
                "current": plan.current_replicas,
            },
        )
        try:
            await self.kube.event("ServingPool", entry.namespace, entry.name, None, reason, message)
        except Exception as exc:
            log.info("event for %s/%s not posted: %s", entry.namespace, entry.name, exc)

    async def _write(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        previous: Mapping[str, Any] | None,
        status: Model,
    ) -> dict[str, Any]:
        """Write `status` (built as its CRD's model: a field it lacks or a value out of range
        failed when it was built) where it changes what the stored one says; the status as
        written."""
        body = st.wire(status)
        if st.same(previous, body):
            return body
        try:
            await self.kube.patch_status(plural, namespace, name, previous or {}, body)
        except Exception as exc:
            self.metrics.reconcile_errors.labels("status").inc()
            log.warning("status of %s %s not written: %s", plural, name, exc)
        return body


def _empty_provider() -> CloudProviderSpec:
    from gpufleet.api.provider import CloudProviderSpec as Spec

    return Spec.model_validate(
        {
            "subprocessor": {"legalEntity": "-", "jurisdiction": "ZZ"},
            "driver": {"type": "Simulated"},
            "nodePools": [
                {
                    "name": "none",
                    "gpuType": "none",
                    "gpusPerNode": 1,
                    "wattsPerGpu": 1,
                    "idleWattsPerGpu": 0,
                    "maxNodes": 0,
                    "site": "none",
                }
            ],
        }
    )


_EMPTY_PROVIDER = _empty_provider()


def scale_event(plan: PoolPlan, drain: DrainOutcome | None) -> tuple[str, str]:
    """The reason and message of a pool's scaling Event. A scale-down whose drain a
    PodDisruptionBudget holds up says so: the replicas stay until the budget allows."""
    reason = plan.notes[0].reason.value if plan.notes else "Scaled"
    message = "; ".join(n.message for n in plan.notes[:4])
    if drain is not None and drain.blocked:
        message += f"; replicas stay until evictions are allowed: {drain.blocked}"
    return reason, message

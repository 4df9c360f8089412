"""What each object's status should say, computed from the plan: pure, so it is tested
without a cluster, and compared with the stored status so unchanged status is not written.

Every status is built as the pydantic model that generates its CRD (api/), so a misspelt or
out-of-range field fails when it is built, in a test, never silently at the API server;
`wire` gives the JSON that is written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from gpufleet.api.common import LIST_MAX, Model
from gpufleet.api.parse import SpecError
from gpufleet.api.pool import (
    BurstReference,
    Mode,
    PowerStatus,
    ProviderReplicas,
    ServiceRateStatus,
    ServingPoolSpec,
    ServingPoolStatus,
    TierStatus,
)
from gpufleet.api.pool import Throttle as ThrottleStatus
from gpufleet.api.power import PowerBudgetStatus
from gpufleet.api.provider import CloudProviderSpec, CloudProviderStatus, NodePoolStatus, Role
from gpufleet.planner.service import differs
from gpufleet.planner.types import (
    BudgetPlan,
    NodePoolPlan,
    PoolPlan,
    Reason,
    ServiceRate,
    Throttle,
)
from gpufleet.reconcilers.problems import Problem
from gpufleet.reconcilers.reporting.conditions import Cond, merge, ready, timestamp

if TYPE_CHECKING:
    from gpufleet.reconcilers.drain import DrainOutcome

StatusModel = TypeVar("StatusModel", bound=Model)

_CAPACITY = (
    Reason.LIMITED_BY_NAMESPACE_QUOTA,
    Reason.INSUFFICIENT_CAPACITY,
    Reason.CAPACITY_BACKOFF,
    Reason.LIMITED_BY_QUOTA,
    Reason.LIMITED_BY_NODE_POOL_MAX,
    Reason.NO_MATCHING_NODE_POOL,
    Reason.PROVIDER_UNAVAILABLE,
    Reason.LIMITED_BY_POWER,
    Reason.LIMITED_BY_BURST_MAX,
)
_LIMITED = (
    Reason.LIMITED_BY_NAMESPACE_QUOTA,
    Reason.LIMITED_BY_MAX,
    Reason.LIMITED_BY_MIN,
    Reason.HELD_BY_STABILIZATION,
    Reason.LIMITED_BY_RATE,
    Reason.BACKLOG_CLEARS_BEFORE_BOOT,
)
POOL_HEALTHY = {
    "SpecValid": True,
    "MetricsAvailable": True,
    "CapacityAvailable": True,
    "TargetFound": True,
    "DataPolicyCompliant": True,
}


def _message(plan: PoolPlan, reasons: Sequence[Reason]) -> tuple[Reason, str] | None:
    for note in plan.notes:
        if note.reason in reasons:
            return note.reason, note.message
    return None


def invalid_pool_conditions(errors: Sequence[SpecError]) -> list[Cond]:
    message = "; ".join(str(e) for e in errors)
    spec_valid = Cond("SpecValid", False, "InvalidField", message)
    return [ready([spec_valid], POOL_HEALTHY), spec_valid]


def pool_conditions(
    spec: ServingPoolSpec,
    plan: PoolPlan,
    metrics_problem: Problem | None,
    target_error: str | None,
    drain: DrainOutcome | None = None,
    refusal: tuple[str, str] | None = None,
) -> list[Cond]:
    spec_valid = Cond("SpecValid", True, "Valid", "")
    target = (
        Cond("TargetFound", False, "TargetNotFound", target_error)
        if target_error
        else Cond("TargetFound", True, "TargetFound", "")
    )
    metrics = _metrics_condition(plan, metrics_problem)
    capacity = _capacity_condition(plan)
    compliant = _noted(
        plan,
        Reason.OUTSIDE_DATA_POLICY,
        "DataPolicyCompliant",
        Cond("DataPolicyCompliant", True, "Compliant", ""),
        healthy=False,
    )
    dependents = [spec_valid, target, metrics, capacity, compliant]
    return [
        ready(dependents, POOL_HEALTHY),
        spec_valid,
        target,
        metrics,
        (
            Cond("ScalingActive", False, "DryRun", "spec.mode is DryRun: planning only")
            if spec.mode == Mode.DRY_RUN
            else Cond("ScalingActive", True, "Active", "")
        ),
        _limited_condition(plan),
        service_rate_condition(plan),
        capacity,
        _noted(
            plan,
            Reason.LIMITED_BY_POWER,
            "PowerLimited",
            Cond("PowerLimited", False, "WithinBudget", ""),
        ),
        _burst_condition(plan, refusal),
        compliant,
        _throttled_condition(plan),
        preempted_condition(plan, drain),
    ]


def _metrics_condition(plan: PoolPlan, problem: Problem | None) -> Cond:
    if plan.metrics_available:
        return Cond("MetricsAvailable", True, "QuerySucceeded", "")
    problem = problem or Problem("NoSample", "no sample")
    return Cond("MetricsAvailable", False, problem.reason, f"{problem.message}; holding capacity")


def _noted(
    plan: PoolPlan, reason: Reason, kind: str, otherwise: Cond, healthy: bool = True
) -> Cond:
    """`kind` set by the plan's note of `reason` (True, or False where True is `healthy`),
    `otherwise` without one."""
    note = _message(plan, (reason,))
    return Cond(kind, healthy, note[0].value, note[1]) if note else otherwise


def _limited_condition(plan: PoolPlan) -> Cond:
    note = _message(plan, _LIMITED)
    if note:
        return Cond("ScalingLimited", True, note[0].value, note[1])
    return Cond("ScalingLimited", False, "DesiredWithinRange", "")


def service_rate_condition(plan: PoolPlan) -> Cond:
    """`ServiceRateAccurate`: whether the replicas serve about what spec.serviceRates
    declares (planner/service.py); where not, the plan sizes with what they really serve."""
    rate = plan.service
    if rate is None or rate.observed is None:
        return Cond("ServiceRateAccurate", True, "NotObserved", "no busy stretch seen yet")
    ratio = rate.observed / rate.declared
    if not differs(ratio):
        return Cond("ServiceRateAccurate", True, "AsDeclared", "")
    return Cond(
        "ServiceRateAccurate",
        False,
        "ObservedRateDiffers",
        f"replicas serve {rate.observed * 60:,.0f} requests a minute, {ratio:.2f} times the "
        f"declared {rate.declared * 60:,.0f}; sized with {rate.used * 60:,.0f} "
        f"({rate.source.value}): check spec.serviceRates against the work the requests carry",
    )


def _capacity_condition(plan: PoolPlan) -> Cond:
    if plan.unplaced_replicas <= 0:
        return Cond("CapacityAvailable", True, "Placed", "")
    reason, text = _message(plan, _CAPACITY) or (Reason.INSUFFICIENT_CAPACITY, "")
    return Cond(
        "CapacityAvailable",
        False,
        reason.value,
        f"{plan.unplaced_replicas} replicas cannot be placed: {text}",
    )


def _burst_condition(plan: PoolPlan, refusal: tuple[str, str] | None = None) -> Cond:
    # A refused copy (reconcilers/burst/remote.py) runs nothing, whatever the plan places.
    if refusal is not None:
        return Cond("BurstActive", False, refusal[0], refusal[1])
    if plan.burst_replicas > 0:
        message = f"{plan.burst_replicas} replicas on secondary providers"
        return Cond("BurstActive", True, "BurstActive", message)
    blocked = _message(
        plan, (Reason.BURST_BLOCKED_BY_DATA_POLICY, Reason.BURST_BLOCKED_BY_NAMESPACE_POLICY)
    )
    if blocked:
        return Cond("BurstActive", False, blocked[0].value, blocked[1])
    return Cond("BurstActive", False, "NoBurst", "")


def _throttled_condition(plan: PoolPlan) -> Cond:
    note = _message(plan, (Reason.THROTTLED,))
    if note:
        return Cond("Throttled", True, throttled_reason(plan.throttle), note[1])
    return Cond("Throttled", False, "DemandWithinCapacity", "")


def preempted_condition(plan: PoolPlan, drain: DrainOutcome | None) -> Cond:
    """`Preempted`: whether replicas yield to higher-priority pools, and how their drain goes
    (reconcilers/drain.py): blocked by a PodDisruptionBudget, draining, or neither."""
    note = _message(plan, (Reason.PREEMPTED,))
    planned = note[1] if note else ""
    if drain is not None and drain.blocked:
        done = f"{drain.evicted} of {drain.wanted} replicas drained; " if drain.wanted else ""
        return Cond(
            "Preempted",
            True,
            "DrainBlockedByDisruptionBudget",
            f"{done}eviction refused: {drain.blocked}; retried until the budget allows it",
        )
    if drain is not None and drain.error:
        return Cond("Preempted", True, "DrainFailed", f"{drain.error}; retried next tick")
    if drain is not None and (drain.evicted or drain.draining):
        by = f" for {', '.join(drain.by[:3])}" if drain.by else ""
        return Cond(
            "Preempted",
            True,
            "Draining",
            f"{max(drain.draining, drain.evicted)} evicted replicas finishing in-flight "
            f"requests{by}" + (f"; {planned}" if planned else ""),
        )
    if plan.preempted:
        return Cond("Preempted", True, "Preempted", planned)
    return Cond("Preempted", False, "NotPreempted", "")


def wire(status: Model) -> dict[str, Any]:
    """The status as it is written: camelCase, only the fields it was given, none null."""
    return status.model_dump(by_alias=True, exclude_unset=True, exclude_none=True, mode="json")


def kept(model: type[StatusModel], previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """The fields of a stored status that `model` still has and accepts, to keep while a new
    status says only what went wrong; each field that it no longer has or accepts is dropped
    on its own."""
    known = {info.alias or name for name, info in model.model_fields.items()}
    fields = {k: v for k, v in (previous or {}).items() if k in known and k != "conditions"}
    if _accepts(model, fields):  # the usual case: one validation, not one a field
        return fields
    return {k: v for k, v in fields.items() if _accepts(model, {k: v})}


def _accepts(model: type[StatusModel], fields: Mapping[str, Any]) -> bool:
    try:
        model.model_validate({**fields, "conditions": []})
    except ValidationError:
        return False
    return True


def pool_status(
    previous: Mapping[str, Any] | None,
    generation: int,
    conditions: list[Cond],
    now: float,
    plan: PoolPlan | None = None,
    queue: float | None = None,
    providers: Mapping[str, CloudProviderSpec] | None = None,
    current_by_provider: Mapping[str, int] | None = None,
    arrival: float | None = None,
    burst_references: Sequence[BurstReference] = (),
) -> ServingPoolStatus:
    previous = previous or {}
    merged = merge(previous.get("conditions"), conditions, generation, now)
    if plan is None:  # the figures stay as they were; the conditions say why
        return ServingPoolStatus.model_validate(
            {
                **kept(ServingPoolStatus, previous),
                "observedGeneration": generation,
                "conditions": merged,
            }
        )
    desired = plan.replicas_by_provider()
    current = dict(current_by_provider or {})
    names = sorted(set(desired) | {k for k, v in current.items() if v})
    # A decision, not a difference: the time moves when the plan's answer changes.
    changed = previous.get("desiredReplicas") != plan.desired_replicas
    last = timestamp(now) if changed else previous.get("lastScaleTime")
    if queue is not None:
        queue_depth: int | None = max(0, round(queue))
    else:
        stored = {"queueDepth": previous["queueDepth"]} if "queueDepth" in previous else {}
        queue_depth = kept(ServingPoolStatus, stored).get("queueDepth")
    return ServingPoolStatus(
        observed_generation=generation,
        desired_replicas=plan.desired_replicas,
        current_replicas=plan.current_replicas,
        queue_depth=queue_depth,
        providers=[
            ProviderReplicas(
                provider=n,
                desired_replicas=desired.get(n, 0),
                current_replicas=current.get(n, 0),
            )
            for n in names
        ],
        burst_percent=burst_percent(plan, providers or {}),
        power_watts=round(plan.planned_watts),
        power=[
            PowerStatus(gpu_type=f.gpu_type, watts_per_gpu=round(f.watts_per_gpu), source=f.source)
            for f in plan.power[:LIST_MAX]
        ],
        last_scale_time=last,
        throttle=throttle_status(plan.throttle) if plan.throttle is not None else None,
        # W / (requests/s) is joules per request; / 3.6 gives mWh.
        energy_per_request_milliwatt_hours=(
            round(plan.planned_watts / arrival / 3.6) if arrival else None
        ),
        service_rate=_service_rate_status(plan.service),
        burst_references=list(burst_references[:LIST_MAX]) or None,
        conditions=merged,
    )


def _service_rate_status(rate: ServiceRate | None) -> ServiceRateStatus | None:
    if rate is None:
        return None
    return ServiceRateStatus(
        declared_requests_per_minute=round(rate.declared * 60),
        observed_requests_per_minute=(
            round(rate.observed * 60) if rate.observed is not None else None
        ),
        used_requests_per_minute=round(rate.used * 60),
        source=rate.source,
    )


def burst_percent(plan: PoolPlan, providers: Mapping[str, CloudProviderSpec]) -> int:
    if plan.desired_replicas <= 0:
        return 0
    burst = sum(
        count
        for (provider, _), count in plan.placements.items()
        if provider in providers and providers[provider].role == Role.SECONDARY
    )
    return round(100 * burst / plan.desired_replicas)


def provider_status(
    previous: Mapping[str, Any] | None,
    generation: int,
    spec: CloudProviderSpec,
    node_plans: Mapping[str, NodePoolPlan],
    ready_nodes: Mapping[str, int],
    driver_problem: Problem | None,
    now: float,
    errors: Sequence[SpecError] = (),
    credentials_error: str | None = None,
    deleting: tuple[str, str] | None = None,
) -> CloudProviderStatus:
    """`deleting`: the reason and message of a deletion waiting for the provider's remote
    copies to go (Deleting=True, and Ready=False for that reason)."""
    previous = previous or {}
    if errors:
        valid = Cond("SpecValid", False, "InvalidField", "; ".join(map(str, errors)))
        conds = [ready([valid], {"SpecValid": True}), valid]
        return CloudProviderStatus(
            observed_generation=generation,
            conditions=merge(previous.get("conditions"), conds, generation, now),
        )
    reachable = (
        Cond("DriverReachable", False, driver_problem.reason, driver_problem.message)
        if driver_problem
        else Cond("DriverReachable", True, "Reachable", "")
    )
    gpus = sum(
        p.desired_nodes * n.gpus_per_node for n in spec.node_pools if (p := node_plans.get(n.name))
    )
    credentials = _credentials_condition(spec, credentials_error)
    conds = [
        ready([reachable, credentials], {"DriverReachable": True, "CredentialsValid": True}),
        reachable,
        credentials,
        _quota_condition(spec, gpus),
    ]
    if deleting is not None:
        conds[0] = Cond("Ready", False, *deleting)
        conds.append(Cond("Deleting", True, *deleting))
    return CloudProviderStatus(
        observed_generation=generation,
        ready_nodes=sum(ready_nodes.values()),
        gpus_in_use=gpus,
        node_pools=[
            NodePoolStatus(
                name=n.name,
                desired_nodes=node_plans[n.name].desired_nodes if n.name in node_plans else 0,
                ready_nodes=ready_nodes.get(n.name, 0),
                gpus_allocated=node_plans[n.name].gpus_allocated if n.name in node_plans else 0,
            )
            for n in spec.node_pools
        ],
        conditions=merge(previous.get("conditions"), conds, generation, now),
    )


def _quota_condition(spec: CloudProviderSpec, gpus: int) -> Cond:
    if spec.gpu_quota is not None and gpus >= spec.gpu_quota:
        message = f"{gpus} of {spec.gpu_quota} GPUs planned"
        return Cond("QuotaAvailable", False, "QuotaExhausted", message)
    return Cond("QuotaAvailable", True, "WithinQuota", "")


def _credentials_condition(spec: CloudProviderSpec, error: str | None) -> Cond:
    if error:
        return Cond("CredentialsValid", False, "CredentialsInvalid", error)
    # Secrets the operator reads for this provider: a kubeconfig, EKS's AWS credentials.
    secrets = spec.cluster.kubeconfig_secret_ref or (
        spec.driver.eks.credentials_secret_ref if spec.driver.eks else None
    )
    return Cond("CredentialsValid", True, "Valid" if secrets else "NoCredentialsNeeded", "")


def budget_status(
    previous: Mapping[str, Any] | None,
    generation: int,
    plan: BudgetPlan | None,
    measured_expected: bool,
    now: float,
    errors: Sequence[SpecError] = (),
    measurement_problem: Problem | None = None,
) -> PowerBudgetStatus:
    previous = previous or {}
    if errors or plan is None:
        valid = Cond("SpecValid", False, "InvalidField", "; ".join(map(str, errors)))
        conds = [ready([valid], {"SpecValid": True}), valid]
        return PowerBudgetStatus(
            observed_generation=generation,
            conditions=merge(previous.get("conditions"), conds, generation, now),
        )
    reached = [n for n in plan.notes if n.reason == Reason.CAP_REACHED]
    cap = (
        Cond("CapReached", True, "CapReached", reached[0].message)
        if reached
        else Cond("CapReached", False, "BelowCap", "")
    )
    measurement = _measurement_condition(plan, measured_expected, measurement_problem)
    conds = [Cond("Ready", True, "Ready", ""), measurement, cap]
    drawn = plan.measured_watts if plan.measured_watts is not None else plan.planned_watts
    return PowerBudgetStatus(
        observed_generation=generation,
        drawn_watts=round(drawn),
        planned_watts=round(plan.planned_watts),
        allowed_watts=round(plan.allowed_watts),
        active_window=plan.active_window or None,
        conditions=merge(previous.get("conditions"), conds, generation, now),
    )


def _measurement_condition(
    plan: BudgetPlan, measured_expected: bool, problem: Problem | None
) -> Cond:
    if not measured_expected:
        return Cond(
            "MeasurementAvailable", True, "Estimated", "power estimated from node-pool watts"
        )
    if plan.measured_watts is None:
        problem = problem or Problem("NoSample", "no sample")
        return Cond(
            "MeasurementAvailable", False, problem.reason, f"{problem.message}; using the estimate"
        )
    return Cond("MeasurementAvailable", True, "Measured", "")


def same(previous: Mapping[str, Any] | None, status: Mapping[str, Any]) -> bool:
    """Whether writing `status` would change nothing a user can see."""
    return dict(previous or {}) == dict(status)


def throttled_reason(throttle: Throttle | None) -> str:
    """The `Throttled` condition's reason, also in the gateway ConfigMap."""
    if throttle is None:
        return "DemandWithinCapacity"
    return "CapacityStarting" if throttle.starting else "DemandAboveCapacity"


def throttle_status(throttle: Throttle) -> ThrottleStatus:
    """`status.throttle`: requests per minute, rounded."""
    return ThrottleStatus(
        sustainable_requests_per_minute=round(throttle.sustainable * 60),
        demand_requests_per_minute=round(throttle.demand * 60),
        tiers=[
            TierStatus(
                name=t.name,
                demand_requests_per_minute=round(t.demand * 60),
                allowed_requests_per_minute=round(t.allowed * 60),
            )
            for t in throttle.tiers
        ],
    )


def throttle_figures(throttle: Throttle) -> dict[str, Any]:
    """The gateway ConfigMap's figures: those of `status.throttle`."""
    return wire(throttle_status(throttle))

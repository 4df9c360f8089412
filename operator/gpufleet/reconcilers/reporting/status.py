"""What each object's status should say, computed from the plan: pure, so it is tested
without a cluster, and compared with the stored status so unchanged status is not written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gpufleet.api.parse import SpecError
from gpufleet.api.pool import Mode, ServingPoolSpec
from gpufleet.api.provider import CloudProviderSpec, Role
from gpufleet.planner.types import BudgetPlan, NodePoolPlan, PoolPlan, Reason, Throttle
from gpufleet.reconcilers.problems import Problem
from gpufleet.reconcilers.reporting.conditions import Cond, merge, ready, timestamp

if TYPE_CHECKING:
    from gpufleet.reconcilers.drain import DrainOutcome

_CAPACITY = (
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
        capacity,
        _noted(
            plan,
            Reason.LIMITED_BY_POWER,
            "PowerLimited",
            Cond("PowerLimited", False, "WithinBudget", ""),
        ),
        _burst_condition(plan),
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


def _burst_condition(plan: PoolPlan) -> Cond:
    if plan.burst_replicas > 0:
        message = f"{plan.burst_replicas} replicas on secondary providers"
        return Cond("BurstActive", True, "BurstActive", message)
    blocked = _message(plan, (Reason.BURST_BLOCKED_BY_DATA_POLICY,))
    if blocked:
        return Cond("BurstActive", False, "BurstBlockedByDataPolicy", blocked[1])
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
) -> dict[str, Any]:
    previous = previous or {}
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge(previous.get("conditions"), conditions, generation, now),
    }
    if plan is None:
        return {**{k: v for k, v in previous.items() if k not in status}, **status}
    desired = plan.replicas_by_provider()
    current = dict(current_by_provider or {})
    names = sorted(set(desired) | {k for k, v in current.items() if v})
    status.update(
        {
            "desiredReplicas": plan.desired_replicas,
            "currentReplicas": plan.current_replicas,
            "providers": [
                {
                    "provider": n,
                    "desiredReplicas": desired.get(n, 0),
                    "currentReplicas": current.get(n, 0),
                }
                for n in names
            ],
            "burstPercent": _burst_percent(plan, providers or {}),
            "powerWatts": round(plan.planned_watts),
        }
    )
    if plan.throttle is not None:
        status["throttle"] = throttle_figures(plan.throttle)
    if arrival:
        # W / (requests/s) is joules per request; / 3.6 gives mWh.
        status["energyPerRequestMilliwattHours"] = round(plan.planned_watts / arrival / 3.6)
    if queue is not None:
        status["queueDepth"] = max(0, round(queue))
    elif "queueDepth" in previous:
        status["queueDepth"] = previous["queueDepth"]
    # A decision, not a difference: the time moves when the plan's answer changes.
    changed = previous.get("desiredReplicas") != plan.desired_replicas
    last = timestamp(now) if changed else previous.get("lastScaleTime")
    if last:
        status["lastScaleTime"] = last
    return status


def _burst_percent(plan: PoolPlan, providers: Mapping[str, CloudProviderSpec]) -> int:
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
) -> dict[str, Any]:
    previous = previous or {}
    if errors:
        valid = Cond("SpecValid", False, "InvalidField", "; ".join(map(str, errors)))
        conds = [ready([valid], {"SpecValid": True}), valid]
        return {
            "observedGeneration": generation,
            "conditions": merge(previous.get("conditions"), conds, generation, now),
        }
    reachable = (
        Cond("DriverReachable", False, driver_problem.reason, driver_problem.message)
        if driver_problem
        else Cond("DriverReachable", True, "Reachable", "")
    )
    gpus = sum(
        p.desired_nodes * n.gpus_per_node for n in spec.node_pools if (p := node_plans.get(n.name))
    )
    quota = _quota_condition(spec, gpus)
    credentials = _credentials_condition(spec, credentials_error)
    conds = [
        ready([reachable, credentials], {"DriverReachable": True, "CredentialsValid": True}),
        reachable,
        credentials,
        quota,
    ]
    return {
        "observedGeneration": generation,
        "readyNodes": sum(ready_nodes.values()),
        "gpusInUse": gpus,
        "nodePools": [
            {
                "name": n.name,
                "desiredNodes": node_plans[n.name].desired_nodes if n.name in node_plans else 0,
                "readyNodes": ready_nodes.get(n.name, 0),
                "gpusAllocated": node_plans[n.name].gpus_allocated if n.name in node_plans else 0,
            }
            for n in spec.node_pools
        ],
        "conditions": merge(previous.get("conditions"), conds, generation, now),
    }


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
) -> dict[str, Any]:
    previous = previous or {}
    if errors or plan is None:
        valid = Cond("SpecValid", False, "InvalidField", "; ".join(map(str, errors)))
        conds = [ready([valid], {"SpecValid": True}), valid]
        return {
            "observedGeneration": generation,
            "conditions": merge(previous.get("conditions"), conds, generation, now),
        }
    if not measured_expected:
        measurement = Cond(
            "MeasurementAvailable", True, "Estimated", "power estimated from node-pool watts"
        )
    elif plan.measured_watts is None:
        problem = measurement_problem or Problem("NoSample", "no sample")
        measurement = Cond(
            "MeasurementAvailable",
            False,
            problem.reason,
            f"{problem.message}; using the estimate",
        )
    else:
        measurement = Cond("MeasurementAvailable", True, "Measured", "")
    reached = [n for n in plan.notes if n.reason == Reason.CAP_REACHED]
    cap = (
        Cond("CapReached", True, "CapReached", reached[0].message)
        if reached
        else Cond("CapReached", False, "BelowCap", "")
    )
    conds = [Cond("Ready", True, "Ready", ""), measurement, cap]
    drawn = plan.measured_watts if plan.measured_watts is not None else plan.planned_watts
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "drawnWatts": round(drawn),
        "plannedWatts": round(plan.planned_watts),
        "allowedWatts": round(plan.allowed_watts),
        "conditions": merge(previous.get("conditions"), conds, generation, now),
    }
    if plan.active_window:
        status["activeWindow"] = plan.active_window
    return status


def same(previous: Mapping[str, Any] | None, status: Mapping[str, Any]) -> bool:
    """Whether writing `status` would change nothing a user can see."""
    return dict(previous or {}) == dict(status)


def throttled_reason(throttle: Throttle | None) -> str:
    """The `Throttled` condition's reason, also in the gateway ConfigMap."""
    if throttle is None:
        return "DemandWithinCapacity"
    return "CapacityStarting" if throttle.starting else "DemandAboveCapacity"


def throttle_figures(throttle: Throttle) -> dict[str, Any]:
    """`status.throttle`, and the gateway ConfigMap's figures: requests per minute."""
    return {
        "sustainableRequestsPerMinute": round(throttle.sustainable * 60),
        "demandRequestsPerMinute": round(throttle.demand * 60),
        "tiers": [
            {
                "name": t.name,
                "demandRequestsPerMinute": round(t.demand * 60),
                "allowedRequestsPerMinute": round(t.allowed * 60),
            }
            for t in throttle.tiers
        ],
    }

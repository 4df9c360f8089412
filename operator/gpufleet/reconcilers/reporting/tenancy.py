"""Status for what the platform grants: a pool's priority, and each TenantPolicy's own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpufleet.api.pool import PriorityStatus
from gpufleet.api.tenancy import PoolPriority, PriorityRefusal, TenantPolicyStatus
from gpufleet.reconcilers.cache import TenantPolicyEntry
from gpufleet.reconcilers.reporting.conditions import Cond, merge, ready

_WHY = {
    PriorityRefusal.SYSTEM_CLASS: "system-* classes are the cluster's own",
    PriorityRefusal.UNKNOWN_CLASS: "no such PriorityClass",
    PriorityRefusal.NOT_ALLOWED: "no TenantPolicy allows it in this namespace",
}


def priority_condition(priority: PoolPriority) -> Cond:
    """`PriorityClassAccepted`: whether the class the pool's pods name sets its priority."""
    if priority.refused is None:
        named = priority.class_name or "none (priority 0)"
        return Cond(
            "PriorityClassAccepted", True, "Accepted", f"priority {priority.value} from {named}"
        )
    fallback = priority.class_name or "no class"
    return Cond(
        "PriorityClassAccepted",
        False,
        priority.refused.value,
        f"the workload's priorityClassName {priority.requested}: {_WHY[priority.refused]}; "
        f"planned at priority {priority.value} ({fallback}) instead",
    )


def priority_status(priority: PoolPriority) -> PriorityStatus:
    return PriorityStatus(value=priority.value, priority_class_name=priority.class_name)


POLICY_HEALTHY = {"SpecValid": True}


def policy_status(
    entry: TenantPolicyEntry, previous: Mapping[str, Any] | None, pools: int, now: float
) -> TenantPolicyStatus:
    if entry.parsed.value is None:
        message = "; ".join(str(e) for e in entry.parsed.errors)
        spec_valid = Cond("SpecValid", False, "InvalidField", message)
    else:
        spec_valid = Cond("SpecValid", True, "Valid", "")
    conditions = [ready([spec_valid], POLICY_HEALTHY), spec_valid]
    return TenantPolicyStatus(
        observed_generation=entry.generation,
        pools=pools if entry.parsed.value is not None else 0,
        conditions=merge((previous or {}).get("conditions"), conditions, entry.generation, now),
    )

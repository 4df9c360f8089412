"""The pure planning core: from specs and one snapshot to a plan with its reasons.

No I/O, no clock, no logging: the reconcilers and the simulator call the same function, so
what is simulated is what runs.
"""

from gpufleet.planner.fleet import plan_fleet
from gpufleet.planner.types import (
    BudgetPlan,
    CapacityError,
    CapacityErrorKind,
    Fleet,
    FleetPlan,
    NodePoolKey,
    NodePoolObservation,
    NodePoolPlan,
    Note,
    PlannerState,
    PoolKey,
    PoolObservation,
    PoolPlan,
    Reason,
    Settings,
    Snapshot,
    Throttle,
    TierAllowance,
)

__all__ = [
    "BudgetPlan",
    "CapacityError",
    "CapacityErrorKind",
    "Fleet",
    "FleetPlan",
    "NodePoolKey",
    "NodePoolObservation",
    "NodePoolPlan",
    "Note",
    "PlannerState",
    "PoolKey",
    "PoolObservation",
    "PoolPlan",
    "Reason",
    "Settings",
    "Snapshot",
    "Throttle",
    "TierAllowance",
    "plan_fleet",
]

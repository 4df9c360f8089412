"""One pool whose planning raises never stops the others.

The planner is pure and plans the whole fleet at once (pools share GPUs, quotas and power), so
an exception inside it would otherwise stop every pool, every tick. When it raises, the pools
that make it raise are found by halving (a few extra plans, only in a tick that failed), the
rest are planned without them, and they keep what they run (the fleet loop shrinks no node
pool in such a tick, because the plan no longer counts their pods).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

from gpufleet.planner import plan_fleet
from gpufleet.planner.types import Fleet, FleetPlan, PlannerState, PoolKey, Snapshot, frozen_map
from gpufleet.reconcilers.problems import Problem

log = logging.getLogger(__name__)

PLANNING_FAILED = "PlanningFailed"
Planner = Callable[[Fleet, Snapshot, PlannerState, float], FleetPlan]


@dataclasses.dataclass(frozen=True)
class _Attempt:
    fleet: Fleet
    snapshot: Snapshot
    state: PlannerState
    now: float
    planner: Planner

    def plan(self, keys: Sequence[PoolKey]) -> FleetPlan:
        pools = frozen_map({k: self.fleet.pools[k] for k in keys})
        return self.planner(
            dataclasses.replace(self.fleet, pools=pools), self.snapshot, self.state, self.now
        )

    def raises(self, keys: Sequence[PoolKey]) -> bool:
        try:
            self.plan(keys)
        except Exception:
            return True
        return False

    def culprits(self, keys: Sequence[PoolKey]) -> list[PoolKey]:
        """The pools among `keys` (which fail together) that fail on their own."""
        if len(keys) == 1:
            return list(keys)
        half = len(keys) // 2
        return [
            key
            for part in (keys[:half], keys[half:])
            if self.raises(part)
            for key in self.culprits(part)
        ]


def plan_isolated(
    fleet: Fleet,
    snapshot: Snapshot,
    state: PlannerState,
    now: float,
    planner: Planner = plan_fleet,
) -> tuple[FleetPlan, dict[PoolKey, Problem]]:
    """The plan of every pool that can be planned, and a problem for each that cannot. Raises
    only when the fleet fails without the pools found (a provider or budget the planner
    chokes on, or pools that fail only together)."""
    attempt = _Attempt(fleet, snapshot, state, now, planner)
    keys = sorted(fleet.pools)
    try:
        return attempt.plan(keys), {}
    except Exception:
        log.exception("planning the fleet failed; looking for the pools that make it fail")
    culprits = set(attempt.culprits(keys))
    for key in sorted(culprits):
        log.error("planning pool %s fails; it keeps its replicas", key, extra={"pool": str(key)})
    plan = attempt.plan([k for k in keys if k not in culprits])
    problem = Problem(
        PLANNING_FAILED,
        "the planner failed on this pool; it keeps its replicas (the operator's log has the error)",
    )
    return plan, dict.fromkeys(sorted(culprits), problem)

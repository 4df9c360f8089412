"""Actuation as data: what a tick may resize, and the order in which the changes are applied.

The fleet loop gathers every target it can resize this tick into `Targets` (its size now, the
size the plan wants where that differs, and how to set it); the intent journal turns the wanted
sizes into actions with ids; `execute` applies them in `Phase` order. Only the setters do I/O,
so the order is tested with fakes and no cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from gpufleet.drivers.base import NodePoolRef
from gpufleet.planner.types import NodePoolKey, NodePoolPlan
from gpufleet.reconcilers.intent import Action

log = logging.getLogger(__name__)

# Sets a target to a size under an action id; True once it is set.
Setter = Callable[[int, str], Awaitable[bool]]
NODE_POOL_PREFIX = "nodepool/"


class Phase(IntEnum):
    """Node pools grow before the replicas that need the room, and shrink after the replicas
    (local and burst copies) have left, so no running pod loses its node first."""

    GROW_NODES = 0
    REPLICAS = 1
    SHRINK_NODES = 2


def node_pool_target(key: NodePoolKey) -> str:
    return f"{NODE_POOL_PREFIX}{key.provider}/{key.node_pool}"


def workload_target(kind: str, namespace: str, name: str) -> str:
    return f"{kind}/{namespace}/{name}"


def phase(action: Action, current: Mapping[str, int]) -> Phase:
    if not action.target.startswith(NODE_POOL_PREFIX):
        return Phase.REPLICAS
    grows = action.size > current.get(action.target, 0)
    return Phase.GROW_NODES if grows else Phase.SHRINK_NODES


@dataclass
class Targets:
    """Every target this tick can resize: its observed size (`current`), the size the plan
    wants where that differs (`planned`), and how to set it."""

    current: dict[str, int] = field(default_factory=dict)
    planned: dict[str, int] = field(default_factory=dict)
    setters: dict[str, Setter] = field(default_factory=dict)
    # Workloads that keep their size while preempted replicas move (drained, recreated).
    moves: list[str] = field(default_factory=list)

    def add(self, target: str, current: int, wanted: int | None, setter: Setter) -> None:
        """`wanted` None: the target is known (a pending action may still set it), not planned."""
        self.current[target] = current
        self.setters[target] = setter
        if wanted is not None and wanted != current:
            self.planned[target] = wanted


@dataclass(frozen=True)
class NodePoolTarget:
    key: NodePoolKey
    ref: NodePoolRef
    current: int
    wanted: int | None


def node_pool_targets(
    plans: Mapping[NodePoolKey, NodePoolPlan],
    targets_now: Mapping[NodePoolKey, int],
    refs: Mapping[NodePoolKey, NodePoolRef],
    hold_shrinks: Collection[NodePoolKey],
) -> list[NodePoolTarget]:
    """The node pools the loop may resize (those with a driver, a state and a reachable
    provider: `refs` and `targets_now`), with the size the plan wants; those in
    `hold_shrinks` none smaller than now."""
    out = []
    for key, plan in sorted(plans.items()):
        if key not in refs or key not in targets_now:
            continue
        current = targets_now[key]
        if key in hold_shrinks and plan.desired_nodes < current:
            continue
        out.append(NodePoolTarget(key, refs[key], current, plan.desired_nodes))
    return out


async def execute(actions: Iterable[Action], targets: Targets) -> set[str]:
    """Apply `actions` in phase order (then by target, for a stable order); the ids done."""
    done: set[str] = set()
    ordered = sorted(actions, key=lambda a: (phase(a, targets.current), a.target))
    for action in ordered:
        setter = targets.setters.get(action.target)
        if setter is not None and await setter(action.size, action.id):
            log.info(
                "applied %s",
                action.id,
                extra={"actionId": action.id, "target": action.target, "size": action.size},
            )
            done.add(action.id)
    return done

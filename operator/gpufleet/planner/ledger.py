"""The ledger of node pools, quotas and power budgets that placements draw from.

Replicas consume node pools in node fractions: a replica needing g GPUs on nodes of n GPUs
takes 1/floor(n/g) of a node. That is exact when g divides n (the common 1, 2, 4, 8) and
errs towards more nodes otherwise, so the scheduler can always pack what the plan promises.
The fractions are counted in integers (`node_units`): as floats, thousands of tenths of a
node drifted past any rounding allowance, and a node pool packed to its last GPU lost a
replica to the order its pools were placed in.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from enum import StrEnum

from gpufleet.api.provider import CloudProviderSpec, NodePool
from gpufleet.planner.power import busy_gpu_watts, node_watts
from gpufleet.planner.types import NodePoolKey

_EPS = 1e-9
# Watts `fitting` leaves unused under a budget: far above rounding, far below a watt.
_MARGIN = 1e-6


@functools.cache
def node_units(gpus_per_node: int) -> int:
    """The parts a node is counted in: every share 1/floor(n/g) of it is a whole number."""
    return math.lcm(*(gpus_per_node // g for g in range(1, gpus_per_node + 1)))


class Limit(StrEnum):
    NODE_POOL_MAX = "NodePoolMax"
    QUOTA = "Quota"
    POWER = "Power"
    BACKOFF = "Backoff"
    HELD = "Held"


# An enum member read through its class costs several times a global's on Python 3.11 (the
# enum metaclass defines __getattr__): members read for every placement are bound once.
_NODE_POOL_MAX, _QUOTA, _POWER = Limit.NODE_POOL_MAX, Limit.QUOTA, Limit.POWER
_BACKOFF, _HELD = Limit.BACKOFF, Limit.HELD


@dataclass
class Slot:
    """One node pool's share of the ledger while a plan is built."""

    key: NodePoolKey
    spec: NodePool
    provider: CloudProviderSpec
    budgets: tuple[int, ...]
    existing_nodes: int
    node_limit: int
    backoff: bool
    held: bool
    unit: int = 1  # parts of a node (node_units of its GPUs a node)
    used: int = 0  # parts of nodes the placements take
    gpus_allocated: int = 0
    floor: int = 0  # no fewer nodes than this: minNodes, or those kept
    kept: int = 0  # nodes recently needed that stay while unneeded (never above existing)
    warm: int = 0  # of those kept, the nodes spares may fill: not those about to go

    @property
    def spare_nodes(self) -> int:
        """Nodes whose idle GPUs spares may fill: minNodes, those demand needs and those
        kept for a while yet (planner/nodes.py `kept_nodes`). Never above `nodes`."""
        return max(self.spec.min_nodes, self.warm, self.needed)

    @property
    def needed(self) -> int:
        """Whole nodes the placements take."""
        return -(-self.used // self.unit)

    @property
    def nodes(self) -> int:
        if self.held:
            return self.existing_nodes
        return max(self.floor, self.needed)

    def nodes_with(self, extra: int) -> int:
        """`nodes` with `extra` more parts taken."""
        if self.held:
            return self.existing_nodes
        return max(self.floor, -(-(self.used + extra) // self.unit))

    def part(self, gpus: int) -> int:
        """The parts of a node one replica of `gpus` GPUs takes (0: it fits on none)."""
        per_node = self.spec.gpus_per_node // gpus
        return self.unit // per_node if per_node else 0


@dataclass
class Ledger:
    slots: dict[NodePoolKey, Slot]
    quota: dict[str, int | None]
    provider_gpus: dict[str, int] = field(default_factory=dict)
    budget_used: list[float] = field(default_factory=list)
    budget_allowed: list[float] = field(default_factory=list)
    capped: set[int] = field(default_factory=set)  # budgets that refused a placement
    # Per namespace with a ResourceQuota on GPUs: what its managed pools may hold in all
    # (Fleet.namespace_gpus) and what they hold or were given so far, across every provider
    # (a burst copy in another cluster is still the namespace's). Not a Slot limit: it is the
    # pool's, so it never closes a node pool for the other pools that share a candidate list.
    namespace_gpus: dict[str, int] = field(default_factory=dict)
    namespace_used: dict[str, int] = field(default_factory=dict)

    def open(self) -> None:
        """Count what stands before any replica is placed: minimum and held nodes."""
        for slot in self.slots.values():
            nodes = slot.nodes
            gpn = slot.spec.gpus_per_node
            self.provider_gpus[slot.key.provider] = (
                self.provider_gpus.get(slot.key.provider, 0) + nodes * gpn
            )
            # Held nodes (provider unreachable) are counted at full load: we cannot see them.
            watts = nodes * node_watts(slot.spec)
            if slot.held:
                watts += nodes * gpn * busy_gpu_watts(slot.spec)
            for b in slot.budgets:
                self.budget_used[b] += watts

    def namespace_room(self, namespace: str) -> int | None:
        """GPUs the namespace's pools may still add (never below 0); None: no quota."""
        quota = self.namespace_gpus.get(namespace)
        if quota is None:
            return None
        return max(0, quota - self.namespace_used.get(namespace, 0))

    def charge_namespace(self, namespace: str, gpus: int) -> None:
        if gpus and namespace in self.namespace_gpus:
            self.namespace_used[namespace] = self.namespace_used.get(namespace, 0) + gpus

    def fit(
        self, slot: Slot, gpus: int, want: int, new_nodes: bool, busy_watts: float | None = None
    ) -> tuple[int, Limit | None]:
        """How many of `want` replicas of `gpus` GPUs each the slot can take, and what bound
        it; each busy GPU adds `busy_watts` above idle (None: the nameplate figure)."""
        if want <= 0:
            return 0, None
        part = slot.part(gpus)
        if part == 0:
            return 0, _NODE_POOL_MAX
        nodes_now = slot.nodes
        gpn = slot.spec.gpus_per_node
        # Upper bound from node count: existing nodes only, or the pool's growth limit.
        limit_reason: Limit | None = None
        if slot.held:
            cap_nodes, reason = nodes_now, _HELD
        elif new_nodes:
            cap_nodes = slot.node_limit
            reason = _BACKOFF if slot.backoff else _NODE_POOL_MAX
        else:
            cap_nodes, reason = max(slot.existing_nodes, slot.floor), None
        cap_nodes = max(cap_nodes, nodes_now)
        quota = self.quota.get(slot.key.provider)
        if quota is not None and new_nodes and not slot.held:
            spare = (quota - self.provider_gpus.get(slot.key.provider, 0)) // gpn
            if nodes_now + max(spare, 0) < cap_nodes:
                cap_nodes, reason = nodes_now + max(spare, 0), _QUOTA
        upper = max(0, (cap_nodes * slot.unit - slot.used) // part)
        if upper < want:
            limit_reason = reason
        upper = min(upper, want)

        def over(m: int) -> list[int]:
            extra_nodes = slot.nodes_with(m * part) - nodes_now
            busy = busy_gpu_watts(slot.spec) if busy_watts is None else busy_watts
            watts = extra_nodes * node_watts(slot.spec) + m * gpus * busy
            return [
                b
                for b in slot.budgets
                if self.budget_used[b] + watts > self.budget_allowed[b] + _EPS
            ]

        def within_power(m: int) -> bool:
            return not over(m)

        if upper > 0 and not within_power(upper):
            low, high = 0, upper  # within_power(low) holds, within_power(high) does not
            while high - low > 1:
                middle = (low + high) // 2
                if within_power(middle):
                    low = middle
                else:
                    high = middle
            self.capped.update(over(high))
            return low, _POWER
        return upper, limit_reason

    def fitting(
        self, asks: list[tuple[Slot, int, int, float | None]]
    ) -> tuple[set[NodePoolKey], bool] | None:
        """Of the slots the asks (slot, GPUs a replica, replicas, busy watts; None: nameplate)
        name, those whose asks all fit on their existing nodes at once: `fit` bounds no ask
        there, in any order; and whether that is every slot named. None where a power budget
        might bind one, with every ask counted (an ask larger than its slot counted whole),
        or where that is too close to tell past rounding."""
        parts: dict[NodePoolKey, int] = {}
        busy: dict[NodePoolKey, float] = {}
        slots: dict[NodePoolKey, Slot] = {}
        unfit: set[NodePoolKey] = set()
        for slot, gpus, count, watts in asks:
            key = slot.key
            slots[key] = slot
            part = slot.part(gpus)
            if part == 0 or slot.held:
                unfit.add(key)
                part = slot.unit  # counted as a node each: more than it could take
            parts[key] = parts.get(key, 0) + count * part
            if slot.budgets:
                each = busy_gpu_watts(slot.spec) if watts is None else watts
                busy[key] = busy.get(key, 0.0) + count * gpus * each
        added = [0.0] * len(self.budget_used)
        for key, slot in slots.items():
            cap_nodes = max(slot.existing_nodes, slot.floor, slot.nodes)
            if slot.used + parts[key] > cap_nodes * slot.unit:
                unfit.add(key)
            if not slot.budgets:
                continue
            extra_nodes = slot.nodes_with(parts[key]) - slot.nodes
            watts = extra_nodes * node_watts(slot.spec) + busy[key]
            for b in slot.budgets:
                added[b] += watts
        if not all(
            self.budget_used[b] + added[b] <= self.budget_allowed[b] - _MARGIN
            for b in range(len(added))
            if added[b] > 0
        ):
            return None
        return set(slots) - unfit, not unfit

    def commit(self, slot: Slot, gpus: int, count: int, busy_watts: float | None = None) -> None:
        if count <= 0:
            return
        parts = count * slot.part(gpus)
        extra_nodes = slot.nodes_with(parts) - slot.nodes
        slot.used += parts
        slot.gpus_allocated += count * gpus
        self.provider_gpus[slot.key.provider] = (
            self.provider_gpus.get(slot.key.provider, 0) + extra_nodes * slot.spec.gpus_per_node
        )
        watts = extra_nodes * node_watts(slot.spec)
        if not slot.held:
            busy = busy_gpu_watts(slot.spec) if busy_watts is None else busy_watts
            watts += count * gpus * busy
        for b in slot.budgets:
            self.budget_used[b] += watts

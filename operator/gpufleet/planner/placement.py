"""Where a pool's replicas go: which node pools it may use, in what order, and how many fit.

Order: primary providers before secondary ones (burst), then the user's order, Spot before
OnDemand where the pool allows Spot, then price per GPU. Replicas stay where they are while
they are wanted; growth fills free GPUs on existing nodes before asking for new nodes; a
shrinking pool leaves its least preferred (burst) node pools first.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from gpufleet.api.pool import DataClass, ServingPoolSpec
from gpufleet.api.provider import CapacityType, CloudProviderSpec, Role
from gpufleet.planner.ledger import Ledger, Limit
from gpufleet.planner.power import busy_watts, measured_watts
from gpufleet.planner.types import NodePoolKey, Note, Reason

# The 27 member states, ISO 3166-1 alpha-2 ("EU" in allowedJurisdictions means any of them).
EU_MEMBERS = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
    ]
)

_LIMIT_REASON = {
    Limit.NODE_POOL_MAX: Reason.LIMITED_BY_NODE_POOL_MAX,
    Limit.QUOTA: Reason.LIMITED_BY_QUOTA,
    Limit.POWER: Reason.LIMITED_BY_POWER,
    Limit.BACKOFF: Reason.CAPACITY_BACKOFF,
    Limit.HELD: Reason.PROVIDER_UNAVAILABLE,
}


def jurisdiction_allowed(allowed: list[str], jurisdiction: str) -> bool:
    if not allowed:
        return True
    country = jurisdiction.split("-", 1)[0]
    return any(
        a in (jurisdiction, country) or (a == "EU" and (country in EU_MEMBERS or country == "EU"))
        for a in allowed
    )


def data_policy_violation(pool: ServingPoolSpec, provider: CloudProviderSpec) -> str | None:
    """Why the provider may not process the pool's data, or None when it may."""
    policy, facts = pool.data_policy, provider.subprocessor
    if policy.approved_subprocessors_only and not facts.approved:
        return f"subprocessor {facts.legal_entity} is not approved"
    if not jurisdiction_allowed(policy.allowed_jurisdictions, facts.jurisdiction):
        return (
            f"jurisdiction {facts.jurisdiction} is not in allowedJurisdictions "
            f"{policy.allowed_jurisdictions}"
        )
    if policy.data_class != DataClass.PUBLIC and policy.data_class not in facts.data_classes:
        return f"data class {policy.data_class.value} is not in the provider's dataClasses"
    return None


class Refusal(StrEnum):
    BURST_DISABLED = "BurstDisabled"
    NOT_A_BURST_TARGET = "NotABurstTarget"
    DATA_POLICY = "DataPolicy"


def refusal(
    pool: ServingPoolSpec, name: str, provider: CloudProviderSpec
) -> tuple[Refusal, str] | None:
    """Why the pool may not use the provider at all (burst settings, data policy), or None."""
    if provider.role == Role.SECONDARY:
        if not pool.burst.enabled:
            return Refusal.BURST_DISABLED, "burst.enabled is false"
        if pool.burst.providers and name not in pool.burst.providers:
            return Refusal.NOT_A_BURST_TARGET, f"{name} is not in burst.providers"
    why = data_policy_violation(pool, provider)
    return (Refusal.DATA_POLICY, why) if why is not None else None


@dataclass(frozen=True)
class Candidates:
    """Node pools a pool may use: in order for keeping and filling, and for new nodes."""

    fill: tuple[NodePoolKey, ...]
    grow: tuple[NodePoolKey, ...]
    blocked: tuple[tuple[str, str], ...]  # (provider, why): refused by the data policy
    burst_disabled: bool  # secondaries exist that burst.enabled would open

    @cached_property
    def rank(self) -> dict[NodePoolKey, int]:
        return {key: index for index, key in enumerate(self.fill)}

    @cached_property
    def refused(self) -> dict[str, str]:
        """Why the data policy refuses each provider it refuses."""
        return dict(self.blocked)


@dataclass(frozen=True)
class Entry:
    key: NodePoolKey
    secondary: bool
    gpus_per_node: int
    spot: bool
    boot_seconds: int
    order: tuple[object, ...]


class Catalog:
    """Every node pool once, in preference order by GPU type; built once per plan."""

    def __init__(self, providers: Mapping[str, CloudProviderSpec]) -> None:
        self.providers = providers
        by_type: dict[str, list[Entry]] = {}
        for name, provider in providers.items():
            secondary = provider.role == Role.SECONDARY
            for node_pool in provider.node_pools:
                spot = node_pool.capacity_type == CapacityType.SPOT
                price = node_pool.hourly_price_cents / node_pool.gpus_per_node
                # Spot ranks first; pools that may not use Spot never see those entries.
                order = (int(secondary), provider.order, int(not spot), price, name, node_pool.name)
                entry = Entry(
                    NodePoolKey(name, node_pool.name),
                    secondary,
                    node_pool.gpus_per_node,
                    spot,
                    node_pool.boot_seconds,
                    order,
                )
                by_type.setdefault(node_pool.gpu_type, []).append(entry)
        self.by_type = {t: sorted(entries, key=_order) for t, entries in by_type.items()}
        # Seconds each node pool keeps a node its demand stopped needing (planner/nodes.py).
        self.delays = {
            NodePoolKey(name, node_pool.name): float(
                node_pool.boot_seconds
                if node_pool.scale_down_delay_seconds is None
                else node_pool.scale_down_delay_seconds
            )
            for name, provider in providers.items()
            for node_pool in provider.node_pools
        }
        # Candidate lists by pool signature, filled by the planner (see catalogs.catalog_of).
        self.memo: dict[tuple[object, ...], Candidates] = {}
        self._merged: dict[frozenset[str], list[Entry]] = {}

    def of_types(self, gpu_types: frozenset[str]) -> list[Entry]:
        """Node pools of any of the types, in preference order; shared by pools alike."""
        merged = self._merged.get(gpu_types)
        if merged is None:
            lists = [self.by_type[t] for t in sorted(gpu_types) if t in self.by_type]
            merged = self._merged[gpu_types] = list(heapq.merge(*lists, key=_order))
        return merged


def _order(entry: Entry) -> tuple[object, ...]:
    return entry.order


def candidates(pool: ServingPoolSpec, catalog: Catalog) -> Candidates:
    allowed: set[str] = set()
    blocked: list[tuple[str, str]] = []
    burst_disabled = False
    for name in sorted(catalog.providers):
        refused = refusal(pool, name, catalog.providers[name])
        if refused is None:
            allowed.add(name)
        elif refused[0] == Refusal.BURST_DISABLED:
            burst_disabled = True
        elif refused[0] == Refusal.DATA_POLICY:
            blocked.append((name, refused[1]))
    merged = catalog.of_types(frozenset(pool.gpu_types))
    gpus, spot_ok = pool.gpus_per_replica, pool.allow_spot
    eligible = [
        e
        for e in merged
        if e.key.provider in allowed and e.gpus_per_node >= gpus and (spot_ok or not e.spot)
    ]
    fill = tuple(e.key for e in eligible)
    max_lead = pool.burst.max_lead_seconds
    if max_lead is None:
        return Candidates(fill, fill, tuple(blocked), burst_disabled)
    # Node pools whose lead time misses the bound go after every faster one, burst included.
    load = pool.model_load_seconds
    grow = tuple(
        e.key
        for e in sorted(eligible, key=lambda e: (int(e.boot_seconds + load > max_lead), e.order))
    )
    return Candidates(fill, grow, tuple(blocked), burst_disabled)


class Progress:
    """Per plan and candidate list: node pools that can take no more replicas of its size.

    Placements only ever add to the ledger within a plan, so a node pool that is full (node
    limit, quota, power, back-off) stays full. Skipping those with path-compressed pointers
    keeps a plan linear in pools plus node pools instead of their product.
    """

    def __init__(self, options: Candidates) -> None:
        self._next = {
            False: list(range(len(options.fill) + 1)),
            True: list(range(len(options.grow) + 1)),
        }
        self.full: dict[Reason, list[str]] = {}

    def find(self, new_nodes: bool, index: int) -> int:
        pointers = self._next[new_nodes]
        root = index
        while pointers[root] != root:
            root = pointers[root]
        while pointers[index] != root:
            pointers[index], index = root, pointers[index]
        return root

    def close(self, new_nodes: bool, index: int, key: NodePoolKey, reason: Reason | None) -> None:
        self._next[new_nodes][index] = index + 1
        if reason is not None and new_nodes:
            self.full.setdefault(reason, []).append(str(key))


@dataclass(frozen=True)
class Placement:
    placements: dict[NodePoolKey, int]
    unplaced: int
    burst: int
    notes: tuple[Note, ...]
    # Current replicas per node pool that no longer fit on its existing nodes because pools
    # placed earlier (higher priority) took the room; some may be placed again on new nodes.
    preempted: dict[NodePoolKey, int] = field(default_factory=dict)
    # Replicas of `want` not placed because new nodes would come after the need has passed.
    held: int = 0


def _names(keys: set[str] | list[str]) -> str:
    ordered = sorted(keys)
    more = f" and {len(ordered) - 3} more" if len(ordered) > 3 else ""
    return ", ".join(ordered[:3]) + more


def place(
    ledger: Ledger,
    pool: ServingPoolSpec,
    want: int,
    current: Mapping[NodePoolKey, int],
    options: Candidates,
    progress: Progress,
    grow_to: int | None = None,
    measured: Mapping[str, int] | None = None,
) -> Placement:
    """Place `want` replicas: keep, then fill existing nodes, then grow; burst within its cap.

    New nodes take no more than `grow_to` replicas in all (None: no bound): the rest of
    `want` runs only where GPUs exist and is not short of capacity (`Placement.held`).
    `measured`: the pool's `measured_watts`, where the caller has them.
    """
    gpus = pool.gpus_per_replica
    if measured is None:
        measured = measured_watts(pool)
    placed: dict[NodePoolKey, int] = {}
    limits: dict[Reason, set[str]] = {}
    burst_room = pool.burst.max_replicas if pool.burst.max_replicas is not None else want
    burst = 0
    remaining = want
    displaced: dict[NodePoolKey, int] = {}

    def take(
        key: NodePoolKey, count: int, new_nodes: bool, keep: bool = False
    ) -> tuple[bool, Reason | None]:
        """Place up to `count` on one node pool; say whether it is now full, and why."""
        nonlocal remaining, burst
        slot = ledger.slots[key]
        if slot.held and not keep:
            # An unreachable provider can neither start nor stop replicas: hold, never add.
            limits.setdefault(Reason.PROVIDER_UNAVAILABLE, set()).add(str(key))
            return True, Reason.PROVIDER_UNAVAILABLE
        secondary = slot.provider.role == Role.SECONDARY
        if secondary:
            count = min(count, burst_room - burst)
            if count <= 0:
                limits.setdefault(Reason.LIMITED_BY_BURST_MAX, set()).add(str(key))
                return False, None
        asked = min(count, remaining)
        busy = busy_watts(measured, slot.spec) if measured else None  # None: nameplate
        fitted, limit = ledger.fit(slot, gpus, asked, new_nodes, busy)
        reason = _LIMIT_REASON[limit] if limit is not None else None
        if reason is not None:
            limits.setdefault(reason, set()).add(str(key))
        if keep and limit is None and fitted < asked:
            # The existing nodes are full with replicas of pools placed before this one.
            displaced[key] = asked - fitted
        if fitted:
            ledger.commit(slot, gpus, fitted, busy)
            placed[key] = placed.get(key, 0) + fitted
            remaining -= fitted
            if secondary:
                burst += fitted
        return fitted < asked, reason

    rank = options.rank
    kept = sorted((k for k in current if k in rank), key=rank.__getitem__)
    # An unreachable provider can be neither scaled down nor watched: its replicas stay.
    for key in kept:
        slot = ledger.slots[key]
        if slot.held and current[key] > 0:
            ledger.commit(slot, gpus, current[key])  # held: counted at full load already
            placed[key] = current[key]
            remaining -= current[key]
            limits.setdefault(Reason.PROVIDER_UNAVAILABLE, set()).add(str(key))
    for key in kept:
        if key not in placed and remaining > 0 and current[key] > 0:
            take(key, current[key], new_nodes=False, keep=True)
    kept_count = {key: placed.get(key, 0) for key in displaced} if displaced else {}
    held = 0
    for new_nodes, order in ((False, options.fill), (True, options.grow)):
        if new_nodes and grow_to is not None:
            held = max(0, min(remaining, remaining - (grow_to - (want - remaining))))
            remaining -= held
        index = progress.find(new_nodes, 0)
        while index < len(order) and remaining > 0:
            full, reason = take(order[index], remaining, new_nodes)
            if full:
                progress.close(new_nodes, index, order[index], reason)
            index = progress.find(new_nodes, index + 1)

    remaining = max(remaining, 0)
    if remaining > 0:
        for reason, keys in progress.full.items():
            limits.setdefault(reason, set()).update(keys)
    notes = [
        Note(reason, f"{reason.value} on {_names(limits[reason])}") for reason in sorted(limits)
    ]
    if remaining > 0 and options.blocked:
        notes.append(
            Note(
                Reason.BURST_BLOCKED_BY_DATA_POLICY,
                "no burst to " + "; ".join(f"{name}: {why}" for name, why in options.blocked),
            )
        )
    if remaining > 0 and options.burst_disabled:
        notes.append(
            Note(Reason.BURST_DISABLED, "secondary providers exist but burst.enabled is false")
        )
    if remaining > 0 and not options.fill:
        notes.append(
            Note(
                Reason.NO_MATCHING_NODE_POOL,
                f"no node pool offers {pool.gpu_types} with "
                f"{gpus} GPUs per node under the data policy",
            )
        )
    if burst > 0:
        notes.append(Note(Reason.BURST_ACTIVE, f"{burst} replicas on secondary providers"))
    # Replicas placed there again go to new nodes of the same node pool: they still leave
    # the existing ones now (a move), or the higher-priority pool waits a boot for them.
    if displaced:
        moved = sum(min(n, placed.get(k, 0) - kept_count[k]) for k, n in displaced.items())
        notes.append(
            Note(
                Reason.PREEMPTED,
                f"{sum(displaced.values())} replicas on {_names([str(k) for k in displaced])} "
                "yield to higher-priority pools: their existing nodes are full"
                + (f"; {moved} of them restart on new nodes" if moved else ""),
            )
        )
    return Placement(
        {k: v for k, v in placed.items() if v}, remaining, burst, tuple(notes), displaced, held
    )

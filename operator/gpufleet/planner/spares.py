"""Warm spares: GPUs left idle on the nodes a plan keeps run extra replicas.

A node is paid for by the hour whether its GPUs serve or not. Once every pool's demand is
placed, highest priority first, the room left on the nodes the plan keeps goes to the pools
that may use those node pools and ask for it (`warmSpares.enabled`), again highest priority
first. A spare is loaded before a
spike arrives, where a scrape, a rate window and a model load would otherwise stand between
the spike and new capacity. Spares never add a node (the node count is set by demand alone,
so they never hold one either), never exceed `maxReplicas` or `burst.maxReplicas`, hold
every power budget at full load, and are the first replicas a higher-priority pool's demand
takes back at the next plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, MutableMapping, Sequence

from gpufleet.api.pool import Mode, ServingPoolSpec
from gpufleet.api.provider import Role
from gpufleet.planner.ledger import Ledger
from gpufleet.planner.placement import Candidates
from gpufleet.planner.power import PoolDraw, busy_watts, gpu_watts
from gpufleet.planner.types import NodePoolKey, Note, PoolKey, PoolPlan, Reason, frozen_map

_SCALE_NOTES = (Reason.SCALED_UP, Reason.SCALED_DOWN, Reason.STEADY)
# An enum member read through its class costs several times a global's on Python 3.11 (the
# enum metaclass defines __getattr__): members read for every pool of every plan are bound once.
_SECONDARY = Role.SECONDARY


def add_spares(
    order: Sequence[PoolKey],
    pools: Mapping[PoolKey, ServingPoolSpec],
    options: Mapping[PoolKey, Candidates],
    plans: MutableMapping[PoolKey, PoolPlan],
    ledger: Ledger,
    draws: Mapping[PoolKey, PoolDraw],
) -> None:
    """Give idle room on kept nodes to pools in `order`; replaces their plans in `plans`.
    `draws`: what each pool's busy GPUs count at, as its demand was placed."""
    for key in [k for k in order if pools[k].warm_spares.enabled]:
        spec, plan = pools[key], plans[key]
        spares = spec.warm_spares
        if spec.mode == Mode.DRY_RUN or not plan.metrics_available or plan.desired_replicas == 0:
            continue  # an idle pool stays idle; without metrics, capacity is only held
        room = spec.max_replicas - plan.desired_replicas
        if spares.max_replicas is not None:
            room = min(room, spares.max_replicas)
        quota = ledger.namespace_room(key.namespace)  # spares are pods: the quota counts them
        if quota is not None:
            room = min(room, quota // spec.gpus_per_replica)
        burst_cap = spec.burst.max_replicas if spec.burst.max_replicas is not None else room
        burst_room = burst_cap - plan.burst_replicas
        added: dict[NodePoolKey, int] = {}
        gpus = spec.gpus_per_replica
        draw = draws[key]
        for node_pool in options[key].fill:
            if room <= 0:
                break
            slot = ledger.slots[node_pool]
            part = slot.part(gpus)
            if slot.held or part == 0:
                continue
            free = (slot.spare_nodes * slot.unit - slot.used) // part
            want = min(free, room)
            if slot.provider.role == _SECONDARY:
                want = min(want, burst_room)
            if want <= 0:
                continue
            busy = busy_watts(draw, slot.spec) if draw else None  # None: nameplate
            fitted, _ = ledger.fit(slot, gpus, want, False, busy)
            if fitted <= 0:
                continue
            ledger.commit(slot, gpus, fitted, busy)
            ledger.charge_namespace(key.namespace, fitted * gpus)
            added[node_pool] = fitted
            room -= fitted
            if slot.provider.role == _SECONDARY:
                burst_room -= fitted
        if added:
            plans[key] = _with_spares(plan, spec, added, ledger, draw)


def _with_spares(
    plan: PoolPlan,
    spec: ServingPoolSpec,
    added: Mapping[NodePoolKey, int],
    ledger: Ledger,
    draw: PoolDraw,
) -> PoolPlan:
    placements = dict(plan.placements)
    for node_pool, count in added.items():
        placements[node_pool] = placements.get(node_pool, 0) + count
    spares = sum(added.values())
    desired = plan.desired_replicas + spares
    current = plan.current_replicas
    notes = [n for n in plan.notes if n.reason not in _SCALE_NOTES]
    if desired != current:
        change = Reason.SCALED_UP if desired > current else Reason.SCALED_DOWN
        notes.insert(0, Note(change, f"{current} -> {desired} replicas"))
    notes.append(
        Note(Reason.WARM_SPARES, f"{spares} warm spare replicas on idle GPUs of kept nodes")
    )
    watts = sum(
        count * spec.gpus_per_replica * gpu_watts(draw, ledger.slots[k].spec)
        for k, count in added.items()
    )
    burst = sum(
        count for k, count in added.items() if ledger.slots[k].provider.role == Role.SECONDARY
    )
    return dataclasses.replace(
        plan,
        desired_replicas=desired,
        placements=frozen_map(placements),
        burst_replicas=plan.burst_replicas + burst,
        planned_watts=plan.planned_watts + watts,
        notes=tuple(notes),
        spare_replicas=spares,
    )

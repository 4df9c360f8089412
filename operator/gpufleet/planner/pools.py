"""One pool's plan: what it asks for before its priority group is placed (`size_pool`),
its placer, and its plan once the group is placed (`finish_pool`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gpufleet.api.pool import ServingPoolSpec
from gpufleet.planner import behavior
from gpufleet.planner.bursts import BurstMemory, recurring_queue
from gpufleet.planner.bursts import observe as observe_bursts
from gpufleet.planner.demand import Demand, demand
from gpufleet.planner.facts import PoolFacts
from gpufleet.planner.ledger import Ledger
from gpufleet.planner.placement import Candidates, Progress
from gpufleet.planner.placer import Placer
from gpufleet.planner.power import (
    PoolDraw,
    gpu_watts,
    pool_draw,
    power_figures,
)
from gpufleet.planner.rates import learn_service
from gpufleet.planner.service import ServiceMemory
from gpufleet.planner.throttle import plan_throttle
from gpufleet.planner.types import (
    Forecast,
    NodePoolKey,
    Note,
    PoolKey,
    PoolMemory,
    PoolObservation,
    PoolPlan,
    Reason,
    ServiceRate,
    Settings,
    frozen_map,
)

_NO_METRICS = PoolObservation(queue_depth=None)
_NONE: Mapping[NodePoolKey, int] = frozen_map()
# An enum member read through its class costs several times a global's on Python 3.11 (the
# enum metaclass defines __getattr__): members read for every pool of every plan are bound once.
_SCALED_UP, _SCALED_DOWN, _STEADY = Reason.SCALED_UP, Reason.SCALED_DOWN, Reason.STEADY
_LIMITED_BY_MAX = Reason.LIMITED_BY_MAX


def _clamp(spec: ServingPoolSpec, replicas: int) -> tuple[int, tuple[Note, ...]]:
    if replicas > spec.max_replicas:
        return spec.max_replicas, (
            Note(Reason.LIMITED_BY_MAX, f"{replicas} wanted, maxReplicas is {spec.max_replicas}"),
        )
    if replicas < spec.min_replicas:
        return spec.min_replicas, (
            Note(Reason.LIMITED_BY_MIN, f"{replicas} wanted, minReplicas is {spec.min_replicas}"),
        )
    return replicas, ()


def _lead_seconds(spec: ServingPoolSpec, boot: int | None) -> float:
    """Seconds until new capacity serves: `boot`, the boot seconds of the first node pool the
    pool would grow (None: none can grow), then the model's load."""
    if boot is not None:
        return float(boot + spec.model_load_seconds)
    return float(spec.model_load_seconds)


def _outside_data_policy(observation: PoolObservation, options: Candidates) -> Note | None:
    """Replicas the scheduler put on nodes of a provider the data policy refuses. The plan
    never places them there, but the pods are the user's: only their node affinity keeps
    them off, so the pool reports them instead of silently counting them."""
    if not observation.replicas or not options.refused:
        return None
    outside = {
        key: count
        for key, count in observation.replicas.items()
        if count and key.provider in options.refused
    }
    if not outside:
        return None
    where = ", ".join(f"{count} on {key}" for key, count in sorted(outside.items()))
    why = "; ".join(sorted({f"{k.provider}: {options.refused[k.provider]}" for k in outside}))
    return Note(
        Reason.OUTSIDE_DATA_POLICY,
        f"replicas run where the data policy refuses ({where}): {why}; pin the pods to "
        "allowed providers with a node affinity on gpufleet.io/provider",
    )


@dataclass
class Sized:
    """A pool's demand and the replicas it asks for, before any of its group is placed."""

    key: PoolKey
    spec: ServingPoolSpec
    observation: PoolObservation
    memory: PoolMemory
    options: Candidates
    lead: float
    rules: behavior.Resolved
    rate: ServiceRate | None
    service_memory: ServiceMemory | None
    bursts: BurstMemory | None
    needed: Demand | None
    notes: list[Note]
    history: tuple[tuple[float, int], ...]
    forecast: Forecast | None
    recommended: int
    desired: int
    grow_to: int | None
    dry_run: bool
    current: int  # replicas that run now (observation.total_replicas)


def size_pool(
    key: PoolKey,
    spec: ServingPoolSpec,
    observation: PoolObservation,
    memory: PoolMemory,
    options: Candidates,
    ledger: Ledger,
    now: float,
    settings: Settings,
    boot: int | None,
    facts: PoolFacts,
) -> Sized:
    """`boot`: the boot seconds of the first node pool of `options.grow` that can grow;
    `facts`: the spec's (`facts.facts_of`)."""
    current = observation.total_replicas
    rules = facts.rules
    lead = _lead_seconds(spec, boot)
    service_memory, rate = (
        learn_service(spec, observation, memory.service, ledger, now)
        if facts.slowest is not None
        else (None, None)  # what learn_service says of a pool without a declared rate
    )
    factor = rate.used / rate.declared if rate is not None else 1.0
    bursts = memory.bursts
    if observation.queue_depth is not None and math.isfinite(observation.queue_depth):
        bursts = observe_bursts(bursts or BurstMemory(), now, observation.queue_depth)
    needed = demand(
        spec,
        observation,
        memory.forecast,
        lead,
        now,
        settings,
        factor,
        recurring_queue(bursts, now),
        rate.growth if rate is not None else 0.0,
    )
    notes: list[Note] = []
    history = memory.recommendations
    if not history and current > 0:
        # As the HPA records its first sight: what runs counts as recommended now, so that
        # a (re)started operator, with no memory of the window, holds it a scale-down window
        # before trusting a model that nothing it has observed yet confirms.
        history = ((now, current),)
    forecast = memory.forecast
    if needed is None:
        # Fail static: without the signal, keep what runs; only the bounds still apply.
        recommended, clamp_notes = _clamp(spec, current)
        desired = recommended
        notes.append(
            Note(
                Reason.METRICS_UNAVAILABLE, f"queue metric unavailable: holding {current} replicas"
            )
        )
        notes.extend(clamp_notes)
    else:
        forecast = needed.forecast
        notes.extend(needed.notes)
        recommended, clamp_notes = _clamp(spec, needed.replicas)
        notes.extend(clamp_notes)
        desired, behavior_notes = behavior.apply(
            rules, current, recommended, history, memory.scale_events, now, needed.panic
        )
        notes.extend(behavior_notes)
        # minReplicas and maxReplicas are hard bounds, above any rate policy (as in the HPA).
        desired = min(max(desired, spec.min_replicas), spec.max_replicas)
        horizon = rules.horizon
        # The entries are kept as they are: a pool carries one per tick of its horizon.
        history = (*[e for e in history if now - e[0] < horizon], (now, recommended))
    grow_to = None
    if needed is not None and needed.lasting_replicas is not None:
        grow_to = max(_clamp(spec, needed.lasting_replicas)[0], current)
    return Sized(
        key,
        spec,
        observation,
        memory,
        options,
        lead,
        rules,
        rate,
        service_memory,
        bursts,
        needed,
        notes,
        history,
        forecast,
        recommended,
        desired,
        grow_to,
        facts.dry_run,
        current,
    )


def _planned_watts(
    spec: ServingPoolSpec, draw: PoolDraw, placements: Mapping[NodePoolKey, int], ledger: Ledger
) -> float:
    """What the pool's placed GPUs draw while busy."""
    slots = ledger.slots
    if not draw:  # the nameplate of each node pool: most pools, every tick
        gpus = sum(count * slots[k].spec.watts_per_gpu for k, count in placements.items())
        return float(gpus * spec.gpus_per_replica)
    return sum(
        count * spec.gpus_per_replica * gpu_watts(draw, slots[k].spec)
        for k, count in placements.items()
    )


def pool_placer(sized: Sized, ledger: Ledger, progress: Progress) -> Placer:
    spec, observation = sized.spec, sized.observation
    measured = pool_draw(spec, observation.watts_per_gpu)
    if sized.dry_run:
        # Reality is what runs: hold it in the ledger, report what would be done.
        want, grow_to = sized.current, None
    else:
        want, grow_to = sized.desired, sized.grow_to
    return Placer(
        ledger,
        spec,
        want,
        observation.replicas,
        sized.options,
        progress,
        grow_to,
        measured,
        sized.key.namespace,
    )


def finish_pool(
    sized: Sized, placer: Placer, ledger: Ledger, now: float
) -> tuple[PoolPlan, PoolMemory]:
    spec, observation, options, memory = sized.spec, sized.observation, sized.options, sized.memory
    current, dry_run, needed, rules = sized.current, sized.dry_run, sized.needed, sized.rules
    factor = sized.rate.used / sized.rate.declared if sized.rate is not None else 1.0
    notes, history = sized.notes, sized.history
    placement = placer.result()
    if dry_run:
        notes.append(
            Note(Reason.DRY_RUN, f"DryRun: would scale to {sized.desired}, actuating nothing")
        )
        final = sized.desired
    else:
        final = sum(placement.placements.values())
        if placement.held:
            notes.append(
                Note(
                    Reason.BACKLOG_CLEARS_BEFORE_BOOT,
                    f"{placement.held} replicas for the backlog run only on existing nodes: "
                    f"it clears before new capacity ({sized.lead:.0f}s away) could serve",
                )
            )
    notes.extend(placement.notes)
    if (options.blocked or options.denied) and observation.replicas:
        outside = _outside_data_policy(observation, options)
        if outside is not None:
            notes.append(outside)

    events = memory.scale_events
    last_scale = memory.last_scale_time
    if not dry_run and final != current:
        notes.insert(
            0,
            Note(
                _SCALED_UP if final > current else _SCALED_DOWN,
                f"{current} -> {final} replicas",
            ),
        )
        horizon = rules.horizon
        events = (*[e for e in events if now - e[0] < horizon], (now, final - current))
        last_scale = now
    elif not notes:
        notes.append(Note(_STEADY, f"{current} replicas meet demand"))
    throttled = None
    if not dry_run and needed is not None:
        short = placement.unplaced > 0 or _LIMITED_BY_MAX in [n.reason for n in notes]
        ready = observation.ready_replicas
        if short or (ready is not None and ready < final):  # else plan_throttle has nothing
            throttled, note = plan_throttle(
                spec,
                final,
                short,
                ready,
                observation.arrival_rate,
                observation.tier_rates,
                factor,
            )
            if note is not None:
                notes.append(note)
    measured = placer.draw
    placements = placement.placements
    watts = _planned_watts(spec, measured, placements, ledger) if placements else 0
    plan = PoolPlan(
        key=sized.key,
        desired_replicas=final,
        current_replicas=current,
        # The placement's own dict, not a copy: nothing else holds it.
        placements=MappingProxyType(placements) if placements else _NONE,
        recommended_replicas=sized.recommended,
        unplaced_replicas=placement.unplaced if not dry_run else 0,
        burst_replicas=placement.burst,
        planned_watts=float(watts),
        metrics_available=needed is not None,
        notes=tuple(notes),
        throttle=throttled,
        preempted=frozen_map(placement.preempted) if placement.preempted and not dry_run else _NONE,
        service=sized.rate,
        power=power_figures(measured, options.power_kinds) if measured else options.nameplate,
    )
    return plan, PoolMemory(
        history, events, sized.forecast, last_scale, sized.service_memory, sized.bursts
    )

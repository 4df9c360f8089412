"""plan_fleet: one pass from specs and a snapshot to replicas, nodes and power per budget."""

from __future__ import annotations

import math
from collections.abc import Mapping

from gpufleet.api.pool import Mode, ServingPoolSpec
from gpufleet.planner import behavior
from gpufleet.planner.bursts import BurstMemory, recurring_queue
from gpufleet.planner.bursts import observe as observe_bursts
from gpufleet.planner.catalogs import catalog_of, signature_of
from gpufleet.planner.demand import demand
from gpufleet.planner.ledger import Ledger, Slot
from gpufleet.planner.nodes import (
    node_plans,
    recent_needs,
    record_needs,
    update_backoffs,
)
from gpufleet.planner.placement import Candidates, Progress, candidates, place
from gpufleet.planner.power import (
    allowed_watts,
    busy_watts,
    cap_in_force,
    covers,
    gpu_watts,
    measured_watts,
    node_watts,
)
from gpufleet.planner.rates import learn_service
from gpufleet.planner.spares import add_spares
from gpufleet.planner.throttle import plan_throttle
from gpufleet.planner.types import (
    Backoff,
    BudgetPlan,
    Fleet,
    FleetPlan,
    NodePoolKey,
    Note,
    PlannerState,
    PoolKey,
    PoolMemory,
    PoolObservation,
    PoolPlan,
    Reason,
    Settings,
    Snapshot,
    frozen_map,
)

_NO_METRICS = PoolObservation(queue_depth=None)
_NONE: Mapping[NodePoolKey, int] = frozen_map()


def _open_ledger(
    fleet: Fleet,
    snapshot: Snapshot,
    backoffs: Mapping[NodePoolKey, Backoff],
    kept: Mapping[NodePoolKey, int],
    now: float,
) -> tuple[Ledger, list[str], list[tuple[float, str | None]]]:
    budget_names = sorted(fleet.budgets)
    caps = [cap_in_force(fleet.budgets[name], now) for name in budget_names]
    budgets = [fleet.budgets[name] for name in budget_names]
    # Most budgets name sites: look them up by site instead of testing every budget.
    everywhere = [i for i, b in enumerate(budgets) if not b.scope.sites]
    by_site: dict[str, list[int]] = {}
    for i, b in enumerate(budgets):
        for site in b.scope.sites:
            by_site.setdefault(site, list(everywhere)).append(i)
    for site_list in by_site.values():
        site_list.sort()
    slots: dict[NodePoolKey, Slot] = {}
    for provider_name in sorted(fleet.providers):
        provider = fleet.providers[provider_name]
        held = provider_name in snapshot.unreachable_providers
        for node_pool in provider.node_pools:
            key = NodePoolKey(provider_name, node_pool.name)
            observed = snapshot.node_pools.get(key)
            ready = observed.ready_nodes if observed else 0
            target = observed.target_nodes if observed else 0
            in_backoff = key in backoffs and now < backoffs[key].until
            covering = tuple(
                i
                for i in by_site.get(node_pool.site, everywhere)
                if covers(budgets[i], key, node_pool)
            )
            slots[key] = slot = Slot(
                key=key,
                spec=node_pool,
                provider=provider,
                budgets=covering,
                # Nodes asked for but failing with a capacity error will not come: count ready.
                existing_nodes=ready if in_backoff else max(target, ready),
                node_limit=min(node_pool.max_nodes, max(ready, node_pool.min_nodes))
                if in_backoff
                else node_pool.max_nodes,
                backoff=in_backoff,
                held=held,
                floor=node_pool.min_nodes,
            )
            if key in kept:
                slot.kept = min(kept[key], slot.existing_nodes)
                slot.floor = max(slot.floor, slot.kept)
    ledger = Ledger(
        slots=slots,
        quota={name: p.gpu_quota for name, p in fleet.providers.items()},
        budget_used=[0.0] * len(budget_names),
        budget_allowed=[
            allowed_watts(fleet.budgets[n], cap)
            for n, (cap, _) in zip(budget_names, caps, strict=True)
        ],
    )
    ledger.open()
    _calibrate(ledger, fleet, snapshot, budget_names)
    return ledger, budget_names, caps


def _calibrate(ledger: Ledger, fleet: Fleet, snapshot: Snapshot, budget_names: list[str]) -> None:
    """Add what a measurement shows above our estimate of the present (other loads in scope)."""
    if all(snapshot.budget_watts.get(name) is None for name in budget_names):
        return
    busy: dict[NodePoolKey, float] = {}
    for key, observation in snapshot.pools.items():
        spec = fleet.pools.get(key)
        if spec is None:
            continue
        drawn = measured_watts(spec)
        for node_pool_key, replicas in observation.replicas.items():
            slot = ledger.slots.get(node_pool_key)
            if slot is None:
                continue
            busy[node_pool_key] = busy.get(node_pool_key, 0.0) + (
                replicas * spec.gpus_per_replica * busy_watts(drawn, slot.spec)
            )
    for index, name in enumerate(budget_names):
        measured = snapshot.budget_watts.get(name)
        if measured is None:
            continue
        estimate = 0.0
        for slot in ledger.slots.values():
            if index in slot.budgets:
                observed = snapshot.node_pools.get(slot.key)
                nodes = observed.target_nodes if observed else 0
                estimate += nodes * node_watts(slot.spec) + busy.get(slot.key, 0.0)
        ledger.budget_used[index] += max(0.0, measured - estimate)


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


def _lead_seconds(spec: ServingPoolSpec, options: Candidates, ledger: Ledger) -> float:
    for key in options.grow:
        slot = ledger.slots.get(key)
        if slot is not None and not slot.held:
            return float(slot.spec.boot_seconds + spec.model_load_seconds)
    return float(spec.model_load_seconds)


def _outside_data_policy(observation: PoolObservation, options: Candidates) -> Note | None:
    """Replicas the scheduler put on nodes of a provider the data policy refuses. The plan
    never places them there, but the pods are the user's: only their node affinity keeps
    them off, so the pool reports them instead of silently counting them."""
    if not options.refused:
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


def _plan_pool(
    key: PoolKey,
    spec: ServingPoolSpec,
    observation: PoolObservation,
    memory: PoolMemory,
    options: Candidates,
    progress: Progress,
    ledger: Ledger,
    now: float,
    settings: Settings,
) -> tuple[PoolPlan, PoolMemory]:
    current = observation.total_replicas
    rules = behavior.resolve(spec.behavior)
    lead = _lead_seconds(spec, options, ledger)
    service_memory, rate = learn_service(spec, observation, memory.service, ledger, now)
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
            rules, current, recommended, history, memory.scale_events, now
        )
        notes.extend(behavior_notes)
        # minReplicas and maxReplicas are hard bounds, above any rate policy (as in the HPA).
        desired = min(max(desired, spec.min_replicas), spec.max_replicas)
        horizon = rules.horizon
        history = (*[(t, v) for t, v in history if now - t < horizon], (now, recommended))

    dry_run = spec.mode == Mode.DRY_RUN
    measured = measured_watts(spec)
    if dry_run:
        # Reality is what runs: hold it in the ledger, report what would be done.
        placement = place(
            ledger, spec, current, observation.replicas, options, progress, None, measured
        )
        notes.append(Note(Reason.DRY_RUN, f"DryRun: would scale to {desired}, actuating nothing"))
        final = desired
    else:
        grow_to = None
        if needed is not None and needed.lasting_replicas is not None:
            grow_to = max(_clamp(spec, needed.lasting_replicas)[0], current)
        placement = place(
            ledger, spec, desired, observation.replicas, options, progress, grow_to, measured
        )
        final = sum(placement.placements.values())
        if placement.held:
            notes.append(
                Note(
                    Reason.BACKLOG_CLEARS_BEFORE_BOOT,
                    f"{placement.held} replicas for the backlog run only on existing nodes: "
                    f"it clears before new capacity ({lead:.0f}s away) could serve",
                )
            )
    notes.extend(placement.notes)
    if options.blocked:
        outside = _outside_data_policy(observation, options)
        if outside is not None:
            notes.append(outside)

    events = memory.scale_events
    last_scale = memory.last_scale_time
    if not dry_run and final != current:
        notes.insert(
            0,
            Note(
                Reason.SCALED_UP if final > current else Reason.SCALED_DOWN,
                f"{current} -> {final} replicas",
            ),
        )
        horizon = rules.horizon
        events = (*[(t, d) for t, d in events if now - t < horizon], (now, final - current))
        last_scale = now
    elif not notes:
        notes.append(Note(Reason.STEADY, f"{current} replicas meet demand"))
    throttled = None
    if not dry_run and needed is not None:
        short = placement.unplaced > 0 or any(n.reason == Reason.LIMITED_BY_MAX for n in notes)
        throttled, note = plan_throttle(
            spec,
            final,
            short,
            observation.ready_replicas,
            observation.arrival_rate,
            observation.tier_rates,
            factor,
        )
        if note is not None:
            notes.append(note)
    watts = sum(
        count * spec.gpus_per_replica * gpu_watts(measured, ledger.slots[k].spec)
        for k, count in placement.placements.items()
    )
    plan = PoolPlan(
        key=key,
        desired_replicas=final,
        current_replicas=current,
        placements=frozen_map(placement.placements),
        recommended_replicas=recommended,
        unplaced_replicas=placement.unplaced if not dry_run else 0,
        burst_replicas=placement.burst,
        planned_watts=float(watts),
        metrics_available=needed is not None,
        notes=tuple(notes),
        throttle=throttled,
        preempted=frozen_map(placement.preempted) if placement.preempted and not dry_run else _NONE,
        service=rate,
    )
    return plan, PoolMemory(history, events, forecast, last_scale, service_memory, bursts)


def _budget_plans(
    fleet: Fleet,
    snapshot: Snapshot,
    ledger: Ledger,
    names: list[str],
    caps: list[tuple[float, str | None]],
) -> dict[str, BudgetPlan]:
    plans = {}
    for index, name in enumerate(names):
        cap, window = caps[index]
        measured = snapshot.budget_watts.get(name)
        notes: list[Note] = []
        if fleet.budgets[name].measurement.type.value == "Prometheus" and measured is None:
            notes.append(
                Note(Reason.MEASUREMENT_UNAVAILABLE, "power query unavailable: using the estimate")
            )
        if index in ledger.capped:
            notes.append(
                Note(
                    Reason.CAP_REACHED,
                    f"plan held at {ledger.budget_used[index]:.0f} W of "
                    f"{ledger.budget_allowed[index]:.0f} W allowed",
                )
            )
        plans[name] = BudgetPlan(
            name=name,
            cap_watts=cap,
            allowed_watts=ledger.budget_allowed[index],
            planned_watts=ledger.budget_used[index],
            measured_watts=measured,
            active_window=window,
            notes=tuple(notes),
        )
    return plans


def plan_fleet(
    fleet: Fleet,
    snapshot: Snapshot,
    state: PlannerState,
    now: float,
    settings: Settings | None = None,
) -> FleetPlan:
    """Decide replicas per pool and node pool, and nodes per node pool, for this tick."""
    settings = settings or Settings()
    backoffs = update_backoffs(state.backoffs, snapshot, now, settings)
    catalog = catalog_of(fleet.providers)
    delays = catalog.delays
    needs = recent_needs(state.node_needs, delays, now)
    kept = {key: entries[0][1] for key, entries in needs.items()}
    ledger, budget_names, caps = _open_ledger(fleet, snapshot, backoffs, kept, now)
    order = sorted(fleet.pools, key=lambda k: (-fleet.pools[k].priority, k.namespace, k.name))
    cache: dict[tuple[object, ...], tuple[Candidates, Progress]] = {}
    pool_plans: dict[PoolKey, PoolPlan] = {}
    memories: dict[PoolKey, PoolMemory] = {}
    options_of: dict[PoolKey, Candidates] = {}
    for key in order:
        spec = fleet.pools[key]
        signature = signature_of(spec)
        if signature not in cache:
            options = catalog.memo.get(signature)
            if options is None:
                options = catalog.memo[signature] = candidates(spec, catalog)
            cache[signature] = (options, Progress(options))
        options, progress = cache[signature]
        plan, memory = _plan_pool(
            key,
            spec,
            snapshot.pools.get(key, _NO_METRICS),
            state.pools.get(key, PoolMemory()),
            options,
            progress,
            ledger,
            now,
            settings,
        )
        pool_plans[key] = plan
        memories[key] = memory
        options_of[key] = options
    needs = record_needs(needs, ledger, delays, now)  # demand only: spares come next
    add_spares(order, fleet.pools, options_of, pool_plans, ledger)
    return FleetPlan(
        pools=frozen_map(pool_plans),
        node_pools=frozen_map(node_plans(ledger, snapshot, needs)),
        budgets=frozen_map(_budget_plans(fleet, snapshot, ledger, budget_names, caps)),
        state=PlannerState(
            pools=frozen_map(memories),
            backoffs=frozen_map(backoffs),
            node_needs=frozen_map(needs),
        ),
    )

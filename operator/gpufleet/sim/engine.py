"""The time-stepped run: arrivals, service, power and metrics each step; scrapes and
reconciles on their own periods. One policy per run, everything else identical.

Pools share node pools and power budgets. Energy is attributed to pools each step, per node
pool: each pool's busy watts (above idle) are its own; the node pool's idle and overhead
watts are split by the GPUs each pool holds there (loading or ready replicas), so idle GPUs
are shared in proportion; nodes no pool holds (booting, or emptied) are split equally
between the pools that may run on them. So every joule of a node pool some pool may use is
attributed, and Wh per served request includes each pool's share of idle GPUs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gpufleet.api import Role
from gpufleet.planner.types import NodePoolKey, NodePoolObservation, PoolKey, frozen_map
from gpufleet.sim import data
from gpufleet.sim.cluster import Cluster
from gpufleet.sim.gateway import Gateway
from gpufleet.sim.metrics import PoolResult, RunResult
from gpufleet.sim.policy import Context, Decision, Policy, Scrape, View
from gpufleet.sim.power import caps_by_step, in_scope, node_watts
from gpufleet.sim.queue import FluidQueue, WaitHistogram
from gpufleet.sim.scenario import Scenario
from gpufleet.sim.trace import Demand, apply, load

RATE_WINDOW = 60.0  # arrivals/s is read as rate(requests_total[1m])
SERIES_EVERY = 60.0
DEFAULT_SLO = 10.0
WINDOW_SECONDS = 3600.0  # SLO attainment is also kept per hour of arrivals


@dataclass
class Prepared:
    """A scenario with its traces loaded, shared by every policy of a run."""

    scenario: Scenario
    demand: dict[PoolKey, Demand]
    profiles: dict[PoolKey, str]
    steps: int
    start_epoch: float


def prepare(scenario: Scenario, traces_dir: object = None) -> Prepared:
    from pathlib import Path

    tdir = Path(str(traces_dir)) if traces_dir is not None else None
    demand: dict[PoolKey, Demand] = {}
    epoch = scenario.start_epoch
    for i, w in enumerate(scenario.workloads):
        raw = load(w.trace, tdir, scenario.base, scenario.step, scenario.seed + i)
        demand[w.pool] = apply(raw, w.modifiers, scenario.duration)
        if epoch is None and raw.start_epoch:
            epoch = raw.start_epoch
    steps = max(len(d.counts) for d in demand.values())
    for key, d in demand.items():
        pad = steps - len(d.counts)
        demand[key] = Demand(np.pad(d.counts, (0, pad)), np.pad(d.work, (0, pad)), d.step)
    return Prepared(
        scenario, demand, {w.pool: w.profile for w in scenario.workloads}, steps, epoch or 0.0
    )


def _context(p: Prepared, cluster: Cluster, queues: dict[PoolKey, FluidQueue]) -> Context:
    fleet, wl = p.scenario.fleet, data.workloads()
    rates: dict[PoolKey, dict[NodePoolKey, float]] = {}
    watts: dict[PoolKey, dict[NodePoolKey, float]] = {}
    mean_work: dict[PoolKey, float] = {}
    for pool, spec in fleet.pools.items():
        prof = wl.get(p.profiles.get(pool, ""))
        rates[pool], watts[pool] = {}, {}
        d = p.demand.get(pool)
        total = float(d.counts.sum()) if d is not None else 0.0
        mean_work[pool] = float(d.work.sum()) / total if d is not None and total else 1.0
        for key, n in cluster.nodes.items():
            if n.spec.gpu_type not in spec.gpu_types:
                continue
            g = prof.gpus.get(n.spec.gpu_type) if prof else None
            if g is not None:  # measured: one GPU's rate, replicas of k GPUs serve k times it
                rates[pool][key] = g.units_per_second * spec.gpus_per_replica
                watts[pool][key] = g.loaded_watts
                continue
            declared = {r.gpu_type: r.requests_per_minute for r in spec.service_rates}
            if n.spec.gpu_type in declared:  # not measured: the pool's declared rate
                rates[pool][key] = declared[n.spec.gpu_type] / 60.0 * mean_work[pool]
                watts[pool][key] = float(n.spec.watts_per_gpu)

    return Context(
        fleet,
        frozen_map(rates),
        frozen_map(mean_work),
        frozen_map(watts),
        frozen_map(p.demand),
        tuple(p.scenario.failures),
        data.model_load_seconds(),
        p.scenario.step,
        p.start_epoch,
        cluster,
        queues,
    )


def _apply(cluster: Cluster, d: Decision, t: float, warm: bool = False) -> None:
    # Nodes first so that replicas of the same decision can schedule on warm nodes
    for key, target in d.nodes.items():
        cluster.set_nodes(key, max(0, target), t, warm)
    for pool, drains in d.preempt.items():
        for key, count in drains.items():
            cluster.preempt(pool, key, count, d.replicas.get(pool, {}).get(key, 0), t)
    for pool, targets in d.replicas.items():
        for key, target in targets.items():
            cluster.set_replicas(pool, key, max(0, target), t, warm)


def run(p: Prepared, policy: Policy, progress: Callable[[float], None] | None = None) -> RunResult:
    sc, fleet, step = p.scenario, p.scenario.fleet, p.scenario.step
    cluster = Cluster(fleet, sc.failures, data.model_load_seconds(), sc.seed)
    cluster.epoch0 = p.start_epoch
    pools = list(fleet.pools)
    slos = {
        k: float(slo.queue_wait_seconds) if (slo := fleet.pools[k].slo) else DEFAULT_SLO
        for k in pools
    }
    gateway = Gateway(fleet, step)
    queues = {
        k: FluidQueue(step, len(gateway.tiers.get(k, [])), slos[k], WINDOW_SECONDS) for k in pools
    }
    ctx = _context(p, cluster, queues)
    policy.setup(ctx)
    result = RunResult(policy.name, sc.name, p.steps * step)
    for k in pools:
        result.pools[str(k)] = PoolResult(slos[k], WaitHistogram(step))
    # Node pools each pool may run on: who shares the energy of nodes no pool holds
    eligible: dict[NodePoolKey, list[PoolKey]] = {}
    for k in pools:
        for key in ctx.rates[k]:
            eligible.setdefault(key, []).append(k)
    counts = {k: p.demand[k].counts if k in p.demand else np.zeros(p.steps) for k in pools}
    works = {k: p.demand[k].work if k in p.demand else np.zeros(p.steps) for k in pools}
    cum = {k: np.concatenate(([0.0], np.cumsum(counts[k]))) for k in pools}
    secondary = {k for k, n in cluster.nodes.items() if n.provider.role == Role.SECONDARY}
    # Per pool: the node pools it can run on, with rate and extra watts per busy replica
    serving = {
        k: [
            (key, ctx.rates[k][key], ctx.loaded_watts[k][key], fleet.pools[k].gpus_per_replica)
            for key in ctx.rates[k]
        ]
        for k in pools
    }
    budgets = {name: (b, in_scope(fleet, b)) for name, b in fleet.budgets.items()}
    over = dict.fromkeys(budgets, 0.0)
    scrape_every = max(1, round(sc.scrape_seconds / step))
    period = max(1, round(policy.period / step))
    series_every = max(1, round(SERIES_EVERY / step))
    rate_steps = max(1, round(RATE_WINDOW / step))
    cap_steps = {
        name: caps_by_step(b, p.start_epoch, p.steps, step) for name, (b, _) in budgets.items()
    }
    caps = {name: c[0] if c else 0.0 for name, c in cap_steps.items()}
    watts_now = dict.fromkeys(budgets, 0.0)
    last_scrape = Scrape(0.0, {}, {}, {})
    gpu_s = cost = energy = peak = 0.0
    t0 = time.perf_counter()

    def view(i: int) -> View:
        reps = {k: {key: r.total for key, r in cluster.replicas[k].items()} for k in pools}
        nps = {
            key: NodePoolObservation(n.ready, n.total, n.last_error)
            for key, n in cluster.nodes.items()
        }
        bound = {
            k: {key: r.total - r.pending for key, r in cluster.replicas[k].items()} for k in pools
        }
        return View(
            i * step,
            p.start_epoch + i * step,
            last_scrape,
            reps,
            bound,
            {k: cluster.pending(k) for k in pools},
            nps,
            {k: sum(r.ready for r in cluster.replicas[k].values()) for k in pools},
        )

    # Warm start: the fleet ran before the trace began, so the first decision is in place
    first = {
        k: float(cum[k][min(rate_steps, p.steps)]) / (min(rate_steps, p.steps) * step)
        for k in pools
    }
    last_scrape = Scrape(
        0.0,
        dict.fromkeys(pools, 0.0),
        first,
        {},
        {k: gateway.tier_rates(k, first[k]) for k in pools},
    )
    decision = policy.decide(view(0))
    gateway.publish(decision.throttles)
    _apply(cluster, decision, 0.0, warm=True)
    cluster.node_actions = cluster.replica_actions = 0

    for i in range(p.steps):
        t = i * step
        cluster.advance(t)
        if i % scrape_every == 0:
            lo = max(0, i - rate_steps)
            rates = {
                k: float(cum[k][i] - cum[k][lo]) / ((i - lo) * step) if i > lo else first[k]
                for k in pools
            }
            last_scrape = Scrape(
                t,
                {k: queues[k].depth for k in pools},
                rates,
                dict(watts_now),
                {k: gateway.tier_rates(k, rates[k]) for k in pools},
            )
        if i % period == 0 and i > 0:
            decision = policy.decide(view(i))
            gateway.publish(decision.throttles)
            _apply(cluster, decision, t)
            cluster.advance(t)
        # Serve: each pool's ready replicas give capacity; busy share sets the watts
        extra: dict[NodePoolKey, float] = {}
        busy: dict[tuple[PoolKey, NodePoolKey], float] = {}
        cap_by_np: dict[NodePoolKey, float] = {}
        for k in pools:
            q = queues[k]
            q.push(i, *gateway.admit(k, float(counts[k][i]), float(works[k][i])))
            cap = 0.0
            for key, rate, _, _ in serving[k]:
                c = cluster.replicas[k][key].ready * rate * step
                cap_by_np[key] = cap_by_np.get(key, 0.0) + c
                cap += c
            if cap <= 0:
                continue
            served = q.serve(i, cap) if q.cohorts else 0.0
            util = served / cap
            pr = result.pools[str(k)]
            pr.served_work += served
            for key, rate, loaded, gpr in serving[k]:
                ready = cluster.replicas[k][key].ready
                if ready:
                    idle = cluster.nodes[key].spec.idle_watts_per_gpu
                    w = ready * gpr * (loaded - idle) * util
                    extra[key] = extra.get(key, 0.0) + w
                    busy[k, key] = w
                    if key in secondary:
                        pr.burst_work += served * ready * rate * step / cap
        # Nodes draw idle watts per GPU and their overhead from the boot request on
        fleet_w = 0.0
        np_watts: dict[NodePoolKey, float] = {}
        for key, n in cluster.nodes.items():
            total = n.total
            if not total:
                continue
            s = n.spec
            w = node_watts(s, total, extra.get(key, 0.0))
            np_watts[key] = w
            fleet_w += w
            _attribute(result, key, w - extra.get(key, 0.0), busy, cluster, eligible, step)
            gpu_s += total * s.gpus_per_node * step
            cost += total * s.hourly_price_cents * step / 3600.0
        energy += fleet_w * step
        peak = max(peak, fleet_w)
        caps = {name: c[i] for name, c in cap_steps.items()}
        for name, (_, scope) in budgets.items():
            w = sum(np_watts.get(key, 0.0) for key in scope)
            watts_now[name] = w
            if w > caps[name]:
                over[name] += (w - caps[name]) * step
        if i % series_every == 0:
            _sample(
                result,
                i,
                step,
                pools,
                cum,
                queues,
                cluster,
                cap_by_np,
                ctx,
                watts_now,
                caps,
                series_every,
            )
            if progress is not None:
                progress(i / p.steps)
    for k in pools:
        q, pr = queues[k], result.pools[str(k)]
        q.drain_unserved(p.steps)
        pr.waits, pr.served_requests, pr.windows = q.waits, q.served, q.windows
        for name, hist in zip(gateway.tiers.get(k, []), q.tier_waits, strict=True):
            gateway.results[k][name].waits = hist
        pr.tiers = gateway.results.get(k, {})
    result.wall_seconds = time.perf_counter() - t0
    result.gpu_seconds, result.cost_cents, result.energy_joules = gpu_s, cost, energy
    result.peak_watts, result.over_cap_watt_seconds = peak, over
    result.scale_actions = cluster.node_actions + cluster.replica_actions
    if progress is not None:
        progress(1.0)
    return result


def _attribute(
    result: RunResult,
    key: NodePoolKey,
    base_watts: float,
    busy: dict[tuple[PoolKey, NodePoolKey], float],
    cluster: Cluster,
    eligible: dict[NodePoolKey, list[PoolKey]],
    step: float,
) -> None:
    """One node pool's energy this step, to pools (see the module's docstring)."""
    held: dict[PoolKey, float] = {}
    for k in eligible.get(key, []):
        r = cluster.replicas[k][key]
        gpus = (len(r.loading) + r.ready) * cluster.fleet.pools[k].gpus_per_replica
        if gpus:
            held[k] = float(gpus)
        w = busy.get((k, key), 0.0)
        if w:
            result.pools[str(k)].energy_joules += w * step
    if not held:
        held = dict.fromkeys(eligible.get(key, []), 1.0)
    total = sum(held.values())
    for k, g in held.items():
        result.pools[str(k)].energy_joules += base_watts * step * g / total


def _sample(
    result: RunResult,
    i: int,
    step: float,
    pools: list[PoolKey],
    cum: dict[PoolKey, np.ndarray],
    queues: dict[PoolKey, FluidQueue],
    cluster: Cluster,
    cap_by_np: dict[NodePoolKey, float],
    ctx: Context,
    watts: dict[str, float],
    caps: dict[str, float],
    every: int,
) -> None:
    s = result.series
    s.t.append(i * step)
    lo = max(0, i - every)
    for k in pools:
        rate = float(cum[k][i] - cum[k][lo]) / ((i - lo) * step) if i > lo else 0.0
        s.demand_rps.setdefault(str(k), []).append(rate)
        q = queues[k]
        s.head_wait.setdefault(str(k), []).append(
            (i - q.cohorts[0][0]) * step if q.cohorts else 0.0
        )
    by_provider: dict[str, float] = {}
    for k in pools:  # capacity in requests/s, at the trace's mean work per request
        for key, rate, _, _ in [(key, r, 0.0, 0) for key, r in ctx.rates[k].items()]:
            ready = cluster.replicas[k][key].ready
            by_provider[key.provider] = (
                by_provider.get(key.provider, 0.0) + ready * rate / ctx.mean_work[k]
            )
    for prov in {key.provider for key in cluster.nodes}:
        s.capacity_rps.setdefault(prov, []).append(by_provider.get(prov, 0.0))
    for name, w in watts.items():
        s.budget_kw.setdefault(name, []).append(w / 1000.0)
        s.cap_kw.setdefault(name, []).append(caps[name] / 1000.0)

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

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gpufleet.api import Role
from gpufleet.planner.types import NodePoolKey, NodePoolObservation, PoolKey, frozen_map
from gpufleet.sim import data
from gpufleet.sim.cluster import Cluster
from gpufleet.sim.gateway import Gateway
from gpufleet.sim.goals import quickest_lead
from gpufleet.sim.metrics import PoolResult, RunResult
from gpufleet.sim.policies.allowance import late_requests, served
from gpufleet.sim.policies.envelope import FloatArray, least_service
from gpufleet.sim.policies.placement import nodes_for, start_state
from gpufleet.sim.policies.sizing import pool_slo
from gpufleet.sim.policy import Context, Decision, Policy, Scrape, View
from gpufleet.sim.power import DRAW_WINDOW, PeakDraw, caps_by_step, in_scope, node_watts
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
        work = float(d.work.sum()) if d is not None else 0.0
        # No work at all (a trace of zeros): any mean serves it, and 0 would divide by zero
        mean_work[pool] = work / total if total and work > 0 else 1.0
        given = pool in p.scenario.service_rates  # the run's rate wins over a measured one
        declared = {r.gpu_type: r.requests_per_minute for r in spec.service_rates}
        for key, n in cluster.nodes.items():
            if n.spec.gpu_type not in spec.gpu_types:
                continue
            g = prof.gpus.get(n.spec.gpu_type) if prof else None
            if g is not None and not given:  # measured: replicas of k GPUs serve k times it
                rates[pool][key] = g.units_per_second * spec.gpus_per_replica
            elif n.spec.gpu_type in declared:  # requests a minute, at the trace's mean work
                rates[pool][key] = declared[n.spec.gpu_type] / 60.0 * mean_work[pool]
            else:
                continue
            watts[pool][key] = g.loaded_watts if g is not None else float(n.spec.watts_per_gpu)

    ctx = Context(
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
    return dataclasses.replace(ctx, start=frozen_map(start_state(ctx, first_work(p))))


def first_work(p: Prepared) -> dict[PoolKey, float]:
    """Each pool's work units/s that capacity asked for before the run began must serve,
    since no policy can change it sooner: the least constant rate that starts the pool's
    target share of the requests arriving within the first lead time (the quickest boot of
    its GPU types plus its model load, and a minute at least) within its SLO, as the
    oracle plans for the target. A minute's average would start a pool whose arrivals
    come in clumps short under every policy, the oracle included; sizing for every request
    would start them all with capacity the oracle does not need."""
    step, fleet = p.scenario.step, p.scenario.fleet
    window = max(1, min(round(RATE_WINDOW / step), p.steps))
    out: dict[PoolKey, float] = {}
    for pool, d in p.demand.items():
        lead = quickest_lead(fleet, pool) or 0.0
        deadline, target = pool_slo(fleet.pools[pool], step)
        steps = min(p.steps, max(window, math.ceil(lead / step - 1e-9)))
        counts = np.asarray(d.counts[:steps], dtype=np.float64)
        work = np.asarray(d.work[:steps], dtype=np.float64)
        out[pool] = _least_rate(counts, work, deadline, target) / step
    return out


def _least_rate(counts: FloatArray, work: FloatArray, deadline: int, target: float) -> float:
    """The least constant capacity (work units a step) whose FIFO queue starts at least
    `target` of the requests within `deadline` steps, to a thousandth of the peak that
    starts them all (`envelope.least_service`)."""
    high = float(least_service(work, deadline).max(initial=0.0))
    allowed = (1.0 - target) * float(counts.sum())
    low = 0.0
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        done = served(work, np.full(len(work), mid))
        if late_requests(counts, work, done, deadline) <= allowed:
            high = mid
        else:
            low = mid
    return high


def first_rates(p: Prepared) -> dict[PoolKey, float]:
    """Each pool's arrivals/s over the run's first minute (as rate()[1m] reads it then)."""
    window = max(1, min(round(RATE_WINDOW / p.scenario.step), p.steps))
    return {
        pool: float(d.counts[:window].sum()) / (window * p.scenario.step)
        for pool, d in p.demand.items()
    }


def _apply(cluster: Cluster, d: Decision, t: float, warm: bool = False) -> None:
    # Node scale-ups first, so that replicas of the same decision can schedule on warm
    # nodes; scale-downs last, so that the replicas the decision removes go before a
    # shrinking node pool evicts any it keeps
    for key, target in d.nodes.items():
        if target >= cluster.nodes[key].total:
            cluster.set_nodes(key, max(0, target), t, warm)
    for pool, drains in d.preempt.items():
        for key, count in drains.items():
            cluster.preempt(pool, key, count, d.replicas.get(pool, {}).get(key, 0), t)
    for pool, victims in d.evict.items():
        for key, count in victims.items():
            cluster.evict(pool, key, count, t)
    for pool, targets in d.replicas.items():
        for key, target in targets.items():
            cluster.set_replicas(pool, key, max(0, target), t, warm)
    for key, target in d.nodes.items():
        if target < cluster.nodes[key].total:
            cluster.set_nodes(key, max(0, target), t, warm)


def run(p: Prepared, policy: Policy, progress: Callable[[float], None] | None = None) -> RunResult:
    """Replay `p` under `policy`: each step, what was scraped and decided, then service,
    power and the published series, in that order (docs/planning.md, the simulator)."""
    replay = _Replay(p, policy)
    replay.start_warm()
    for i in range(p.steps):
        replay.cluster.advance(i * replay.step)
        if i % replay.scrape_every == 0:
            replay.scrape(i)
        if i % replay.period == 0:
            replay.reconcile(i)
        served = replay.serve(i)
        replay.draw_power(i, served)
        if i % replay.series_every == 0:
            replay.record_series(i, served)
            if progress is not None:
                progress(i / p.steps)
    result = replay.finish()
    if progress is not None:
        progress(1.0)
    return result


@dataclass
class _Served:
    """One step's service: busy watts above idle per node pool and per (pool, node pool),
    and the capacity each node pool offered."""

    extra: dict[NodePoolKey, float]
    busy: dict[tuple[PoolKey, NodePoolKey], float]
    capacity: dict[NodePoolKey, float]


class _Replay:
    """The state of one run: the simulated cluster, queues and gateway, what Prometheus last
    scraped, and the running totals of the result."""

    def __init__(self, p: Prepared, policy: Policy) -> None:
        sc, fleet = p.scenario, p.scenario.fleet
        self.p, self.policy, self.step = p, policy, sc.step
        self.cluster = Cluster(fleet, sc.failures, data.model_load_seconds(), sc.seed)
        self.cluster.epoch0 = p.start_epoch
        self.pools = pools = list(fleet.pools)
        slos = {
            k: float(slo.queue_wait_seconds) if (slo := fleet.pools[k].slo) else DEFAULT_SLO
            for k in pools
        }
        self.gateway = Gateway(fleet, self.step)
        self.queues = {
            k: FluidQueue(self.step, len(self.gateway.tiers.get(k, [])), slos[k], WINDOW_SECONDS)
            for k in pools
        }
        self.ctx = ctx = _context(p, self.cluster, self.queues)
        policy.setup(ctx)
        self.result = RunResult(policy.name, sc.name, p.steps * self.step)
        for k in pools:
            self.result.pools[str(k)] = PoolResult(slos[k], WaitHistogram(self.step))
        # Node pools each pool may run on: who shares the energy of nodes no pool holds
        self.eligible: dict[NodePoolKey, list[PoolKey]] = {}
        for k in pools:
            for key in ctx.rates[k]:
                self.eligible.setdefault(key, []).append(k)
        self.counts = {k: p.demand[k].counts if k in p.demand else np.zeros(p.steps) for k in pools}
        self.works = {k: p.demand[k].work if k in p.demand else np.zeros(p.steps) for k in pools}
        self.cum = {k: np.concatenate(([0.0], np.cumsum(self.counts[k]))) for k in pools}
        self.secondary = {
            k for k, n in self.cluster.nodes.items() if n.provider.role == Role.SECONDARY
        }
        # Per pool: the node pools it can run on, with rate and extra watts per busy replica
        self.serving = {
            k: [
                (key, ctx.rates[k][key], ctx.loaded_watts[k][key], fleet.pools[k].gpus_per_replica)
                for key in ctx.rates[k]
            ]
            for k in pools
        }
        self.budgets = {name: (b, in_scope(fleet, b)) for name, b in fleet.budgets.items()}
        self.over = dict.fromkeys(self.budgets, 0.0)
        self.scrape_every = max(1, round(sc.scrape_seconds / self.step))
        self.period = max(1, round(policy.period / self.step))
        self.series_every = max(1, round(SERIES_EVERY / self.step))
        self.rate_steps = max(1, round(RATE_WINDOW / self.step))
        self.cap_steps = {
            name: caps_by_step(b, p.start_epoch, p.steps, self.step)
            for name, (b, _) in self.budgets.items()
        }
        self.caps = {name: c[0] if c else 0.0 for name, c in self.cap_steps.items()}
        self.watts_now = dict.fromkeys(self.budgets, 0.0)
        self.drawn = PeakDraw(round(DRAW_WINDOW / self.step))
        self.last_scrape = Scrape(0.0, {}, {}, {})
        self.first: dict[PoolKey, float] = {}
        self.throttled: dict[PoolKey, dict[int, float]] = {}  # requests by hour of arrival
        self.gpu_s = self.cost = self.energy = self.peak = 0.0
        self.t0 = time.perf_counter()

    def view(self, i: int) -> View:
        """What the policy sees at step `i`: the last scrape and the cluster as it is."""
        cluster, pools = self.cluster, self.pools
        reps = {k: {key: r.total for key, r in cluster.replicas[k].items()} for k in pools}
        nps = {
            key: NodePoolObservation(n.ready, n.total, n.last_error)
            for key, n in cluster.nodes.items()
        }
        bound = {
            k: {key: r.total - r.pending for key, r in cluster.replicas[k].items()} for k in pools
        }
        return View(
            i * self.step,
            self.p.start_epoch + i * self.step,
            self.last_scrape,
            reps,
            bound,
            {k: cluster.pending(k) for k in pools},
            nps,
            {k: sum(r.ready for r in cluster.replicas[k].values()) for k in pools},
        )

    def start_warm(self) -> None:
        """Every policy starts from the same state: the fleet ran before the trace began,
        with the replicas that serve each pool's first lead time at its SLO target
        (`first_work`) at the rate replicas truly serve (`placement.start_state`)
        ready on the nodes they fill, and Prometheus showing the first minute's rate. Each
        policy acts from t=0; setting this up is not counted."""
        p, pools = self.p, self.pools
        first = first_rates(p)
        self.first = {k: first.get(k, 0.0) for k in pools}
        self.last_scrape = Scrape(
            0.0,
            dict.fromkeys(pools, 0.0),
            self.first,
            {},
            {k: self.gateway.tier_rates(k, self.first[k]) for k in pools},
        )
        replicas = {pool: dict(by_key) for pool, by_key in self.ctx.start.items()}
        start = Decision(replicas=replicas, nodes=nodes_for(self.ctx, replicas))
        _apply(self.cluster, start, 0.0, warm=True)
        self.cluster.node_actions = self.cluster.replica_actions = 0

    def scrape(self, i: int) -> None:
        """Prometheus scrapes: queue depths, the last minute's arrival rates, budget watts."""
        t, pools, lo = i * self.step, self.pools, max(0, i - self.rate_steps)
        rates = {
            k: float(self.cum[k][i] - self.cum[k][lo]) / ((i - lo) * self.step)
            if i > lo
            else self.first[k]
            for k in pools
        }
        self.last_scrape = Scrape(
            t,
            {k: self.queues[k].depth for k in pools},
            rates,
            dict(self.watts_now),
            {k: self.gateway.tier_rates(k, rates[k]) for k in pools},
            self.drawn.read(i),
        )

    def reconcile(self, i: int) -> None:
        """The policy decides from the last scrape; nodes and replicas follow."""
        t = i * self.step
        decision = self.policy.decide(self.view(i))
        self.gateway.publish(decision.throttles)
        _apply(self.cluster, decision, t)
        self.cluster.advance(t)

    def serve(self, i: int) -> _Served:
        """Arrivals the gateway admits join each queue; ready replicas serve it. The busy
        share of their capacity sets the watts above idle."""
        served = _Served({}, {}, {})
        for k in self.pools:
            q = self.queues[k]
            count = float(self.counts[k][i])
            admitted, work, shares = self.gateway.admit(k, count, float(self.works[k][i]))
            q.push(i, admitted, work, shares)
            if count - admitted > 1e-12:  # throttled: a miss in the hour it arrived in
                late = self.throttled.setdefault(k, {})
                late[i // q.window] = late.get(i // q.window, 0.0) + count - admitted
            cap = 0.0
            for key, rate, _, _ in self.serving[k]:
                c = self.cluster.replicas[k][key].ready * rate * self.step
                served.capacity[key] = served.capacity.get(key, 0.0) + c
                cap += c
            if cap <= 0:
                self.drawn.record(i, k, self._draw(k, 0.0))
                continue
            work = q.serve(i, cap) if q.cohorts else 0.0
            util = work / cap
            self.drawn.record(i, k, self._draw(k, util))
            pr = self.result.pools[str(k)]
            pr.served_work += work
            for key, rate, loaded, gpr in self.serving[k]:
                ready = self.cluster.replicas[k][key].ready
                if ready:
                    idle = self.cluster.nodes[key].spec.idle_watts_per_gpu
                    w = ready * gpr * (loaded - idle) * util
                    served.extra[key] = served.extra.get(key, 0.0) + w
                    served.busy[k, key] = w
                    if key in self.secondary:
                        pr.burst_work += work * ready * rate * self.step / cap
        return served

    def _draw(self, k: PoolKey, util: float) -> dict[str, float]:
        """Per GPU type, what one GPU of pool `k` on a node draws this step: idle while its
        replica loads, idle plus the busy share of its loaded watts once ready."""
        out: dict[str, float] = {}
        for key, _, loaded, _ in self.serving[k]:
            r = self.cluster.replicas[k][key]
            if not (r.ready or r.loading):
                continue
            spec = self.cluster.nodes[key].spec
            idle = float(spec.idle_watts_per_gpu)
            w = idle + (loaded - idle) * util if r.ready else idle
            out[spec.gpu_type] = max(w, out.get(spec.gpu_type, w))
        return out

    def draw_power(self, i: int, served: _Served) -> None:
        """Nodes draw idle watts per GPU and their overhead from the boot request on; the
        energy goes to pools, the draw to each budget, the excess over its cap to `over`."""
        step, fleet_w = self.step, 0.0
        np_watts: dict[NodePoolKey, float] = {}
        for key, n in self.cluster.nodes.items():
            total = n.total
            if not total:
                continue
            s = n.spec
            extra = served.extra.get(key, 0.0)
            w = node_watts(s, total, extra)
            np_watts[key] = w
            fleet_w += w
            _attribute(self.result, key, w - extra, served.busy, self.cluster, self.eligible, step)
            self.gpu_s += total * s.gpus_per_node * step
            self.cost += total * s.hourly_price_cents * step / 3600.0
        self.energy += fleet_w * step
        self.peak = max(self.peak, fleet_w)
        self.caps = {name: c[i] for name, c in self.cap_steps.items()}
        for name, (_, scope) in self.budgets.items():
            w = sum(np_watts.get(key, 0.0) for key in scope)
            self.watts_now[name] = w
            if w > self.caps[name]:
                self.over[name] += (w - self.caps[name]) * step

    def record_series(self, i: int, served: _Served) -> None:
        _sample(
            self.result,
            i,
            self.step,
            self.pools,
            self.cum,
            self.queues,
            self.cluster,
            served.capacity,
            self.ctx,
            self.watts_now,
            self.caps,
            self.series_every,
        )

    def finish(self) -> RunResult:
        """Requests still queued at the end count as unserved; the totals go in the result."""
        result, gateway = self.result, self.gateway
        for k in self.pools:
            q, pr = self.queues[k], result.pools[str(k)]
            q.drain_unserved(self.p.steps)
            pr.waits, pr.served_requests, pr.windows = q.waits, q.served, q.windows
            for hour, n in self.throttled.get(k, {}).items():
                pr.windows.setdefault(hour, [0.0, 0.0])[1] += n
            for name, hist in zip(gateway.tiers.get(k, []), q.tier_waits, strict=True):
                gateway.results[k][name].waits = hist
            pr.tiers = gateway.results.get(k, {})
        result.wall_seconds = time.perf_counter() - self.t0
        result.gpu_seconds, result.cost_cents = self.gpu_s, self.cost
        result.energy_joules, result.peak_watts = self.energy, self.peak
        result.over_cap_watt_seconds = self.over
        result.scale_actions = self.cluster.node_actions + self.cluster.replica_actions
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

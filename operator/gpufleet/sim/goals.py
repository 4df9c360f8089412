"""What the fleet benchmark asks of gpufleet on each scenario, checked from the results.

A replay on traces nobody tuned for should say pass or fail without a person reading
thirteen tables. Each goal compares gpufleet with the policy that makes it fair:

- where demand rises no faster than capacity can follow, every pool meets its own SLO
  target;
- on a sudden step (a surge whose ramp is shorter than the quickest node boot plus the
  model's load), no pool is more than `STEP_MARGIN` below the reactive bound: what the bound
  misses there is physics, what gpufleet misses beyond it is ours;
- no pool is below the fair keda-ca;
- where every pool of both meets its target, gpufleet's GPU-hours are at most
  `KEDA_CA_GPU_HOURS` of keda-ca's;
- GPU-hours at most `ORACLE_GPU_HOURS` of the oracle's;
- no watt-second over any cap.

SLOs are judged per pool, never on the scenario's total: chat's millions of requests would
hide an image pool that keda-ca serves at 70 %.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gpufleet.planner.types import Fleet, PoolKey
from gpufleet.sim.metrics import RunResult
from gpufleet.sim.scenario import Scenario

STEP_MARGIN = 0.001  # 0.1 point of SLO attainment
KEDA_CA_GPU_HOURS = 0.7
ORACLE_GPU_HOURS = 1.2
_EPSILON = 1e-9

SUBJECT, FAIR_BASELINE, REACTIVE, ORACLE = "gpufleet", "keda-ca", "reactive", "oracle"


@dataclass(frozen=True)
class Goal:
    name: str
    met: bool | None  # None: it does not apply to this scenario (`figure` says why)
    figure: str

    def cell(self) -> str:
        mark = "-" if self.met is None else ("yes" if self.met else "**no**")
        return f"{mark}: {self.figure}"

    def as_json(self) -> dict[str, object]:
        return {"met": self.met, "figure": self.figure}


def sudden_pools(scenario: Scenario) -> list[str]:
    """Pools whose surge ramps up faster than any of their node pools' boot plus the
    model's load: no policy without a forecast can follow it."""
    out = []
    for workload in scenario.workloads:
        surge = workload.modifiers.surge
        if surge is None or surge.factor <= 1.0:
            continue
        lead = quickest_lead(scenario.fleet, workload.pool)
        if lead is not None and surge.ramp < lead:
            out.append(_name(workload.pool))
    return out


def quickest_lead(fleet: Fleet, pool: PoolKey) -> float | None:
    """Seconds from asking for capacity to its serving, at the quickest: the fastest boot
    of the pool's GPU types plus its model load (None for a pool not in the fleet or
    without a node pool it may use)."""
    spec = fleet.pools.get(pool)
    if spec is None:
        return None
    boots = [
        n.boot_seconds
        for provider in fleet.providers.values()
        for n in provider.node_pools
        if n.gpu_type in spec.gpu_types
    ]
    if not boots:
        return None
    return float(min(boots) + (spec.model_load_seconds or 0))


def _name(pool: PoolKey) -> str:
    return f"{pool.namespace}/{pool.name}"


def _targets(fleet: Fleet) -> dict[str, float]:
    """Each pool's SLO target as a share (pools without an SLO are not judged on one)."""
    return {
        _name(key): spec.slo.target_percent / 100.0
        for key, spec in fleet.pools.items()
        if spec.slo is not None
    }


def _attainment(result: RunResult) -> dict[str, float]:
    return {
        name: min(1.0, pool.within / pool.requests)
        for name, pool in result.pools.items()
        if pool.requests > 0
    }


def _meets(result: RunResult, targets: Mapping[str, float]) -> bool:
    got = _attainment(result)
    return all(got.get(name, 1.0) >= target - _EPSILON for name, target in targets.items())


def _worst(pairs: Iterable[tuple[str, float, float]]) -> tuple[str, float, float] | None:
    """The pool furthest below its bar (or nearest above it): name, got, bar."""
    return min(pairs, key=lambda p: p[1] - p[2], default=None)


def _pct(share: float) -> str:
    return f"{share * 100:.2f} %"


def evaluate(scenario: Scenario, results: Iterable[RunResult]) -> list[Goal]:
    """Each goal for gpufleet on this scenario's results; empty where gpufleet did not run."""
    by_policy = {r.policy: r for r in results}
    subject = by_policy.get(SUBJECT)
    if subject is None:
        return []
    targets = _targets(scenario.fleet)
    got = _attainment(subject)
    sudden = sudden_pools(scenario)
    return [
        _slo_goal(got, targets, sudden, by_policy.get(ORACLE)),
        _step_goal(got, by_policy.get(REACTIVE), sudden),
        _keda_slo_goal(got, by_policy.get(FAIR_BASELINE)),
        _keda_gpu_hours_goal(subject, by_policy.get(FAIR_BASELINE), targets),
        _oracle_goal(subject, by_policy.get(ORACLE)),
        Goal(
            "noPowerOverCap",
            subject.over_cap_kws <= _EPSILON,
            f"{subject.over_cap_kws:,.0f} kW·s over caps",
        ),
    ]


def _slo_goal(
    got: Mapping[str, float],
    targets: Mapping[str, float],
    sudden: list[str],
    oracle: RunResult | None,
) -> Goal:
    """Every pool at its target; the oracle's figure beside it says whether any policy
    could be (one that starts from the same state, which it may not meet)."""
    judged = [(n, got[n], t) for n, t in targets.items() if n in got and n not in sudden]
    worst = _worst(judged)
    if worst is None:
        return Goal("sloTarget", None, "every pool steps suddenly (see the reactive bound)")
    name, share, bar = worst
    bound = _attainment(oracle).get(name) if oracle is not None else None
    beside = f"; oracle {_pct(bound)}" if bound is not None else ""
    return Goal(
        "sloTarget", share >= bar - _EPSILON, f"{name} {_pct(share)} (target {_pct(bar)}{beside})"
    )


def _step_goal(got: Mapping[str, float], reactive: RunResult | None, sudden: list[str]) -> Goal:
    if not sudden:
        return Goal("stepWithinReactive", None, "no sudden step")
    if reactive is None:
        return Goal("stepWithinReactive", None, "the reactive bound did not run")
    bound = _attainment(reactive)
    worst = _worst((n, got[n], bound[n] - STEP_MARGIN) for n in sudden if n in got and n in bound)
    if worst is None:
        return Goal("stepWithinReactive", None, "no request reached the stepped pools")
    name, share, bar = worst
    return Goal(
        "stepWithinReactive",
        share >= bar - _EPSILON,
        f"{name} {_pct(share)} (reactive {_pct(bar + STEP_MARGIN)})",
    )


def _keda_slo_goal(got: Mapping[str, float], keda: RunResult | None) -> Goal:
    if keda is None:
        return Goal("notBelowKedaCa", None, "keda-ca did not run")
    theirs = _attainment(keda)
    worst = _worst((n, got[n], theirs[n]) for n in got if n in theirs)
    if worst is None:
        return Goal("notBelowKedaCa", None, "no requests")
    name, share, bar = worst
    return Goal(
        "notBelowKedaCa", share >= bar - _EPSILON, f"{name} {_pct(share)} (keda-ca {_pct(bar)})"
    )


def _keda_gpu_hours_goal(
    subject: RunResult, keda: RunResult | None, targets: Mapping[str, float]
) -> Goal:
    if keda is None or keda.gpu_hours <= 0:
        return Goal("gpuHoursVsKedaCa", None, "keda-ca did not run")
    ratio = subject.gpu_hours / keda.gpu_hours
    figure = f"{ratio:.2f}x keda-ca's GPU-hours (goal {KEDA_CA_GPU_HOURS}x)"
    if not (_meets(subject, targets) and _meets(keda, targets)):
        return Goal("gpuHoursVsKedaCa", None, f"{figure}; not both at every pool's target")
    return Goal("gpuHoursVsKedaCa", ratio <= KEDA_CA_GPU_HOURS + _EPSILON, figure)


def _oracle_goal(subject: RunResult, oracle: RunResult | None) -> Goal:
    if oracle is None or oracle.gpu_hours <= 0:
        return Goal("gpuHoursVsOracle", None, "the oracle did not run")
    ratio = subject.gpu_hours / oracle.gpu_hours
    return Goal(
        "gpuHoursVsOracle",
        ratio <= ORACLE_GPU_HOURS + _EPSILON,
        f"{ratio:.2f}x the oracle's GPU-hours (goal {ORACLE_GPU_HOURS}x)",
    )


def markdown(rows: Mapping[str, list[Goal]]) -> str:
    """One row a scenario, one column a goal."""
    if not rows:
        return ""
    names = [g.name for g in next(iter(rows.values()))]
    out = [
        "| scenario | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for scenario, goals in rows.items():
        out.append(f"| {scenario} | " + " | ".join(g.cell() for g in goals) + " |")
    return "\n".join(out)

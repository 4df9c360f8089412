"""Run every scenario in examples/scenarios under every policy; write a markdown table and
plots to benchmarks/results/, and end with one JSON line of the headline figures.

    python benchmarks/fleet_traces.py --traces ../shared/traces
    python benchmarks/fleet_traces.py --quick      # a few simulated minutes, synthetic trace

The rules every row follows are in NOTES, printed above the tables. The oracle's entry in
the JSON line lists the policies that beat it on GPU-hours at an equal or higher SLO
attainment (`beatenBy`): none should, as it is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gpufleet.sim import goals, policies, report
from gpufleet.sim.cli import compare
from gpufleet.sim.engine import prepare
from gpufleet.sim.metrics import RunResult
from gpufleet.sim.plot import plot
from gpufleet.sim.scenario import load_scenario
from gpufleet.sim.trace import TraceSpec

ROOT = Path(__file__).resolve().parent.parent

NOTES = """\
- **Same start for every policy:** the fleet ran before the trace: at t=0 each pool has the
  replicas that start its SLO target's share of the requests of its first lead time
  (quickest boot plus model load, a minute at least: what capacity asked for before t=0
  must carry) within its SLO, at the rate replicas truly serve, ready, on the nodes they
  fill, and Prometheus shows the first minute's rate. Every policy acts from t=0 and pays
  boot and model load for anything more.
- **SLO met** counts throttled requests as misses; **admitted in SLO** is the share of
  admitted requests that started within the SLO; **throttled** the share refused at the
  gateway (only gpufleet throttles).
- **keda-ca**: KEDA triggers on the pool's queue (`targetPerReplica`) and arrival rate (70 %
  of the declared per-replica rate), HPA defaults (no scale-up stabilization, 300 s
  scale-down), Cluster Autoscaler scanning every 10 s with 300 s unneeded time and delay
  after add, kube-scheduler preemption by PriorityClass. **keda-ca-defaults**: the queue
  trigger alone, Cluster Autoscaler's 10 min defaults, no PriorityClass.
- **reactive**: knows each instant's true arrivals (over the SLO window ending then) and
  the queue, never the future; sizes as the oracle does and starts capacity only then. On
  a sudden step its misses are physics (boot and load).
- **oracle**: knows the future; plans for each pool's own SLO target on the node pools and
  GPU types the policies buy (the planner's order); a lower bound on GPU-hours at its SLO.
"""

GOALS = """\
What the benchmark asks of gpufleet on each scenario (`gpufleet.sim.goals`; each SLO is a
pool's own, never the scenario's total): `sloTarget`, every pool at its target where demand
rises no faster than capacity can follow; `stepWithinReactive`, on a sudden step (a ramp
shorter than the quickest boot plus model load) no pool more than 0.1 point below the
reactive bound; `notBelowKedaCa`, no pool below the fair keda-ca; `gpuHoursVsKedaCa`, at most
0.7x its GPU-hours where both hold every pool's target; `gpuHoursVsOracle`, at most 1.2x the
oracle's; `noPowerOverCap`. The worst pool is named; "-" where a goal does not apply.
"""


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=Path, default=ROOT.parent / "shared" / "traces")
    parser.add_argument("--scenarios", type=Path, default=ROOT / "examples" / "scenarios")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="10 simulated minutes of a synthetic trace per scenario",
    )
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# Fleet trace benchmark", "", NOTES]
    headline: dict[str, object] = {}
    goal_rows: dict[str, list[goals.Goal]] = {}
    for path in sorted(args.scenarios.glob("*.yaml")):
        sc = load_scenario(path)
        if args.quick:  # no shared traces needed: a synthetic Poisson trace, 10 minutes
            sc.duration = 600.0
            sc.workloads = [
                type(w)(
                    w.pool,
                    w.profile,
                    TraceSpec(
                        source="synthetic",
                        rate=2.0,
                        default_work=w.trace.default_work,
                        duration=600.0,
                    ),
                    w.modifiers,
                )
                for w in sc.workloads
            ]
        start = time.perf_counter()
        results = compare(prepare(sc, args.traces), list(policies.NAMES), show_progress=False)
        lines.append(report.markdown(sc.name, results))
        lines.append(
            f"_{sc.description}; {sc.duration or results[0].sim_seconds:.0f} s simulated "
            f"in {time.perf_counter() - start:.1f} s for all policies._\n"
        )
        if not args.no_plots:
            plot(results, args.out / f"{sc.name}.png", sc.name)
        below = report.below_the_oracle(results)
        if below:
            lines.append(f"_Below the oracle at an equal or higher SLO: {', '.join(below)}._\n")
        met = goal_rows[sc.name] = goals.evaluate(sc, results)
        headline[sc.name] = {
            r.policy: {
                "sloAttainment": round(r.slo_attainment, 5),
                "admittedSloAttainment": round(r.admitted_slo_attainment, 5),
                "throttledShare": round(r.throttled_share, 5),
                "gpuHours": round(r.gpu_hours, 2),
                "overCapKws": round(r.over_cap_kws, 1),
                **({"beatenBy": below} if r.policy == "oracle" else {}),
                **({"pools": _pools(r)} if report.per_pool([r]) else {}),
                **({"goals": {g.name: g.as_json() for g in met}} if r.policy == "gpufleet" else {}),
            }
            for r in results
        }
    lines += ["## Goals", "", GOALS, goals.markdown(goal_rows), ""]
    name = "fleet_traces_quick.md" if args.quick else "fleet_traces.md"
    (args.out / name).write_text("\n".join(lines))
    print(json.dumps(headline, separators=(",", ":")))
    return headline


def _pools(r: RunResult) -> dict[str, object]:
    """Per pool (and tier) headline figures for the JSON line."""
    out: dict[str, object] = {}
    for name, pool in r.pools.items():
        s = pool.summary()
        fig: dict[str, object] = {
            k: s[k] for k in ("worstHourSloAttainment", "p99WaitSeconds", "whPerRequest") if k in s
        }
        fig["sloAttainment"] = round(s["sloAttainment"], 5)
        fig["admittedSloAttainment"] = round(s["admittedSloAttainment"], 5)
        fig["throttledShare"] = s["throttledShare"]
        if "tiers" in s:
            fig["tiers"] = {
                t: {
                    "sloAttainment": v["sloAttainment"],
                    "admittedSloAttainment": v["admittedSloAttainment"],
                    "throttledShare": v["throttledShare"],
                    "p99WaitSeconds": v["p99WaitSeconds"],
                    "admittedOverPublished": v["admittedOverPublished"],
                }
                for t, v in s["tiers"].items()
            }
        out[name] = fig
    return out


if __name__ == "__main__":
    main()

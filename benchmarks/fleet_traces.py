"""Run every scenario in examples/scenarios under every policy; write a markdown table and
plots to benchmarks/results/, and end with one JSON line of the headline figures.

    python benchmarks/fleet_traces.py --traces ../shared/traces
    python benchmarks/fleet_traces.py --quick      # a few simulated minutes, synthetic trace
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gpufleet.sim import policies, report
from gpufleet.sim.cli import compare
from gpufleet.sim.engine import prepare
from gpufleet.sim.metrics import RunResult
from gpufleet.sim.plot import plot
from gpufleet.sim.scenario import load_scenario
from gpufleet.sim.trace import TraceSpec

ROOT = Path(__file__).resolve().parent.parent


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
    lines = ["# Fleet trace benchmark", ""]
    headline: dict[str, object] = {}
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
        headline[sc.name] = {
            r.policy: {
                "sloAttainment": round(r.slo_attainment, 5),
                "gpuHours": round(r.gpu_hours, 2),
                "overCapKws": round(r.over_cap_kws, 1),
                **({"pools": _pools(r)} if report.per_pool([r]) else {}),
            }
            for r in results
        }
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
        if "tiers" in s:
            fig["throttledShare"] = s["throttledShare"]
            fig["tiers"] = {
                t: {
                    "sloAttainment": v["sloAttainment"],
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

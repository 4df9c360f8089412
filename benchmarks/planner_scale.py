"""Time one full plan over synthetic fleets of growing size, on one core.

Target (issue 4): 1,000 pools x 10 providers x 1,000 node pools plan in <= 50 ms (5% of a
1 s reconcile period), and time grows close to linearly (growth_ratio <= 2.2 from the size
to twice the size). Ends with one JSON line of the figures.

    python benchmarks/planner_scale.py            # full sizes
    python benchmarks/planner_scale.py --quick    # small sizes, as the tests run it
    python benchmarks/planner_scale.py --against ../other-checkout   # this tree against another

`--against` times the base size for this tree and another checkout (its root or its
`operator/` directory) in turns, each in a fresh process that builds the fleet with its own
tree's `build()` and `time_plan()`, and this tree at twice the size in the same turns: on a
shared machine the load drifts, and only figures taken side by side compare.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpufleet.api import parse_budget, parse_pool, parse_provider
from gpufleet.planner import (
    Fleet,
    NodePoolKey,
    NodePoolObservation,
    PlannerState,
    PoolKey,
    PoolObservation,
    Snapshot,
    plan_fleet,
)
from gpufleet.planner.types import frozen_map

GPU_TYPES = ("H100", "H200", "L40S", "A100", "B200")
COUNTRIES = ("DE", "NL", "FR", "IE", "US")


def build(pools: int, providers: int, node_pools: int, seed: int = 7) -> tuple[Fleet, Snapshot]:
    rng = random.Random(seed)
    # Sites and caps grow with the fleet, so twice the size is the same fleet shape twice over.
    sites = max(1, node_pools // 50)
    per_provider = max(1, node_pools // providers)
    provider_specs = {}
    node_observations = {}
    for p in range(providers):
        name = f"cloud-{p:03d}"
        pools_: list[dict[str, Any]] = []
        for n in range(per_provider):
            gpus = rng.choice((1, 2, 4, 8))
            pools_.append(
                {
                    "name": f"np-{n:04d}",
                    "gpuType": GPU_TYPES[n % len(GPU_TYPES)],
                    "gpusPerNode": gpus,
                    "wattsPerGpu": 700,
                    "idleWattsPerGpu": 90,
                    "nodeOverheadWatts": 800,
                    "hourlyPriceCents": rng.randint(100, 10000),
                    "maxNodes": rng.randint(5, 50),
                    "bootSeconds": rng.randint(60, 600),
                    "site": f"site-{(p * per_provider + n) % sites}",
                }
            )
            node_observations[NodePoolKey(name, f"np-{n:04d}")] = NodePoolObservation(
                ready_nodes=rng.randint(0, 3), target_nodes=rng.randint(0, 3)
            )
        parsed = parse_provider(
            {
                "role": "Primary" if p < providers // 2 else "Secondary",
                "order": p,
                "subprocessor": {
                    "legalEntity": name,
                    "jurisdiction": COUNTRIES[p % len(COUNTRIES)],
                    "approved": p % 4 != 3,
                    "dataClasses": ["Internal"],
                },
                "driver": {"type": "Simulated"},
                "gpuQuota": rng.randint(200, 2000) * node_pools // 1000,
                "nodePools": pools_,
            }
        )
        assert parsed.value is not None, parsed.errors
        provider_specs[name] = parsed.value
    pool_specs = {}
    priorities: dict[PoolKey, int] = {}
    observations = {}
    for i in range(pools):
        key = PoolKey(f"team-{i % 50}", f"model-{i:05d}")
        gpu_types = rng.sample(GPU_TYPES, 2)
        gpus_per_replica = rng.choice((1, 1, 2, 4))
        target = rng.randint(2, 20)
        priorities[key] = rng.randint(0, 10)  # the platform's, from PriorityClasses
        parsed_pool = parse_pool(
            {
                "scaleTargetRef": {"name": key.name},
                "gpuTypes": gpu_types,
                "gpusPerReplica": gpus_per_replica,
                "queue": {"query": "q", "targetPerReplica": target},
                "minReplicas": 0,
                "maxReplicas": 200,
                "slo": {"queueWaitSeconds": 10},
                "serviceRates": []
                if i % 3
                else [{"gpuType": g, "requestsPerMinute": 60} for g in GPU_TYPES[:1]],
                "burst": {"enabled": i % 2 == 0},
                "dataPolicy": {"allowedJurisdictions": ["EU"] if i % 2 else []},
            }
        )
        if parsed_pool.value is None:  # serviceRates for a type the pool does not run on
            parsed_pool = parse_pool(
                {
                    "scaleTargetRef": {"name": key.name},
                    "gpuTypes": ["H100"],
                    "queue": {"query": "q", "targetPerReplica": 5},
                    "maxReplicas": 200,
                }
            )
        assert parsed_pool.value is not None
        pool_specs[key] = parsed_pool.value
        observations[key] = PoolObservation(
            queue_depth=float(rng.randint(0, 300)),
            arrival_rate=float(rng.randint(0, 30)),
        )
    budgets = {
        "fleet": parse_budget({"capKilowatts": 50 * pools}).value,
        **{
            f"site-{s}": parse_budget(
                {"capKilowatts": 800, "scope": {"sites": [f"site-{s}"]}}
            ).value
            for s in range(20)
        },
    }
    fleet = Fleet(
        frozen_map(pool_specs),
        frozen_map(provider_specs),
        frozen_map({k: v for k, v in budgets.items() if v is not None}),
        priorities=frozen_map(priorities),
    )
    snapshot = Snapshot(pools=frozen_map(observations), node_pools=frozen_map(node_observations))
    return fleet, snapshot


def time_plan(pools: int, providers: int, node_pools: int, repeats: int) -> float:
    fleet, snapshot = build(pools, providers, node_pools)
    state = PlannerState()
    samples = []
    for i in range(repeats + 1):
        # CPU time of this process: the figure is "on one core", whatever else the machine runs.
        start = time.process_time()
        plan = plan_fleet(fleet, snapshot, state, now=1000.0 + i)
        elapsed = time.process_time() - start
        state = plan.state
        if i:  # the first plan warms caches and builds state
            samples.append(elapsed * 1000)
    return statistics.median(samples)


# Run in a child whose PYTHONPATH is one tree's operator/: that tree's own benchmark module
# builds the fleet and times it, so each side plans the fleet its own code was written for.
_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import gpufleet
from planner_scale import time_plan
ms = time_plan(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
print(json.dumps({"ms": ms, "package": gpufleet.__file__}))
"""


def _tree(path: str) -> Path:
    """The checkout's root, given it or its operator/ directory."""
    root = Path(path).resolve()
    if root.name == "operator" and (root / "gpufleet").is_dir():
        root = root.parent
    if not (root / "operator" / "gpufleet").is_dir():
        raise SystemExit(f"{path}: no operator/gpufleet in this checkout")
    if not (root / "benchmarks" / "planner_scale.py").is_file():
        raise SystemExit(f"{path}: no benchmarks/planner_scale.py in this checkout")
    return root


def time_tree(root: Path, pools: int, providers: int, node_pools: int, repeats: int) -> float:
    """The median plan time of the tree at `root`, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(root / "operator")}
    args = [str(root / "benchmarks"), str(pools), str(providers), str(node_pools), str(repeats)]
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        env=env,
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    # An installed copy of the package ahead of PYTHONPATH would time the wrong tree.
    if not Path(figures["package"]).resolve().is_relative_to(root / "operator"):
        raise SystemExit(f"{root}: timed {figures['package']} instead")
    return float(figures["ms"])


def compare(
    other: Path, pools: int, providers: int, node_pools: int, repeats: int, rounds: int
) -> dict[str, object]:
    """This tree against `other`, in turns (which goes first alternates by round), and this
    tree at twice the size in the same turns: a growth ratio from two runs minutes apart on
    a shared machine says more about its load than about the planner."""
    here = Path(__file__).resolve().parents[1]
    times: dict[Path, list[float]] = {here: [], other: []}
    doubled: list[float] = []
    for round_ in range(rounds):
        for root in (here, other) if round_ % 2 == 0 else (other, here):
            times[root].append(time_tree(root, pools, providers, node_pools, repeats))
        doubled.append(time_tree(here, pools * 2, providers, node_pools * 2, repeats))
    ours, theirs = statistics.median(times[here]), statistics.median(times[other])
    paired = [a / b for a, b in zip(times[here], times[other], strict=True)]
    growth = [d / a for a, d in zip(times[here], doubled, strict=True)]
    print(f"this tree: {ours:.1f} ms; {other}: {theirs:.1f} ms (medians of {rounds} rounds)")
    return {
        "against": str(other),
        "rounds": rounds,
        "plan_ms_median_here": round(ours, 2),
        "plan_ms_median_against": round(theirs, 2),
        "ratio_to_against": round(ours / theirs, 3),
        "ratio_to_against_paired_median": round(statistics.median(paired), 3),
        "plan_ms_median_double_here": round(statistics.median(doubled), 2),
        "growth_ratio_here": round(statistics.median(doubled) / ours, 3),
        "growth_ratio_here_paired_median": round(statistics.median(growth), 3),
        "plan_ms_here_rounds": [round(t, 2) for t in times[here]],
        "plan_ms_against_rounds": [round(t, 2) for t in times[other]],
        "plan_ms_double_here_rounds": [round(t, 2) for t in doubled],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (the tests run this)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--against",
        metavar="PATH",
        help="another checkout (root or operator/) to time the base size against, in turns",
    )
    parser.add_argument("--rounds", type=int, default=6, help="turns each tree gets (--against)")
    args = parser.parse_args()
    pools, providers, node_pools = (50, 4, 40) if args.quick else (1000, 10, 1000)
    repeats = 2 if args.quick else args.repeats
    compared = (
        compare(_tree(args.against), pools, providers, node_pools, repeats, args.rounds)
        if args.against
        else {}
    )
    base = time_plan(pools, providers, node_pools, repeats)
    double = time_plan(pools * 2, providers, node_pools * 2, repeats)
    print(f"{pools} pools x {providers} providers x {node_pools} node pools: {base:.1f} ms")
    print(
        f"{pools * 2} pools x {providers} providers x {node_pools * 2} node pools: {double:.1f} ms"
    )
    print(
        json.dumps(
            {
                "pools": pools,
                "providers": providers,
                "node_pools": node_pools,
                "plan_ms_median": round(base, 2),
                "plan_ms_median_double": round(double, 2),
                "growth_ratio": round(double / base, 3),
                "target_ms": 50,
                "target_growth_ratio": 2.2,
                **compared,
            }
        )
    )


if __name__ == "__main__":
    main()

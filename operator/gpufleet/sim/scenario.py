"""Scenario files: a trace, its modifiers, the fleet's manifests and injected failures."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from gpufleet.api import ServiceRate
from gpufleet.manifests import build_fleet, read_documents
from gpufleet.planner.types import Fleet, NodePoolKey, PoolKey, frozen_map
from gpufleet.sim.arrivals import listed
from gpufleet.sim.trace import Modifiers, Surge, TraceSpec


@dataclass(frozen=True)
class Failure:
    """Injected on a node pool from `start` to `end` (s): scale-ups beyond `max_nodes` fail."""

    node_pool: NodePoolKey
    kind: str  # InsufficientCapacity or QuotaExceeded
    start: float
    end: float
    max_nodes: int = 0


@dataclass(frozen=True)
class WorkloadSpec:
    pool: PoolKey
    profile: str
    trace: TraceSpec
    modifiers: Modifiers


@dataclass
class Scenario:
    name: str
    fleet: Fleet
    workloads: list[WorkloadSpec]
    description: str = ""
    duration: float | None = None
    step: float = 1.0
    reconcile_seconds: float = 10.0
    scrape_seconds: float = 15.0
    seed: int = 1
    start_epoch: float | None = None  # wall clock of t = 0, for power windows
    failures: list[Failure] = field(default_factory=list)
    base: Path = Path()
    # Requests a minute per replica given for this run (`--service-rate`): the planner sizes
    # with them and the simulated replicas serve at them, in place of any measured profile.
    service_rates: dict[PoolKey, int] = field(default_factory=dict)


class ScenarioError(ValueError):
    pass


def fleet_from(docs: list[dict[str, Any]]) -> Fleet:
    """The fleet of these manifests; any object the operator would reject is an error here."""
    fleet, rejected = build_fleet(docs)
    if rejected:
        raise ScenarioError("; ".join(map(str, rejected)))
    return fleet


def set_service_rate(scenario: Scenario, pool: PoolKey, requests_per_minute: int) -> None:
    """One rate for every GPU type of the pool, measured watts kept: the spec the planner
    reads and the rate the engine serves at change together, so the run stays consistent."""
    spec = scenario.fleet.pools[pool]
    watts = {r.gpu_type: r.watts_per_gpu for r in spec.service_rates}
    rates = [
        ServiceRate(
            gpu_type=gpu, requests_per_minute=requests_per_minute, watts_per_gpu=watts.get(gpu)
        )
        for gpu in spec.gpu_types
    ]
    pools = dict(scenario.fleet.pools)
    pools[pool] = spec.model_copy(update={"service_rates": rates})
    scenario.fleet = dataclasses.replace(scenario.fleet, pools=frozen_map(pools))
    scenario.service_rates[pool] = requests_per_minute


def load_fleet(path: Path) -> Fleet:
    """The fleet of a manifest file, or of the *.yaml/*.yml files of a directory."""
    return fleet_from(read_documents(path))


def _trace(raw: dict[str, Any]) -> TraceSpec:
    steps = [(float(a), float(b)) for a, b in raw.get("steps", [])]
    keys = {
        "source": "source",
        "path": "path",
        "timeField": "time_field",
        "timeUnit": "time_unit",
        "workField": "work_field",
        "workScale": "work_scale",
        "defaultWork": "default_work",
        "peakRps": "peak_rps",
        "rate": "rate",
        "workDistribution": "work_distribution",
        "duration": "duration",
    }
    kwargs = {py: raw[k] for k, py in keys.items() if k in raw}
    return TraceSpec(steps=steps, **kwargs)


def _modifiers(raw: dict[str, Any]) -> Modifiers:
    surge = raw.get("surge")
    return Modifiers(
        compress=float(raw.get("compress", 1.0)),
        multiply=float(raw.get("multiply", 1.0)),
        surge=Surge(
            float(surge["factor"]),
            float(surge.get("start", 0)),
            float(surge.get("rampSeconds", 0)),
            float(surge.get("holdSeconds", float("inf"))),
        )
        if surge
        else None,
        loop=bool(raw.get("loop", False)),
        work=float(raw.get("workMultiply", 1.0)),
        clump_seconds=float(raw.get("clumpSeconds", 0.0)),
    )


def parse_scenario(raw: dict[str, Any], base: Path) -> Scenario:
    fleet_raw = raw.get("fleet", {})
    docs: list[dict[str, Any]] = []
    for d in fleet_raw.get("manifests", []):
        docs.extend(read_documents((base / d).resolve()))
    docs.extend(fleet_raw.get("inline", []))
    fleet = fleet_from(docs)
    workloads = [
        WorkloadSpec(
            PoolKey.parse(w["pool"], "default"),
            w["profile"],
            _trace(w["trace"]),
            _modifiers(w.get("modifiers", {})),
        )
        for w in raw.get("workloads", [])
    ]
    for w in workloads:
        if w.pool not in fleet.pools:
            raise ScenarioError(
                f"workload pool {w.pool} is not in the fleet manifests; they have "
                f"{listed(map(str, fleet.pools))}"
            )
    failures = [
        Failure(
            NodePoolKey(f["provider"], f["nodePool"]),
            f["kind"],
            float(f.get("start", 0)),
            float(f.get("end", float("inf"))),
            int(f.get("maxNodes", 0)),
        )
        for f in raw.get("failures", [])
    ]
    start = raw.get("startTime")
    return Scenario(
        name=str(raw.get("name", "scenario")),
        description=str(raw.get("description", "")),
        fleet=fleet,
        workloads=workloads,
        duration=float(raw["durationSeconds"]) if "durationSeconds" in raw else None,
        step=float(raw.get("stepSeconds", 1.0)),
        reconcile_seconds=float(raw.get("reconcileSeconds", 10.0)),
        scrape_seconds=float(raw.get("scrapeSeconds", 15.0)),
        seed=int(raw.get("seed", 1)),
        start_epoch=datetime.fromisoformat(str(start).replace("Z", "+00:00")).timestamp()
        if start
        else None,
        failures=failures,
        base=base,
    )


def load_scenario(path: Path) -> Scenario:
    raw = yaml.safe_load(path.read_text())
    return parse_scenario(raw, path.parent)

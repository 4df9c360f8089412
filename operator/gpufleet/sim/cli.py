"""`gpufleet simulate`: replay a trace through each policy and compare them."""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from gpufleet.planner.types import PoolKey
from gpufleet.sim import data, policies, report
from gpufleet.sim.arrivals import TimeUnit, TraceError, listed
from gpufleet.sim.checks import rate_mismatches
from gpufleet.sim.engine import Prepared, prepare, run
from gpufleet.sim.metrics import RunResult
from gpufleet.sim.options import (
    check_workload_pools,
    pool_key,
    set_service_rates,
    trace_error,
    usage_error,
)
from gpufleet.sim.plot import PlotUnavailable, check_available, plot
from gpufleet.sim.policies import PolicyName
from gpufleet.sim.scenario import (
    Scenario,
    ScenarioError,
    WorkloadSpec,
    fleet_from,
    load_fleet,
    load_scenario,
)
from gpufleet.sim.trace import SOURCES, Modifiers, Surge, TraceSpec


def compare(prepared: Prepared, names: list[str], show_progress: bool = True) -> list[RunResult]:
    results = []
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=True,
    ) as bar:
        for name in names:
            task = bar.add_task(f"{prepared.scenario.name}: {name}", total=1.0)
            policy = policies.make(name, prepared.scenario.reconcile_seconds)
            results.append(run(prepared, policy, functools.partial(_advance, bar, task)))
    return results


def _advance(bar: Progress, task: TaskID, fraction: float) -> None:
    bar.update(task, completed=fraction)


def override(
    modifiers: Modifiers, compress: float | None, multiply: float | None, surge: Surge | None
) -> Modifiers:
    """The scenario's modifiers with those given on the command line; the others (loop) stay."""
    return dataclasses.replace(
        modifiers,
        compress=modifiers.compress if compress is None else compress,
        multiply=modifiers.multiply if multiply is None else multiply,
        surge=modifiers.surge if surge is None else surge,
    )


def _parse_surge(text: str) -> Surge:
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if not 3 <= len(parts) <= 4 or min(parts[0], *parts[2:]) < 0:
        raise usage_error(
            "--surge", f"{text!r} is not FACTOR,START_S,RAMP_S[,HOLD_S] (none but START_S < 0)"
        )
    return Surge(parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else float("inf"))


def _load(scenario: Path | None, fleet: Path | None, trace: str | None) -> Scenario:
    """The scenario file's, or an empty one for --fleet and --trace; --fleet replaces its
    fleet."""
    if scenario is None and (fleet is None or trace is None):
        raise typer.BadParameter("give a scenario file, or --fleet and --trace")
    try:
        if scenario is not None:
            sc = load_scenario(scenario)
        else:
            sc = Scenario(name=str(trace), fleet=fleet_from([]), workloads=[])
    except ScenarioError as e:
        raise usage_error("scenario", str(e)) from e
    if fleet is not None:
        try:
            sc.fleet = load_fleet(fleet)
        except ScenarioError as e:
            raise usage_error("--fleet", str(e)) from e
    return sc


def _check_plot(path: Path | None) -> None:
    """Before the run: a missing matplotlib must not cost a whole run's wait."""
    if path is None:
        return
    try:
        check_available()
    except PlotUnavailable as e:
        raise usage_error("--plot", str(e)) from e


def _check_positive(**values: float | None) -> None:
    """Each scales or divides something in the run: 0 or less fails deep inside it, or
    replays nothing."""
    for name, value in values.items():
        if value is not None and value <= 0:
            raise usage_error("--" + name.replace("_", "-"), f"{value:g} is not above 0")


def _target(sc: Scenario, pool: str | None) -> PoolKey:
    """The pool a command-line trace feeds: --pool, else the scenario's, else the first."""
    if pool is not None:
        return pool_key(pool, sc.fleet)
    if sc.workloads:
        return sc.workloads[0].pool
    if not sc.fleet.pools:
        raise usage_error("--fleet", "the fleet has no ServingPool")
    return next(iter(sc.fleet.pools))


def _prepare(sc: Scenario, traces: Path | None, scenario_file: Path | None) -> Prepared:
    """Load the traces (the scenario file's, or with None the command line's); warn where
    one disagrees with the rate its pool declares."""
    try:
        prepared = prepare(sc, traces)
    except TraceError as e:
        raise trace_error(e, scenario_file) from e
    for mismatch in rate_mismatches(prepared):
        typer.echo(f"warning: {mismatch}", err=True)
    return prepared


def simulate(
    scenario: Annotated[
        Path | None,
        typer.Argument(help="Scenario YAML (examples/scenarios).", exists=True, dir_okay=False),
    ] = None,
    traces: Annotated[
        Path | None,
        typer.Option(help="Directory of the shared traces.", exists=True, file_okay=False),
    ] = None,
    fleet: Annotated[
        Path | None,
        typer.Option(help="Directory of manifests (replaces the scenario's).", exists=True),
    ] = None,
    trace: Annotated[
        str | None, typer.Option(help=f"Where arrivals come from: {', '.join(SOURCES[:-1])}.")
    ] = None,
    trace_path: Annotated[
        str | None, typer.Option(help="Arrivals file (csv/jsonl) or a shared trace's file.")
    ] = None,
    time_field: Annotated[
        str, typer.Option(help="Timestamp field of the arrivals file.")
    ] = "timestamp",
    time_unit: Annotated[
        TimeUnit, typer.Option(help="A number of s, ms, us, ns or min; or iso (ISO 8601).")
    ] = TimeUnit.S,
    work_field: Annotated[
        str | None, typer.Option(help="Work per request field (tokens, images).")
    ] = None,
    work_scale: Annotated[float, typer.Option(help="Multiply the work field by this.")] = 1.0,
    pool: Annotated[
        str | None, typer.Option(help="namespace/name of the pool the trace feeds.")
    ] = None,
    profile: Annotated[
        str, typer.Option(help="Measured profile: llm-chat, llm-code, text-to-image.")
    ] = "llm-chat",
    service_rate: Annotated[
        list[str] | None,
        typer.Option(
            metavar="POOL=REQUESTS_PER_MINUTE",
            help="Per-replica rate of namespace/name for this run, on every GPU type: the "
            "planner sizes with it and the simulated replicas serve at it (repeat).",
        ),
    ] = None,
    compress: Annotated[
        float | None, typer.Option(help="Time compression (2 = twice as fast).")
    ] = None,
    multiply: Annotated[float | None, typer.Option(min=0.0, help="Demand multiplier.")] = None,
    surge: Annotated[
        str | None,
        typer.Option(
            metavar="FACTOR,START_S,RAMP_S[,HOLD_S]",
            help="Demand times FACTOR, ramped from START_S over RAMP_S seconds, held HOLD_S.",
        ),
    ] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds to simulate.")] = None,
    policy: Annotated[
        list[PolicyName] | None, typer.Option(help="Policies to compare (repeat).")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Random seed.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="Write a PNG here.")] = None,
) -> None:
    """Replay an arrival trace through the fleet under each policy and compare them."""
    _check_plot(plot_path)
    _check_positive(compress=compress, duration=duration, work_scale=work_scale)
    if profile not in data.workloads():
        raise usage_error(
            "--profile", f"no profile {profile!r}; profiles: {listed(data.workloads())}"
        )
    sc = _load(scenario, fleet, trace)
    if trace is not None:
        spec = TraceSpec(
            source=trace,
            path=trace_path,
            time_field=time_field,
            time_unit=str(time_unit),
            work_field=work_field,
            work_scale=work_scale,
        )
        sc.workloads = [WorkloadSpec(_target(sc, pool), profile, spec, Modifiers())]
    elif pool is not None:
        raise usage_error("--pool", "names the pool that --trace feeds; give --trace too")
    check_workload_pools(sc, "--fleet")
    set_service_rates(sc, service_rate or [])
    sc.workloads = [
        dataclasses.replace(
            w,
            modifiers=override(
                w.modifiers, compress, multiply, _parse_surge(surge) if surge else None
            ),
        )
        for w in sc.workloads
    ]
    if duration is not None:
        sc.duration = duration
    if seed is not None:
        sc.seed = seed
    prepared = _prepare(sc, traces, None if trace is not None else scenario)
    names = [str(p) for p in policy] if policy else list(policies.NAMES)
    results = compare(prepared, names, show_progress=sys.stderr.isatty())
    if json_out:
        typer.echo(report.dumps(report.as_json(sc.name, results)))
    else:
        report.print_table(sc.name, results)
    if plot_path is not None:
        plot(results, plot_path, sc.name)

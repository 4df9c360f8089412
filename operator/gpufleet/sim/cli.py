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

from gpufleet.sim import policies, report
from gpufleet.sim.engine import Prepared, prepare, run
from gpufleet.sim.metrics import RunResult
from gpufleet.sim.plot import plot
from gpufleet.sim.scenario import Scenario, WorkloadSpec, fleet_from, load_fleet, load_scenario
from gpufleet.sim.trace import Modifiers, Surge, TraceSpec


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
    parts = [float(x) for x in text.split(",")]
    if len(parts) < 3:
        raise typer.BadParameter("--surge FACTOR,START_S,RAMP_S[,HOLD_S]")
    return Surge(parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else float("inf"))


def simulate(
    scenario: Annotated[
        Path | None, typer.Argument(help="Scenario YAML (examples/scenarios).")
    ] = None,
    traces: Annotated[Path | None, typer.Option(help="Directory of the shared traces.")] = None,
    fleet: Annotated[
        Path | None, typer.Option(help="Directory of manifests (replaces the scenario's).")
    ] = None,
    trace: Annotated[
        str | None,
        typer.Option(
            help="azure-llm-conv, azure-llm-code, alibaba-qps, alibaba-requests, csv or jsonl."
        ),
    ] = None,
    trace_path: Annotated[
        str | None, typer.Option(help="Arrivals file (csv/jsonl) or a shared trace's file.")
    ] = None,
    time_field: Annotated[
        str, typer.Option(help="Timestamp field of the arrivals file.")
    ] = "timestamp",
    time_unit: Annotated[str, typer.Option(help="s, ms, us, ns, min or iso.")] = "s",
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
    compress: Annotated[
        float | None, typer.Option(help="Time compression (2 = twice as fast).")
    ] = None,
    multiply: Annotated[float | None, typer.Option(help="Demand multiplier.")] = None,
    surge: Annotated[str | None, typer.Option(help="FACTOR,START_S,RAMP_S[,HOLD_S]")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds to simulate.")] = None,
    policy: Annotated[list[str] | None, typer.Option(help="Policies to compare (repeat).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="Write a PNG here.")] = None,
) -> None:
    """Replay an arrival trace through the fleet under each policy and compare them."""
    if scenario is not None:
        sc = load_scenario(scenario)
    elif fleet is not None and trace is not None:
        sc = Scenario(name=trace, fleet=fleet_from([]), workloads=[])
    else:
        raise typer.BadParameter("give a scenario file, or --fleet and --trace")
    if fleet is not None:
        sc.fleet = load_fleet(fleet)
    if trace is not None:
        target = pool or (str(sc.workloads[0].pool) if sc.workloads else None)
        if target is None:
            keys = list(sc.fleet.pools)
            if not keys:
                raise typer.BadParameter("the fleet has no ServingPool")
            target = str(keys[0])
        from gpufleet.planner.types import PoolKey

        spec = TraceSpec(
            source=trace,
            path=trace_path,
            time_field=time_field,
            time_unit=time_unit,
            work_field=work_field,
            work_scale=work_scale,
        )
        sc.workloads = [WorkloadSpec(PoolKey.parse(target, "default"), profile, spec, Modifiers())]
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
    prepared = prepare(sc, traces)
    results = compare(prepared, policy or list(policies.NAMES), show_progress=sys.stderr.isatty())
    if json_out:
        typer.echo(report.dumps(report.as_json(sc.name, results)))
    else:
        report.print_table(sc.name, results)
    if plot_path is not None:
        plot(results, plot_path, sc.name)

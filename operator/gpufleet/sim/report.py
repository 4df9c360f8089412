"""Results for people (a rich table) and machines (JSON)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from gpufleet.sim.metrics import RunResult

COLUMNS = [
    ("SLO met", "sloAttainment", "{:.2%}"),
    ("p50 wait s", "p50WaitSeconds", "{:.0f}"),
    ("p99 wait s", "p99WaitSeconds", "{:.0f}"),
    ("GPU-h", "gpuHours", "{:.1f}"),
    ("cost $", "costDollars", "{:,.0f}"),
    ("kWh", "energyKwh", "{:,.1f}"),
    ("peak kW", "peakKw", "{:.1f}"),
    ("kW·s over cap", "overCapKws", "{:,.0f}"),
    ("burst", "burstShare", "{:.1%}"),
    ("scale actions", "scaleActions", "{}"),
    ("x real time", "speedup", "{:,.0f}"),
]


def table(scenario: str, results: list[RunResult]) -> Table:
    t = Table(title=f"gpufleet simulate: {scenario}")
    t.add_column("policy")
    for head, _, _ in COLUMNS:
        t.add_column(head, justify="right")
    for r in results:
        s = r.summary()
        t.add_row(
            r.policy,
            *[fmt.format(s[key]) if s[key] is not None else "-" for _, key, fmt in COLUMNS],
        )
    return t


def print_table(scenario: str, results: list[RunResult], console: Console | None = None) -> None:
    (console or Console()).print(table(scenario, results))


def as_json(scenario: str, results: list[RunResult]) -> dict[str, Any]:
    return {"scenario": scenario, "policies": [r.summary() for r in results]}


def markdown(scenario: str, results: list[RunResult]) -> str:
    head = "| policy | " + " | ".join(h for h, _, _ in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    rows = []
    for r in results:
        s = r.summary()
        cells = [fmt.format(s[key]) if s[key] is not None else "-" for _, key, fmt in COLUMNS]
        rows.append(f"| {r.policy} | " + " | ".join(cells) + " |")
    return "\n".join([f"### {scenario}", "", head, rule, *rows, ""])


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))

"""Results for people (a rich table) and machines (JSON)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from gpufleet.sim.metrics import RunResult

# "SLO met" counts throttled requests as misses; "admitted in SLO" is of admitted requests
COLUMNS = [
    ("SLO met", "sloAttainment", "{:.2%}"),
    ("admitted in SLO", "admittedSloAttainment", "{:.2%}"),
    ("throttled", "throttledShare", "{:.2%}"),
    ("p50 wait s", "p50WaitSeconds", "{:.0f}"),
    ("p99 wait s", "p99WaitSeconds", "{:.0f}"),
    ("GPU-h", "gpuHours", "{:.1f}"),
    ("GPU-h / oracle", "gpuHoursOverOracle", "{:.2f}"),
    ("cost $", "costDollars", "{:,.0f}"),
    ("kWh", "energyKwh", "{:,.1f}"),
    ("peak kW", "peakKw", "{:.1f}"),
    ("kW·s over cap", "overCapKws", "{:,.0f}"),
    ("burst", "burstShare", "{:.1%}"),
    ("scale actions", "scaleActions", "{}"),
    ("x real time", "speedup", "{:,.0f}"),
]


# A pipe has no width: rich would wrap to 80 columns and cut cells to "gp…". This is wide
# enough for any row, and a table that does not expand keeps its natural width.
PIPE_WIDTH = 10_000


def _oracle_gpu_hours(results: list[RunResult]) -> float | None:
    return next((r.gpu_hours for r in results if r.policy == "oracle"), None)


def _summary(r: RunResult, oracle: float | None) -> dict[str, Any]:
    """The run's figures, and GPU-hours as a multiple of the oracle's where it ran."""
    s = r.summary()
    s["gpuHoursOverOracle"] = round(r.gpu_hours / oracle, 4) if oracle else None
    return s


def _rows(results: list[RunResult]) -> list[tuple[str, list[str]]]:
    """Each policy's cells."""
    oracle = _oracle_gpu_hours(results)
    rows = []
    for r in results:
        s = _summary(r, oracle)
        cells = [fmt.format(s[key]) if s[key] is not None else "-" for _, key, fmt in COLUMNS]
        rows.append((r.policy, cells))
    return rows


def table(scenario: str, results: list[RunResult]) -> Table:
    t = Table(title=f"gpufleet simulate: {scenario}")
    t.add_column("policy", overflow="fold")  # a narrow terminal folds cells, never cuts them
    for head, _, _ in COLUMNS:
        t.add_column(head, justify="right", overflow="fold")
    for policy, cells in _rows(results):
        t.add_row(policy, *cells)
    return t


POOL_HEAD = (
    "policy",
    "pool",
    "tier",
    "requests",
    "throttled",
    "SLO met",
    "admitted in SLO",
    "worst hour",
    "p99 wait s",
    "admitted/published",
    "Wh/request",
)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def pool_rows(results: list[RunResult]) -> list[list[str]]:
    """Per pool, then per tier: SLO attainment and waits of admitted requests, the share
    the gateway throttled, and Wh per served request (the pool's; tiers share it)."""
    rows = []
    for r in results:
        for name, pool in r.pools.items():
            s = pool.summary()
            wh = s["whPerRequest"]
            rows.append(
                [
                    r.policy,
                    name,
                    "all",
                    f"{s['requests']:,.0f}",
                    _pct(s["throttledShare"]),
                    _pct(s["sloAttainment"]),
                    _pct(s["admittedSloAttainment"]),
                    _pct(s["worstHourSloAttainment"]),
                    f"{s['p99WaitSeconds']:.0f}",
                    "-",
                    "-" if wh is None else f"{wh:.3f}",
                ]
            )
            for tier, t in s.get("tiers", {}).items():
                ratio = t["admittedOverPublished"]
                rows.append(
                    [
                        r.policy,
                        name,
                        tier,
                        f"{t['requests']:,.0f}",
                        _pct(t["throttledShare"]),
                        _pct(t["sloAttainment"]),
                        _pct(t["admittedSloAttainment"]),
                        "-",
                        f"{t['p99WaitSeconds']:.0f}",
                        "-" if ratio is None else f"{ratio:.2f}",
                        "-",
                    ]
                )
    return rows


def per_pool(results: list[RunResult]) -> bool:
    """Whether a run has more than one pool or any tiers, so a per-pool table says more."""
    return any(len(r.pools) > 1 or any(p.tiers for p in r.pools.values()) for r in results)


def pool_table(scenario: str, results: list[RunResult]) -> Table:
    t = Table(title=f"gpufleet simulate: {scenario}, per pool and tier")
    for i, head in enumerate(POOL_HEAD):
        t.add_column(head, justify="left" if i < 3 else "right", overflow="fold")
    for row in pool_rows(results):
        t.add_row(*row)
    return t


def stdout_console() -> Console:
    """The terminal's width on a terminal; piped, wide enough that no cell is cut."""
    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)


def print_table(scenario: str, results: list[RunResult], console: Console | None = None) -> None:
    console = console or stdout_console()
    console.print(table(scenario, results))
    if per_pool(results):
        console.print(pool_table(scenario, results))


def as_json(scenario: str, results: list[RunResult]) -> dict[str, Any]:
    """What the table shows and more: each policy's summary with its GPU-hours over the
    oracle's, and the oracle's GPU-hours (None where the oracle did not run)."""
    oracle = _oracle_gpu_hours(results)
    return {
        "scenario": scenario,
        "oracleGpuHours": round(oracle, 2) if oracle is not None else None,
        "policies": [_summary(r, oracle) for r in results],
    }


def markdown(scenario: str, results: list[RunResult]) -> str:
    head = "| policy | " + " | ".join(h for h, _, _ in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    rows = [f"| {policy} | " + " | ".join(cells) + " |" for policy, cells in _rows(results)]
    out = [f"### {scenario}", "", head, rule, *rows, ""]
    if per_pool(results):
        out += [
            "| " + " | ".join(POOL_HEAD) + " |",
            "|---|---|---|" + "---:|" * (len(POOL_HEAD) - 3),
            *["| " + " | ".join(row) + " |" for row in pool_rows(results)],
            "",
        ]
    return "\n".join(out)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def below_the_oracle(results: list[RunResult]) -> list[str]:
    """Policies that beat the oracle's GPU-hours at an equal or higher SLO attainment: none
    may, as the oracle is a lower bound (empty where the oracle did not run)."""
    oracle = next((r for r in results if r.policy == "oracle"), None)
    if oracle is None:
        return []
    return [
        r.policy
        for r in results
        if r is not oracle
        and r.slo_attainment >= oracle.slo_attainment - 1e-9
        and r.gpu_hours < oracle.gpu_hours - 1e-9
    ]

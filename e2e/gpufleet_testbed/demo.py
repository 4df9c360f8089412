"""`make demo` (`python -m gpufleet_testbed.demo`): the operator on the local test bed, a
simulated surge, a live view. It lives with the test bed, not in the product: the operator
image ships no test-bed code."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from gpufleet_testbed import testbed
from gpufleet_testbed.layout import repo_root
from gpufleet_testbed.operator import OperatorProcess
from gpufleet_testbed.player import Player, PoolPlay, Surge

REPO = repo_root()


def _pools_table(pools: list[dict[str, Any]], player: Any) -> Table:
    table = Table(title="ServingPools", expand=True)
    for column in (
        "pool",
        "queue",
        "running",
        "desired",
        "per provider",
        "burst %",
        "ready",
        "why",
    ):
        table.add_column(column)
    for pool in pools:
        meta, status = pool["metadata"], pool.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        key = (meta["namespace"], meta["name"])
        per = ", ".join(
            f"{p['provider']} {p['currentReplicas']}/{p['desiredReplicas']}"
            for p in status.get("providers", [])
        )
        why = next(
            (
                c["reason"]
                for t in (
                    "CapacityAvailable",
                    "PowerLimited",
                    "ScalingLimited",
                    "BurstActive",
                    "MetricsAvailable",
                )
                if (c := conditions.get(t))
                and c["status"]
                == ("False" if t in ("CapacityAvailable", "MetricsAvailable") else "True")
            ),
            "",
        )
        table.add_row(
            f"{meta['namespace']}/{meta['name']}",
            f"{player.queues.get(key, 0):.0f}",
            str(player.replicas.get(key, 0)),
            str(status.get("desiredReplicas", "")),
            per,
            str(status.get("burstPercent", "")),
            conditions.get("Ready", {}).get("status", "?"),
            why,
        )
    return table


def _capacity_table(providers: list[dict[str, Any]], budgets: list[dict[str, Any]]) -> Table:
    table = Table(title="Providers and power", expand=True)
    for column in (
        "object",
        "role / cap",
        "nodes ready",
        "GPUs planned",
        "kW drawn",
        "kW allowed",
        "state",
    ):
        table.add_column(column)
    for provider in providers:
        spec, status = provider["spec"], provider.get("status") or {}
        table.add_row(
            f"CloudProvider {provider['metadata']['name']}",
            f"{spec['role']} ({spec['subprocessor']['jurisdiction']}{'' if spec['subprocessor'].get('approved') else ', not approved'})",
            str(status.get("readyNodes", 0)),
            str(status.get("gpusInUse", 0)),
            "",
            "",
            "",
        )
    for budget in budgets:
        status = budget.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        table.add_row(
            f"PowerBudget {budget['metadata']['name']}",
            f"{budget['spec']['capKilowatts']} kW",
            "",
            "",
            f"{status.get('drawnWatts', 0) / 1000:.1f}",
            f"{status.get('allowedWatts', 0) / 1000:.1f}",
            "cap reached" if conditions.get("CapReached", {}).get("status") == "True" else "",
        )
    return table


def demo(
    minutes: Annotated[float, typer.Option(help="Length of the surge replay.")] = 4.0,
    name: Annotated[str, typer.Option(help="Name of the local test bed.")] = "demo",
    keep: Annotated[bool, typer.Option(help="Leave the test bed running afterwards.")] = False,
) -> None:
    """Start the test bed, apply the demo fleet, run the operator and replay a viral surge."""
    total = minutes * 60
    surge = Surge(
        base=0.5, factor=12, start=20, ramp=0.3 * total, hold=0.25 * total, fall=0.05 * total
    )
    plays = [
        PoolPlay("demo-chat", "chat", "chat", Surge(base=1.0), per_replica=0.5),
        PoolPlay("demo-image", "image-gen", "image-gen", surge, per_replica=0.25),
    ]
    bed = testbed.up(name, gpu_nodes=0)
    kubectl = bed.kubectl()
    operator = OperatorProcess(bed, bed.directory / "logs" / "operator.log")
    peaks: dict[str, float] = {}
    try:
        kubectl.run("apply", "--server-side", "-f", str(REPO / "crds"))
        kubectl.run("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        kubectl.run("create", "namespace", "gpufleet-system", check=False)
        kubectl.run("apply", "--server-side", "-f", str(REPO / "examples" / "demo"))
        operator.start()
        player = Player(kubectl, bed.exporter(), plays)
        start = last = time.monotonic()
        with Live(refresh_per_second=2) as live:
            while (now := time.monotonic()) - start < total:
                player.step(now - start, now - last)
                last = now
                pools = kubectl.json("get", "servingpools", "-A")["items"]
                providers = kubectl.json("get", "cloudproviders")["items"]
                budgets = kubectl.json("get", "powerbudgets")["items"]
                for provider in providers:
                    name_ = provider["metadata"]["name"]
                    peaks[name_] = max(
                        peaks.get(name_, 0), (provider.get("status") or {}).get("readyNodes", 0)
                    )
                for budget in budgets:
                    drawn = (budget.get("status") or {}).get("drawnWatts", 0) / 1000
                    peaks[f"kW {budget['metadata']['name']}"] = max(
                        peaks.get(f"kW {budget['metadata']['name']}", 0), drawn
                    )
                header = (
                    f"t={now - start:5.0f}s  image-gen demand {surge.rate(now - start):.1f} req/s"
                )
                live.update(
                    Group(header, _pools_table(pools, player), _capacity_table(providers, budgets))
                )
                time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        summary = Table(title="Summary: peaks during the surge")
        summary.add_column("what")
        summary.add_column("peak")
        for what, value in sorted(peaks.items()):
            summary.add_row(
                what if what.startswith("kW") else f"ready nodes {what}", f"{value:.1f}"
            )
        from rich.console import Console

        Console().print(summary)
        typer.echo(f"operator log: {operator.log}")
    finally:
        operator.stop()
        if not keep:
            testbed.down(name, quiet=True)


if __name__ == "__main__":
    typer.run(demo)

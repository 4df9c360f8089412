"""`--plot out.png`: demand and capacity per provider, queue wait against the SLO, kW
against each cap; one column per policy."""

from __future__ import annotations

from pathlib import Path

from gpufleet.sim.metrics import RunResult


class PlotUnavailable(RuntimeError):
    """matplotlib cannot be imported; `reason` is CamelCase."""

    reason = "PlotUnavailable"


def check_available() -> None:
    """Import what `plot` needs, so a missing matplotlib fails before a long run, not after."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # the import is the check
    except ImportError as e:
        raise PlotUnavailable(f"matplotlib cannot be imported ({e}); pip install matplotlib") from e


def plot(results: list[RunResult], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(results)
    providers = sorted({p for r in results for p in r.series.capacity_rps})
    colors = {p: f"C{i}" for i, p in enumerate(providers)}  # the same in every column
    fig, axes = plt.subplots(3, cols, figsize=(4.2 * cols, 8), sharex=True, squeeze=False)
    for c, r in enumerate(results):
        s = r.series
        hours = [t / 3600.0 for t in s.t]
        ax = axes[0][c]
        for i, (name, ys) in enumerate(s.demand_rps.items()):  # one line style per pool
            style = ("-", "--", ":", "-.")[i % 4]
            ax.plot(hours, ys, color="black", ls=style, lw=1, label=f"demand {name}")
        for prov, ys in s.capacity_rps.items():
            if any(ys):
                ax.plot(hours, ys, lw=1, color=colors[prov], label=f"capacity {prov}")
        ax.set_title(r.policy)
        ax.set_ylabel("requests/s")
        ax.legend(fontsize=6)
        ax = axes[1][c]
        for name, ys in s.head_wait.items():
            ax.plot(hours, ys, lw=1, label=f"oldest wait {name}")
            ax.axhline(r.pools[name].slo_seconds, ls="--", color="red", lw=0.8)
        ax.set_yscale("symlog")
        ax.set_ylim(bottom=0)
        ax.set_ylabel("queue wait s (SLO dashed)")
        ax.legend(fontsize=6)
        ax = axes[2][c]
        for name, ys in s.budget_kw.items():
            line = ax.plot(hours, ys, lw=1, label=f"{name}")[0]
            ax.plot(hours, s.cap_kw[name], ls="--", lw=0.8, color=line.get_color())
        ax.set_ylabel("kW (cap dashed)")
        ax.set_xlabel("hours")
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)

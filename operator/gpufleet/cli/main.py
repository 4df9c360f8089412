"""The `gpufleet` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpufleet.api import crd
from gpufleet.cli.inspect import explain, status
from gpufleet.cli.run import run
from gpufleet.sim.cli import simulate

app = typer.Typer(no_args_is_help=True, help="Autoscale GPU inference fleets across clouds.")
app.command()(simulate)
app.command()(run)
app.command()(status)
app.command()(explain)


@app.command()
def crds(
    directory: Annotated[Path, typer.Option("--dir", help="Where the CRD YAML lives.")] = Path(
        "crds"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Fail if the files differ from the models.")
    ] = False,
) -> None:
    """Write the CRDs generated from the API models (or check them with --check)."""
    if check:
        stale = crd.drift(directory)
        if stale:
            typer.echo(f"CRDs out of date: {', '.join(stale)}; run `gpufleet crds`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{directory}: up to date")
        return
    for path in crd.write(directory):
        typer.echo(f"wrote {path}")


@app.command()
def version() -> None:
    """Print the version."""
    from gpufleet import __version__

    typer.echo(__version__)

"""`kubectl gpufleet`: the fleet commands as a kubectl plugin, so a platform engineer never
leaves kubectl.

kubectl runs any executable named `kubectl-<name>` on PATH for `kubectl <name>`, passing the
rest of the command line; the package installs `kubectl-gpufleet` (this module's `plugin`).
kubectl passes none of its own flags on, so the plugin takes the ones that matter here
itself: `--kubeconfig`, `--context`, and `-n/--namespace` for `explain`. Shell completion
follows kubectl's plugin convention (kubectl 1.26+): for `kubectl gpufleet <TAB>` kubectl
runs `kubectl_complete-gpufleet` with the words typed so far and shows what it prints, one
candidate a line, then a `:<directive>` line as cobra reads it (`complete`).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gpufleet.api.common import GROUP, VERSION
from gpufleet.cli import inspect
from gpufleet.sim.cli import simulate

plugin = typer.Typer(
    name="kubectl gpufleet",
    no_args_is_help=True,
    add_completion=False,  # kubectl's own completion calls kubectl_complete-gpufleet
    help="gpufleet from kubectl: the fleet's status, why a pool is at its size, and the simulator.",
)


@plugin.callback()
def _target(
    kubeconfig: Annotated[
        str | None, typer.Option("--kubeconfig", help="Path to the kubeconfig to use.")
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="The kubeconfig context to use.")
    ] = None,
) -> None:
    inspect.TARGET.kubeconfig, inspect.TARGET.context = kubeconfig, context


@plugin.command()
def status() -> None:
    """A table of the fleet: pools, providers and power budgets, from their status."""
    inspect.status()


@plugin.command()
def explain(
    pool: Annotated[str, typer.Argument(help="NAME, or NAMESPACE/NAME, of the ServingPool.")],
    namespace: Annotated[
        str | None, typer.Option("-n", "--namespace", help="The pool's namespace.")
    ] = None,
) -> None:
    """Why a pool is at its current size: across pod, node, power and burst layers."""
    if "/" not in pool:
        if not namespace:
            raise typer.BadParameter("give the pool as NAMESPACE/NAME, or NAME with -n")
        pool = f"{namespace}/{pool}"
    inspect.explain(pool)


plugin.command()(simulate)

COMMANDS = ("status", "explain", "simulate")
# cobra's ShellCompDirective: 4 is NoFileComp (offer no file names instead).
NO_FILES = ":4"


def candidates(words: list[str], pools: list[str]) -> list[str]:
    """What may come next after `kubectl gpufleet <words>` (the last word is being typed):
    a command, then for `explain` a pool as NAMESPACE/NAME."""
    typed = words[-1] if words else ""
    before = _positional(words[:-1])
    if not before:
        return [c for c in COMMANDS if c.startswith(typed)]
    if before == ["explain"]:
        return [p for p in pools if p.startswith(typed)]
    return []


# Flags whose value is the next word unless written `--flag=value`.
VALUED = frozenset({"--kubeconfig", "--context", "-n", "--namespace"})


def _positional(words: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in VALUED
        else:
            out.append(word)
    return out


def _pool_names() -> list[str]:
    try:
        api = inspect.kube_client()
        items = api.list_cluster_custom_object(GROUP, VERSION, "servingpools")["items"]
    except Exception:  # completion never fails the shell: offer nothing
        return []
    return sorted(f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in items)


def complete() -> None:
    """`kubectl_complete-gpufleet WORD...`: the completions for kubectl's shell completion."""
    words = sys.argv[1:] or [""]
    needs_pools = _positional(words[:-1]) == ["explain"]
    for candidate in candidates(words, _pool_names() if needs_pools else []):
        print(candidate)
    print(NO_FILES)

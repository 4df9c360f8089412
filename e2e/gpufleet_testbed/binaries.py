"""Locating (and if needed building) the test bed's binaries."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gpufleet_testbed.layout import repo_root

TOOLS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "helm",
)


def env_var(tool: str) -> str:
    return "GPUFLEET_" + tool.upper().replace("-", "_") + "_BIN"


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    helm: Path


def _build_script() -> Path:
    return repo_root() / "e2e" / "build.sh"


def _cached_paths() -> dict[str, Path]:
    # build.sh is the one place that knows versions and the cache layout.
    out = subprocess.run(
        ["bash", str(_build_script()), "--print-env"], check=True, capture_output=True, text=True
    ).stdout
    paths: dict[str, Path] = {}
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            paths[key] = Path(value)
    return paths


def locate(*, build: bool = True, tools: tuple[str, ...] = TOOLS) -> Binaries:
    """Paths of every tool: an env override (GPUFLEET_<TOOL>_BIN) wins, else the cache.

    Missing cached tools are built when `build` is true (minutes when cold).
    """
    cached = _cached_paths()
    resolved: dict[str, Path] = {}
    missing: list[str] = []
    for tool in TOOLS:
        override = os.environ.get(env_var(tool))
        path = Path(override) if override else cached[env_var(tool)]
        resolved[tool] = path
        if tool in tools and not path.is_file():
            missing.append(tool)
    if missing:
        if not build:
            raise FileNotFoundError(
                f"test bed binaries not built: {', '.join(missing)}; run e2e/build.sh"
            )
        subprocess.run(["bash", str(_build_script()), *missing], check=True, stdout=sys.stderr)
    return Binaries(**{tool.replace("-", "_"): path for tool, path in resolved.items()})

"""Render the chart with the pinned helm binary (no cluster), and find the pinned tools."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "gpufleet"
BUILD = REPO / "e2e" / "build.sh"
KUBE_VERSION = "1.34.4"  # the test bed's release, e2e/tools/kubernetes
MONITORING = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")


@functools.cache
def _print_env() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(BUILD), "--print-env"], check=True, capture_output=True, text=True
    ).stdout
    return dict(re.findall(r"^export (\w+)=(.*)$", out, flags=re.M))


def helm_binary() -> Path:
    path = Path(os.environ.get("GPUFLEET_HELM_BIN") or _print_env()["GPUFLEET_HELM_BIN"])
    if not path.is_file():
        pytest.skip(f"helm is not built ({path}); run e2e/build.sh helm")
    return path


@functools.cache
def kubeconform_binary() -> Path:
    """Builds kubeconform from e2e/tools/kubeconform when missing (seconds when warm)."""
    override = os.environ.get("GPUFLEET_KUBECONFORM_BIN")
    if override:
        return Path(override)
    out = subprocess.run(
        ["bash", str(BUILD), "kubeconform"], check=True, capture_output=True, text=True, timeout=600
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("build kubeconform"))
    return Path(line.split()[-1])


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_binary()), *args], check=check, capture_output=True, text=True, timeout=120
    )


def template_args(
    values: Mapping[str, Any] | None = None,
    *,
    api_versions: Iterable[str] = (),
    namespace: str = "gpufleet-system",
) -> list[str]:
    args = ["template", "gpufleet", str(CHART), "--namespace", namespace]
    args += ["--kube-version", KUBE_VERSION]
    for version in api_versions:
        args += ["--api-versions", version]
    for key, value in (values or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def render_text(values: Mapping[str, Any] | None = None, **options: Any) -> str:
    return helm(*template_args(values, **options)).stdout


def render(values: Mapping[str, Any] | None = None, **options: Any) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render_text(values, **options)) if d]


def of_kind(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]

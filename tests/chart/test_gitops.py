"""The GitOps paths: the kustomize base is the chart's output and builds, the Argo CD health
checks read the Ready condition, and the examples name the operator's field manager."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.reconcilers.kube import FIELD_MANAGER

from .helm import REPO, _print_env
from .kustomize_base import BASE, rendered

DEPLOY = REPO / "deploy"
KINDS = ("ServingPool", "CloudProvider", "PowerBudget")


def _kubectl() -> Path:
    path = Path(os.environ.get("GPUFLEET_KUBECTL_BIN") or _print_env()["GPUFLEET_KUBECTL_BIN"])
    if not path.is_file():
        pytest.skip(f"kubectl is not built ({path})")
    return path


def test_kustomize_base_is_the_current_chart_output() -> None:
    assert BASE.read_text() == rendered(), "run python tests/chart/kustomize_base.py --write"


@pytest.mark.parametrize("directory", ["base", "overlays/example"])
def test_kustomize_builds(directory: str) -> None:
    out = subprocess.run(
        [str(_kubectl()), "kustomize", str(DEPLOY / "kustomize" / directory)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "ClusterRole"} <= kinds
    for doc in docs:
        if doc["kind"] == "Deployment" and directory != "base":
            assert any(
                a.startswith("--prometheus-url=")
                for a in doc["spec"]["template"]["spec"]["containers"][0]["args"]
            )


def test_argocd_config_map_carries_the_health_checks_verbatim() -> None:
    data = yaml.safe_load((DEPLOY / "argocd" / "argocd-cm-health.yaml").read_text())["data"]
    for kind in KINDS:
        lua = (DEPLOY / "argocd" / "health" / f"{kind}.lua").read_text()
        assert data[f"resource.customizations.health.gpufleet.io_{kind}"] == lua


def test_argocd_example_ignores_what_the_operator_field_manager_owns() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "argocd" / "application.yaml").read_text()))
    ignored = [i for d in docs for i in d["spec"].get("ignoreDifferences", [])]
    assert {(i["group"], i["kind"]) for i in ignored} == {
        ("apps", "Deployment"),
        ("apps", "StatefulSet"),
    }
    assert all(i["managedFieldsManagers"] == [FIELD_MANAGER] for i in ignored)


def test_flux_helm_release_applies_crds_on_upgrade() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "flux" / "helmrelease.yaml").read_text()))
    (release,) = [d for d in docs if d["kind"] == "HelmRelease"]
    assert release["spec"]["upgrade"]["crds"] == "CreateReplace"
    assert release["spec"]["chart"]["spec"]["chart"] == "./charts/gpufleet"


def _health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    lupa = pytest.importorskip("lupa")
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(_to_lua(runtime, obj))
    script = (DEPLOY / "argocd" / "health" / f"{kind}.lua").read_text()
    result = runtime.execute(script)
    return {"status": result["status"], "message": result["message"]}


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_lua(runtime, v) for k, v in value.items()}
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def _obj(generation: int = 1, **status: Any) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, **({"status": status} if status else {})}


def _ready(state: str, reason: str = "Reason") -> dict[str, str]:
    return {"type": "Ready", "status": state, "reason": reason, "message": "text"}


@pytest.mark.parametrize("kind", KINDS)
def test_health_follows_the_ready_condition(kind: str) -> None:
    assert _health(kind, _obj())["status"] == "Progressing"
    ok = _obj(
        observedGeneration=1, conditions=[{"type": "Other", "status": "False"}, _ready("True")]
    )
    assert _health(kind, ok)["status"] == "Healthy"
    bad = _health(kind, _obj(observedGeneration=1, conditions=[_ready("False", "QueryFailed")]))
    assert bad == {"status": "Degraded", "message": "QueryFailed: text"}
    stale = _obj(generation=2, observedGeneration=1, conditions=[_ready("True")])
    assert _health(kind, stale)["status"] == "Progressing"

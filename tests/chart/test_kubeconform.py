"""`helm template` output validated by kubeconform (built from e2e/tools/kubeconform) against
the Kubernetes v1.34 schemas and our CRDs, with every optional object switched on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from .helm import MONITORING, REPO, kubeconform_binary, render_text, template_args
from .schemas import LOCATION, write_crd_schemas, write_kubernetes_schemas

ALL_ON = {
    "operator.watchNamespaces": ["team-a"],
    "operator.prometheusUrl": "http://prometheus.monitoring:9090",
    "rbac.secretNamespaces": ["clouds"],
    "networkPolicy.enabled": True,
    "networkPolicy.metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
    "imagePullSecrets": ["registry"],
    "podAnnotations": {"a": "b"},
}
# The Prometheus Operator's kinds have no schema here (no network); everything else must have one.
SKIP = "ServiceMonitor,PrometheusRule"


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("schemas")
    kinds = set()
    for values in ({}, ALL_ON):
        for doc in yaml.safe_load_all(render_text(values, api_versions=MONITORING)):
            if doc and doc["kind"] not in SKIP.split(","):
                group, _, version = doc["apiVersion"].rpartition("/")
                kinds.add((group, version, doc["kind"]))
    kinds.add(("apiextensions.k8s.io", "v1", "CustomResourceDefinition"))
    kinds.add(("", "v1", "Namespace"))  # examples/namespace.yaml
    # examples/tenancy.yaml: the platform's side of the two tenants.
    kinds.add(("scheduling.k8s.io", "v1", "PriorityClass"))
    kinds.add(("", "v1", "ResourceQuota"))
    write_kubernetes_schemas(directory, kinds)
    write_crd_schemas(directory)
    return directory


def _kubeconform(schemas: Path, documents: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(kubeconform_binary()),
            "-strict",
            "-summary",
            "-skip",
            SKIP,
            "-schema-location",
            f"{schemas}/{LOCATION}",
            "-",
        ],
        input=documents,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("values", [{}, ALL_ON], ids=["defaults", "all-options"])
def test_rendered_chart_passes_kubeconform(schemas: Path, values: dict[str, object]) -> None:
    from .helm import helm

    text = helm(*template_args(values, api_versions=MONITORING), "--include-crds").stdout
    result = _kubeconform(schemas, text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invalid: 0, Errors: 0" in result.stdout


def test_kubeconform_rejects_a_wrong_field(schemas: Path) -> None:
    text = render_text().replace("revisionHistoryLimit: 5", "revisionHistoryLimits: 5")
    result = _kubeconform(schemas, text)
    assert result.returncode != 0
    assert "revisionHistoryLimits" in result.stdout


def test_example_fleet_passes_kubeconform_against_our_crds(schemas: Path) -> None:
    documents = "\n---\n".join(p.read_text() for p in sorted((REPO / "examples").glob("*.yaml")))
    result = _kubeconform(schemas, documents)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_invalid_example_fails_kubeconform_against_our_crds(schemas: Path) -> None:
    text = (REPO / "examples" / "invalid" / "pool-unknown-field.yaml").read_text()
    assert _kubeconform(schemas, text).returncode != 0

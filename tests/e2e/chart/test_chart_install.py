"""The chart on the test bed: `helm install`, then the operator run out of cluster with the
chart's ServiceAccount token (kwok pods run no containers) through a surge: every reconcile
works, nothing is forbidden, the operator's field manager owns only status and scale, and
`helm uninstall` leaves no operator objects behind."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "gpufleet"
RELEASE, NAMESPACE = "gpufleet", "gpufleet-system"
NS, PROVIDER = "e2e-chart", "e2e-chart-cloud"
APPLIER = "e2e-user"  # the field manager of the "user" (GitOps) in this test


def _helm(bed: Testbed, *args: str) -> str:
    import subprocess

    result = subprocess.run(
        [str(bed.helm_binary), "--kubeconfig", str(bed.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _until(probe: Callable[[], Any], timeout: float, what: str, log: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}\n{log()}")


def _fleet() -> list[dict[str, Any]]:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat", "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "chat"}},
            "template": {
                "metadata": {"labels": {"app": "chat"}},
                "spec": {
                    "nodeSelector": {"gpufleet.io/provider": PROVIDER},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "server",
                            "image": "example.com/server:1",
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                        }
                    ],
                },
            },
        },
    }
    pool = {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": "chat", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"name": "chat"},
            "gpuTypes": ["H100"],
            "queue": {
                "query": f'sum(inference_queue_depth{{namespace="{NS}",pool="chat"}})',
                "targetPerReplica": 2,
            },
            "minReplicas": 1,
            "maxReplicas": 16,
            "modelLoadSeconds": 1,
            "dataPolicy": {"allowedJurisdictions": ["DE"]},
            "behavior": {
                "scaleUp": {"policies": [{"type": "Pods", "value": 100, "periodSeconds": 1}]}
            },
        },
    }
    provider = {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "CloudProvider",
        "metadata": {"name": PROVIDER},
        "spec": {
            "subprocessor": {
                "legalEntity": "Chart Cloud GmbH",
                "jurisdiction": "DE",
                "approved": True,
                "dataClasses": ["Internal"],
            },
            "driver": {"type": "Simulated"},
            "gpuQuota": 16,
            "nodePools": [
                {
                    "name": "h100",
                    "gpuType": "H100",
                    "gpusPerNode": 8,
                    "wattsPerGpu": 300,
                    "idleWattsPerGpu": 50,
                    "maxNodes": 2,
                    "bootSeconds": 1,
                    "site": "chart-site",
                }
            ],
        },
    }
    budget = {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "PowerBudget",
        "metadata": {"name": "chart-site"},
        "spec": {"capKilowatts": 100, "scope": {"sites": ["chart-site"]}},
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        provider,
        budget,
        deployment,
        pool,
    ]


def _token_kubeconfig(bed: Testbed, kubectl: Kubectl, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount, nothing else."""
    admin = json.loads(bed.kubeconfig.read_text())
    token = kubectl.run(
        "create", "token", RELEASE, "-n", NAMESPACE, "--duration=10m"
    ).stdout.strip()
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "bed", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "bed", "user": "sa"}}],
        "current-context": "sa",
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def installed(testbed: Testbed, kubectl: Kubectl) -> Iterator[str]:
    kubectl.run("create", "namespace", NAMESPACE, check=False)
    notes = _helm(
        testbed,
        "install",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--set",
        f"operator.prometheusUrl={testbed.prometheus_url or ''}",
        "--wait=false",
    )
    kubectl.run("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    try:
        yield notes
    finally:
        _helm(testbed, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "60s")


@pytest.fixture(scope="module")
def operator(
    installed: str, testbed: Testbed, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    kubeconfig = _token_kubeconfig(testbed, kubectl, tmp_path_factory.mktemp("sa") / "sa.json")
    kubectl.run(
        "apply",
        "--server-side",
        f"--field-manager={APPLIER}",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": _fleet()}),
    )
    testbed.exporter().set_queue(NS, "chat", 0)
    process = OperatorProcess(
        testbed,
        testbed.directory / "logs" / "operator-chart.log",
        env={"KUBECONFIG": str(kubeconfig)},
        extra_args=("--operator-namespace", NAMESPACE),
    ).start()
    try:
        yield process
    finally:
        process.stop()
        kubectl.run("delete", "namespace", NS, "--wait=false", check=False)
        kubectl.run("delete", "cloudprovider", PROVIDER, "--wait=false", check=False)
        kubectl.run("delete", "powerbudget", "chart-site", "--wait=false", check=False)
        kubectl.run("delete", "nodes", "-l", f"gpufleet.io/provider={PROVIDER}", check=False)


def test_install_prints_next_steps(installed: str) -> None:
    assert "kubectl apply --server-side" in installed
    assert "InferencePool" in installed


def test_surge_reconciles_with_the_chart_service_account_and_nothing_is_forbidden(
    operator: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    testbed.exporter().set_queue(NS, "chat", 8)  # 4 replicas
    _until(
        lambda: kubectl.json("get", "deployment", "-n", NS, "chat")["spec"]["replicas"] == 4,
        60,
        "the Deployment scaled to 4",
        operator.tail,
    )
    _until(
        lambda: kubectl.json("get", "nodes", "-l", f"gpufleet.io/provider={PROVIDER}")["items"],
        60,
        "a simulated GPU node",
        operator.tail,
    )
    for kind, name in (("cloudprovider", PROVIDER), ("powerbudget", "chart-site")):
        _until(
            lambda k=kind, n=name: kubectl.json("get", k, n).get("status", {}).get("conditions"),
            30,
            f"{kind} status",
            operator.tail,
        )
    pool = kubectl.json("get", "inferencepool", "-n", NS, "chat")
    assert pool["status"]["desiredReplicas"] == 4
    log = Path(operator.log).read_text(errors="replace")
    assert "403" not in log and "orbidden" not in log, operator.tail(40)
    assert "fleet reconcile failed" not in log, operator.tail(40)
    assert "gpufleet_reconcile_errors_total{" not in operator.metrics()


def test_operator_field_manager_owns_only_status_and_scale(
    operator: OperatorProcess, kubectl: Kubectl
) -> None:
    # Runs after the surge (module order): status and scale have been written.
    shown = "--show-managed-fields"
    objects = [
        kubectl.json("get", "inferencepool", "-n", NS, "chat", shown),
        kubectl.json("get", "cloudprovider", PROVIDER, shown),
        kubectl.json("get", "powerbudget", "chart-site", shown),
    ]
    for obj in objects:
        ours = [m for m in obj["metadata"]["managedFields"] if m["manager"] != APPLIER]
        assert ours, obj["kind"]
        for entry in ours:
            assert entry["manager"] == "gpufleet", entry
            assert entry.get("subresource") == "status", (obj["kind"], entry)
    deployment = kubectl.json("get", "deployment", "-n", NS, "chat", shown)
    assert any(m["manager"] == "gpufleet" for m in deployment["metadata"]["managedFields"])
    for entry in deployment["metadata"]["managedFields"]:
        if entry["manager"] == "gpufleet":
            assert entry.get("subresource") == "scale", entry
            assert set(entry["fieldsV1"]) == {"f:spec"}
            assert set(entry["fieldsV1"]["f:spec"]) == {"f:replicas"}


def test_uninstall_leaves_no_operator_objects(testbed: Testbed, kubectl: Kubectl) -> None:
    _helm(testbed, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "60s")
    try:
        selector = f"app.kubernetes.io/instance={RELEASE}"
        for kinds, flags in (
            (
                "deployment,service,serviceaccount,role,rolebinding,configmap,poddisruptionbudget",
                ("-n", NAMESPACE),
            ),
            ("clusterrole,clusterrolebinding", ()),
        ):
            _until(
                lambda k=kinds, f=flags: not kubectl.json("get", k, *f, "-l", selector)["items"],
                60,
                f"no {kinds} left",
                lambda: "",
            )
    finally:
        # The module fixture uninstalls again; give it a release to remove.
        _helm(testbed, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--wait=false")

"""The chart on the test bed: `helm install`, then the operator run out of cluster with the
chart's ServiceAccount token (kwok pods run no containers) through a surge: every reconcile
works, nothing is forbidden, the operator's field manager owns only status and scale, and
`helm uninstall` leaves no operator objects behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "gpufleet"
RELEASE, NAMESPACE = "gpufleet", "gpufleet-system"
NS, PROVIDER, SITE = "e2e-chart", "e2e-chart-cloud", "chart-site"
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


def _fleet() -> list[dict[str, Any]]:
    h100 = fleets.node_pool(
        "h100", gpu_type="H100", site=SITE, max_nodes=2, watts_per_gpu=300, idle_watts_per_gpu=50
    )
    return [
        fleets.namespace(NS),
        fleets.cloud_provider(
            PROVIDER, legal_entity="Chart Cloud GmbH", gpu_quota=16, node_pools=[h100]
        ),
        fleets.power_budget(SITE, cap_kilowatts=100),
        fleets.deployment(NS, "chat", node_selector={fleets.PROVIDER_LABEL: PROVIDER}),
        fleets.serving_pool(
            NS, "chat", gpu_types=["H100"], max_replicas=16, behavior=fleets.behavior()
        ),
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
    objects = _fleet()
    fleets.apply(kubectl, objects, field_manager=APPLIER)
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
        fleets.delete(kubectl, objects)
        kubectl.run("delete", "nodes", "-l", f"gpufleet.io/provider={PROVIDER}", check=False)


def test_install_prints_next_steps(installed: str) -> None:
    assert "kubectl apply --server-side" in installed
    assert "ServingPool" in installed


def test_surge_reconciles_with_the_chart_service_account_and_nothing_is_forbidden(
    operator: OperatorProcess, testbed: Testbed, kubectl: Kubectl
) -> None:
    testbed.exporter().set_queue(NS, "chat", 8)  # 4 replicas
    wait_for(
        lambda: kubectl.json("get", "deployment", "-n", NS, "chat")["spec"]["replicas"] == 4,
        60,
        "the Deployment scaled to 4",
        operator,
    )
    wait_for(
        lambda: kubectl.json("get", "nodes", "-l", f"gpufleet.io/provider={PROVIDER}")["items"],
        60,
        "a simulated GPU node",
        operator,
    )
    for kind, name in (("cloudprovider", PROVIDER), ("powerbudget", SITE)):
        wait_for(
            lambda k=kind, n=name: kubectl.json("get", k, n).get("status", {}).get("conditions"),
            30,
            f"{kind} status",
            operator,
        )
    pool = kubectl.json("get", "servingpool", "-n", NS, "chat")
    assert pool["status"]["desiredReplicas"] == 4
    log = Path(operator.log).read_text(errors="replace")
    # "(403)" as the client writes a refusal: a bare "403" also occurs in timestamps.
    assert "(403)" not in log and "orbidden" not in log, operator.tail(40)
    assert "fleet reconcile failed" not in log, operator.tail(40)
    assert "gpufleet_reconcile_errors_total{" not in operator.metrics()


def test_operator_field_manager_owns_only_status_and_scale(
    operator: OperatorProcess, kubectl: Kubectl
) -> None:
    # Runs after the surge (module order): status and scale have been written.
    shown = "--show-managed-fields"
    objects = [
        kubectl.json("get", "servingpool", "-n", NS, "chat", shown),
        kubectl.json("get", "cloudprovider", PROVIDER, shown),
        kubectl.json("get", "powerbudget", SITE, shown),
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
            wait_for(
                lambda k=kinds, f=flags: not kubectl.json("get", k, *f, "-l", selector)["items"],
                60,
                f"no {kinds} left",
            )
    finally:
        # The module fixture uninstalls again; give it a release to remove.
        _helm(testbed, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--wait=false")

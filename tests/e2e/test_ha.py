"""Two operator replicas with leader election (kopf peering) on the test bed: one acts, the
other waits; SIGKILL the leader during a surge and the standby scales the pool within 15 s,
with no action issued twice. Waits poll to a deadline; no fixed sleeps."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpufleet.reconcilers.intent import record_of
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NS = "e2e-ha"
PROVIDER = "e2e-ha-cloud"
PEERING = "gpufleet-e2e-ha"
TAKEOVER_SECONDS = 15
APPLIED = re.compile(r"applied (\S+?)[\"\s]")


def _fleet() -> list[dict[str, Any]]:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "surge", "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "surge"}},
            "template": {
                "metadata": {"labels": {"app": "surge"}},
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
        "metadata": {"name": "surge", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"name": "surge"},
            "gpuTypes": ["H100"],
            "queue": {
                "query": f'sum(inference_queue_depth{{namespace="{NS}",pool="surge"}})',
                "targetPerReplica": 2,
            },
            "minReplicas": 1,
            "maxReplicas": 40,
            "modelLoadSeconds": 1,
            "dataPolicy": {"allowedJurisdictions": ["DE"]},
            "behavior": {
                "scaleUp": {"policies": [{"type": "Pods", "value": 100, "periodSeconds": 1}]},
                "scaleDown": {"stabilizationWindowSeconds": 60},
            },
        },
    }
    provider = {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "CloudProvider",
        "metadata": {"name": PROVIDER},
        "spec": {
            "subprocessor": {
                "legalEntity": "E2E HA Cloud GmbH",
                "jurisdiction": "DE",
                "approved": True,
                "dataClasses": ["Internal"],
            },
            "driver": {"type": "Simulated"},
            "gpuQuota": 80,
            "nodePools": [
                {
                    "name": "h100",
                    "gpuType": "H100",
                    "gpusPerNode": 8,
                    "wattsPerGpu": 300,
                    "idleWattsPerGpu": 50,
                    "nodeOverheadWatts": 500,
                    "maxNodes": 10,
                    "bootSeconds": 1,
                    "site": "e2e-ha-site",
                }
            ],
        },
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    return [namespace, provider, deployment, pool]


def _peering_crd(testbed: Testbed) -> str:
    """kopf's peering CRD exactly as the chart installs it."""
    return subprocess.run(
        [
            str(testbed.helm_binary),
            "template",
            "gpufleet",
            str(REPO / "charts" / "gpufleet"),
            "--namespace",
            "gpufleet-system",
            "--kube-version",
            "1.34.4",
            "--show-only",
            "templates/peering-crd.yaml",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def _replica(testbed: Testbed, name: str, priority: int) -> OperatorProcess:
    return OperatorProcess(
        testbed,
        testbed.directory / "logs" / f"operator-ha-{name}.log",
        extra_args=(
            "--leader-election",
            "--peering-name",
            PEERING,
            "--peering-priority",
            str(priority),
            "--peering-lifetime",
            "10",
        ),
        env={"POD_ID": f"ha-{name}"},
    )


@pytest.fixture(scope="module")
def fleet(testbed: Testbed, kubectl: Kubectl) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    kubectl.run("apply", "--server-side", "-f", str(REPO / "crds"))
    kubectl.run("apply", "--server-side", "-f", "-", stdin=_peering_crd(testbed))
    kubectl.run("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    kubectl.run("create", "namespace", "gpufleet-system", check=False)
    kubectl.run(
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": _fleet()}),
    )
    testbed.exporter().set_queue(NS, "surge", 0)
    leader = _replica(testbed, "a", 200).start()
    standby = _replica(testbed, "b", 100)
    try:
        standby.start()
        yield leader, standby
    finally:
        for process in (leader, standby):
            process.stop()
        kubectl.run("delete", "namespace", NS, "--wait=false", check=False)
        kubectl.run("delete", "cloudprovider", PROVIDER, "--wait=false", check=False)
        kubectl.run("delete", "clusterkopfpeering", PEERING, "--wait=false", check=False)


def _until(probe: Callable[[], Any], timeout: float, what: str, *logs: OperatorProcess) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.log.name}\n{p.tail(20)}" for p in logs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}\n{tails}")


def _replicas(kubectl: Kubectl) -> int:
    return int(kubectl.json("get", "deployment", "-n", NS, "surge")["spec"]["replicas"])


def _applied(process: OperatorProcess) -> list[str]:
    """The action ids this replica applied, in order (from its log)."""
    if not process.log.exists():
        return []
    return APPLIED.findall(process.log.read_text(errors="replace"))


def _peers(kubectl: Kubectl) -> dict[str, Any]:
    body = kubectl.json("get", "clusterkopfpeering", PEERING)
    return dict(body.get("status") or {})


def test_standby_takes_over_a_killed_leader_within_15s_without_duplicate_actions(
    fleet: tuple[OperatorProcess, OperatorProcess], testbed: Testbed, kubectl: Kubectl
) -> None:
    leader, standby = fleet
    _until(lambda: {"ha-a", "ha-b"} <= set(_peers(kubectl)), 30, "both peers", leader, standby)

    testbed.exporter().set_queue(NS, "surge", 10)  # 5 replicas
    _until(lambda: _replicas(kubectl) >= 5, 40, "the leader's scale-up", leader, standby)
    assert _applied(leader), "the leader acted"
    assert not _applied(standby), "the standby waited"

    # Mid-surge: the queue keeps growing, and the leader dies without a word.
    assert leader.process is not None
    os.killpg(leader.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    leader.process.wait(10)
    testbed.exporter().set_queue(NS, "surge", 30)  # 15 replicas
    _until(lambda: _replicas(kubectl) > 5, 40, "the standby's scale-up", standby)
    takeover = time.monotonic() - killed
    print(f"takeover after SIGKILL of the leader: {takeover:.1f}s")
    _until(lambda: _replicas(kubectl) >= 15, 20, "15 replicas", standby)

    by_a, by_b = _applied(leader), _applied(standby)
    twice = [i for i, n in Counter(by_a + by_b).items() if n > 1]
    print(f"actions: leader {by_a}, standby {by_b}; duplicated: {len(twice)}")
    assert not twice, f"actions applied twice: {twice}"
    assert by_b, "the standby acted after the takeover"
    anchor = kubectl.json("get", "configmap", "-n", "gpufleet-system", "gpufleet-fleet")
    record = record_of(anchor.get("data") or {})
    assert record.leader == "ha-b"
    assert takeover <= TAKEOVER_SECONDS, f"takeover took {takeover:.1f}s"

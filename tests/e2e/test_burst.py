"""Issue 8 on two test beds: a surge past the primary's quota bursts into a second cluster
(the secondary test bed), for a pool behind a GIE InferencePool (issue 19) whose copies keep
the selector's labels, only to the provider the pool's data policy allows, and the burst
copy is removed when demand falls. A StatefulSet-backed pool bursts the same way; a namespace
gpufleet created for a copy goes with the burst, one that existed before stays. Waits poll
to a deadline; no fixed sleeps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

# A GPU type of its own: pools that other tests leave on the shared test bed cannot use
# these nodes, so their placements cannot change what this module measures.
GPU = "E2E-BURST-GPU"

NS = "e2e-burst"  # exists in the secondary cluster before the burst: it stays
STS_NS = "e2e-burst-sts"  # does not: gpufleet creates it for the copy and deletes it after
PRIMARY = "e2e-burst-primary"
NL = "e2e-burst-nl"
US = "e2e-burst-us"
SECRET = "e2e-burst-secondary-kubeconfig"
QUOTA_GPUS = 8  # one 8-GPU node


def _provider(
    name: str, jurisdiction: str, approved: bool, node_pool: str, **extra: Any
) -> dict[str, Any]:
    pool = fleets.node_pool(
        node_pool,
        gpu_type=GPU,
        site=f"{node_pool}-site",
        max_nodes=4,
        watts_per_gpu=700,
        idle_watts_per_gpu=90,
    )
    return fleets.cloud_provider(
        name,
        legal_entity=f"{name} B.V.",
        jurisdiction=jurisdiction,
        approved=approved,
        node_pools=[pool],
        **extra,
    )


def _pool(namespace: str, **target: Any) -> dict[str, Any]:
    return fleets.serving_pool(
        namespace,
        "chat",
        gpu_types=[GPU],
        max_replicas=40,
        jurisdictions=["DE", "NL"],
        burst={"enabled": True},
        behavior=fleets.behavior(scale_down_window_seconds=5),
        **target,
    )


def _objects() -> list[dict[str, Any]]:
    remote = {
        "cluster": {
            "kubeconfigSecretRef": {"name": SECRET, "key": "kubeconfig"},
            # NS exists in the secondary cluster before the burst: listed, so copies go there.
            "existingNamespaces": [NS],
        }
    }
    return [
        fleets.namespace(NS),
        _provider(PRIMARY, "DE", True, "burst-de", gpu_quota=QUOTA_GPUS),
        _provider(NL, "NL", True, "burst-nl", role="Secondary", **remote),
        _provider(US, "US", False, "burst-us", role="Secondary", **remote),
        # The GPU type, not the provider: the same template runs in both clusters.
        fleets.deployment(NS, "chat", node_selector={fleets.GPU_TYPE_LABEL: GPU}),
        # Behind a GIE InferencePool: its copies must keep the labels the selector needs.
        fleets.inference_pool(NS, "chat", app="chat"),
        _pool(NS, inferencePoolRef={"name": "chat"}),
    ]


def _stateful_objects() -> list[dict[str, Any]]:
    labels = {"app": "chat-sts"}
    pod = fleets.gpu_pod_spec(
        node_selector={fleets.GPU_TYPE_LABEL: GPU},
        volume_mounts=[{"name": "model-cache", "mountPath": "/models"}],
    )
    stateful_set = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "chat", "namespace": STS_NS},
        "spec": {
            "replicas": 1,
            "serviceName": "chat",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
            # A storage class only the primary cluster has: the copy must not carry it.
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "model-cache"},
                    "spec": {
                        "storageClassName": "e2e-burst-primary-only",
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }
    return [fleets.namespace(STS_NS), stateful_set, _pool(STS_NS, target_kind="StatefulSet")]


@pytest.fixture(scope="module")
def fleet(
    testbed: Testbed, secondary_testbed: Testbed, kubectl: Kubectl
) -> Iterator[OperatorProcess]:
    secondary = secondary_testbed.kubectl()
    fleets.install_crds(kubectl)
    fleets.install_gie_crds(kubectl)
    # The simulated cloud keeps its launches in a ConfigMap beside the nodes it makes.
    secondary.run("create", "namespace", "gpufleet-system", check=False)
    # The user's namespace: a copy may go into it, but gpufleet never deletes it.
    secondary.run("create", "namespace", NS, check=False)
    secret = fleets.kubeconfig_secret(secondary, SECRET)
    fleets.apply(kubectl, [secret, *_objects()])
    exporter = testbed.exporter()
    exporter.set_queue(NS, "chat", 2)  # 1 replica
    # The secondary test bed listens on loopback: a server the operator refuses by default.
    process = OperatorProcess(
        testbed,
        testbed.directory / "logs" / "operator-burst.log",
        extra_args=("--allow-private-remote-servers",),
    ).start()
    try:
        yield process
    finally:
        process.stop()
        for namespace in (NS, STS_NS):
            kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)
            secondary.run("delete", "namespace", namespace, "--wait=false", check=False)
        for name in (PRIMARY, NL, US):
            kubectl.run("delete", "cloudprovider", name, "--wait=false", check=False)
        kubectl.run("delete", "secret", "-n", "gpufleet-system", SECRET, check=False)
        for name in (NL, US):
            secondary.run("delete", "nodes", "-l", f"gpufleet.io/provider={name}", check=False)


def _status(kubectl: Kubectl) -> dict[str, Any]:
    return dict(kubectl.json("get", "servingpool", "-n", NS, "chat").get("status") or {})


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def _copy(
    secondary: Kubectl, kind: str = "deployment", namespace: str = NS
) -> dict[str, Any] | None:
    found = secondary.run("get", kind, "-n", namespace, "chat", "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def _gone(found: dict[str, Any] | None) -> bool:
    """Deleted, or being deleted: a copy goes foreground, after its pods (on nodes that are
    gone already, the pod garbage collector takes them after 40 s)."""
    return found is None or "deletionTimestamp" in found["metadata"]


def _namespace(kubectl: Kubectl, name: str) -> dict[str, Any] | None:
    found = kubectl.run("get", "namespace", name, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def _nodes(kubectl: Kubectl, provider: str) -> list[dict[str, Any]]:
    return list(kubectl.json("get", "nodes", "-l", f"gpufleet.io/provider={provider}")["items"])


def _assert_nl_copy_of(copy: dict[str, Any], namespace: str, kind: str) -> None:
    """`copy` is NL's copy of the pool `namespace/chat` and names its source `kind`."""
    assert copy["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "gpufleet",
        "gpufleet.io/pool": f"{namespace}.chat",
        "gpufleet.io/provider": NL,
        "gpufleet.io/installation": "e2e-testbed",  # OperatorProcess.installation
    }
    assert copy["metadata"]["annotations"]["gpufleet.io/source"] == f"{namespace}/{kind}/chat"


def test_a_surge_bursts_only_to_the_approved_secondary_and_drains(
    fleet: OperatorProcess, testbed: Testbed, secondary_testbed: Testbed, kubectl: Kubectl
) -> None:
    secondary = secondary_testbed.kubectl()
    testbed.exporter().set_queue(NS, "chat", 40)  # wants 20 replicas; the primary holds 8
    copy = wait_for(
        lambda: (c := _copy(secondary)) is not None and c["spec"]["replicas"] > 0 and c,
        60,
        "the burst copy in the secondary cluster",
        fleet,
    )
    _assert_nl_copy_of(copy, NS, "Deployment")
    assert copy["spec"]["template"]["spec"]["nodeSelector"] == {"gpufleet.io/gpu-type": GPU}
    # The InferencePool's selector still matches the copy's pods (docs/burst.md routes to them).
    selector = kubectl.json("get", "inferencepool", "-n", NS, "chat")["spec"]["selector"]
    assert selector["matchLabels"].items() <= copy["spec"]["template"]["metadata"]["labels"].items()
    wait_for(lambda: _nodes(secondary, NL), 60, "NL nodes in the secondary cluster", fleet)
    status = wait_for(
        lambda: (
            (s := _status(kubectl)).get("burstPercent", 0) > 0
            and _condition(s, "BurstActive").get("status") == "True"
            and s
        ),
        60,
        "burst in the pool status",
        fleet,
    )
    by_provider = {p["provider"]: p for p in status["providers"]}
    assert set(by_provider) == {PRIMARY, NL}
    assert by_provider[PRIMARY]["desiredReplicas"] == QUOTA_GPUS
    assert by_provider[NL]["desiredReplicas"] == status["desiredReplicas"] - QUOTA_GPUS > 0
    assert kubectl.json("get", "deployment", "-n", NS, "chat")["spec"]["replicas"] == QUOTA_GPUS
    wait_for(
        lambda: (
            (c := _copy(secondary)) and c["spec"]["replicas"] == by_provider[NL]["desiredReplicas"]
        ),
        30,
        "the copy at the NL share",
        fleet,
    )
    wait_for(
        lambda: any(
            p["provider"] == NL and p["currentReplicas"] > 0 for p in _status(kubectl)["providers"]
        ),
        30,
        "NL replicas observed",
        fleet,
    )
    nl = kubectl.json("get", "cloudprovider", NL)["status"]
    assert _condition(nl, "CredentialsValid")["status"] == "True"
    assert _condition(nl, "DriverReachable")["status"] == "True"
    assert not _nodes(secondary, US) and not _nodes(kubectl, US)
    assert not _nodes(kubectl, NL)  # the NL cloud's nodes live in its own cluster

    testbed.exporter().set_queue(NS, "chat", 2)  # 1 replica: the burst is over
    wait_for(lambda: _gone(_copy(secondary)), 60, "the burst copy removed", fleet)
    status = wait_for(
        lambda: (
            (s := _status(kubectl)).get("burstPercent") == 0
            and _condition(s, "BurstActive").get("status") == "False"
            and s
        ),
        30,
        "burst over in the pool status",
        fleet,
    )
    assert {p["provider"] for p in status["providers"] if p["desiredReplicas"]} == {PRIMARY}
    assert not _nodes(secondary, US)
    # The copy went; the namespace it was in existed before gpufleet came, so it stays.
    wait_for(
        lambda: f"kept namespace {NS}: not created by gpufleet" in fleet.log.read_text(),
        30,
        "the pre-existing namespace looked at and kept",
        fleet,
    )
    namespace = _namespace(secondary, NS)
    assert namespace is not None and "deletionTimestamp" not in namespace["metadata"]
    log = fleet.log.read_text()
    assert "client-key-data" not in log and "BEGIN" not in log  # no kubeconfig in the log


def test_an_unusable_kubeconfig_marks_the_provider_and_places_nothing(
    fleet: OperatorProcess, kubectl: Kubectl
) -> None:
    name = "e2e-burst-broken"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-kubeconfig", "namespace": "gpufleet-system"},
        "stringData": {
            "kubeconfig": json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "users": [{"name": "u", "user": {"tokenFile": "/etc/passwd"}}],
                }
            )
        },
    }
    ref = {"cluster": {"kubeconfigSecretRef": {"name": f"{name}-kubeconfig", "key": "kubeconfig"}}}
    fleets.apply(kubectl, [secret, _provider(name, "NL", True, "broken", role="Secondary", **ref)])
    try:
        condition = wait_for(
            lambda: (
                (
                    c := _condition(
                        kubectl.json("get", "cloudprovider", name).get("status") or {},
                        "CredentialsValid",
                    )
                ).get("status")
                == "False"
                and c
            ),
            30,
            "CredentialsValid=False",
            fleet,
        )
        assert f"Secret gpufleet-system/{name}-kubeconfig" in condition["message"]
        assert "/etc/passwd" not in condition["message"]
    finally:
        kubectl.run("delete", "cloudprovider", name, "--wait=false", check=False)
        kubectl.run("delete", "secret", "-n", "gpufleet-system", f"{name}-kubeconfig", check=False)


def test_a_statefulset_pool_bursts_and_the_namespace_made_for_it_goes_when_it_drains(
    fleet: OperatorProcess, testbed: Testbed, secondary_testbed: Testbed, kubectl: Kubectl
) -> None:
    secondary = secondary_testbed.kubectl()
    assert _namespace(secondary, STS_NS) is None
    exporter = testbed.exporter()
    exporter.set_queue(NS, "chat", 2)  # the Deployment pool stays at 1 replica
    exporter.set_queue(STS_NS, "chat", 2)
    fleets.apply(kubectl, _stateful_objects())
    exporter.set_queue(STS_NS, "chat", 40)  # wants 20 replicas; the primary holds 8 GPUs
    copy = wait_for(
        lambda: (
            (c := _copy(secondary, "statefulset", STS_NS)) is not None
            and c["spec"]["replicas"] > 0
            and c
        ),
        60,
        "the StatefulSet copy in the secondary cluster",
        fleet,
    )
    _assert_nl_copy_of(copy, STS_NS, "StatefulSet")
    assert copy["spec"]["serviceName"] == "chat"
    assert copy["spec"]["podManagementPolicy"] == "Parallel"
    # No claims on the primary's storage class: the claim template is a scratch volume.
    assert not copy["spec"].get("volumeClaimTemplates")
    assert {"name": "model-cache", "emptyDir": {}} in copy["spec"]["template"]["spec"]["volumes"]
    namespace = _namespace(secondary, STS_NS)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["gpufleet.io/created-by"] == "gpufleet"
    wait_for(
        lambda: secondary.json("get", "pods", "-n", STS_NS, "-l", "app=chat-sts")["items"],
        60,
        "the copy's pods in the secondary cluster",
        fleet,
    )
    assert not secondary.json("get", "pvc", "-n", STS_NS)["items"]
    # The copy's pods take their DNS names from a headless Service of its serviceName.
    service = secondary.json("get", "service", "-n", STS_NS, "chat")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"app": "chat-sts"}
    assert service["metadata"]["labels"]["gpufleet.io/provider"] == NL

    exporter.set_queue(STS_NS, "chat", 2)  # 1 replica: the burst is over
    wait_for(
        lambda: _gone(_copy(secondary, "statefulset", STS_NS)),
        60,
        "the StatefulSet copy removed",
        fleet,
    )
    wait_for(
        lambda: _namespace(secondary, STS_NS) is None,
        120,
        "the namespace gpufleet made removed from the secondary cluster",
        fleet,
    )
    assert _namespace(secondary, NS) is not None  # the user's stays
    assert kubectl.json("get", "statefulset", "-n", STS_NS, "chat")["spec"]["replicas"] >= 1

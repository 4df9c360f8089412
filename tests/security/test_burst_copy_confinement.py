"""Burst copies stay inside the remote cluster admin's rules (issue 18). A pool's template is
the tenant's; the cluster it bursts into is not. So a copy runs as the remote namespace's
`default` ServiceAccount without a token unless the CloudProvider allows its own; a
namespace gpufleet creates there enforces the provider's Pod Security level; a template
below that level, or a namespace that existed there and is not listed, gets no copy and the
pool says `BurstActive=False, BurstRefused`; and what a copy names but does not carry is
listed in the pool's status for the remote side to provide.

The pure rules first; then, on two test beds, the whole operator: a privileged template is
refused, a compliant one runs in a namespace that enforces the level, and a namespace that
existed remotely and is not listed is left untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gpufleet.api import CloudProviderSpec, ServingPoolSpec, parse_pool, parse_provider
from gpufleet.api.pool import BurstReference, ReferenceKind
from gpufleet.api.provider import ClusterAccess, PodSecurityLevel
from gpufleet.planner.types import NodePoolKey, PoolKey, PoolPlan, frozen_map
from gpufleet.reconcilers.burst.copies import (
    Copy,
    copy_manifest,
    namespace_manifest,
    pool_references,
    references,
    refused_for,
    source_hash,
    stale,
)
from gpufleet.reconcilers.burst.podsecurity import check
from gpufleet.reconcilers.cache import workload_entry
from gpufleet.reconcilers.reporting.status import pool_conditions, pool_status, wire
from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

KEY = PoolKey("team", "chat")
ENFORCE = "pod-security.kubernetes.io/enforce"


def _workload(kind: str = "Deployment", **pod: Any) -> Any:
    spec = {"containers": [{"name": "server", "image": "server:1"}], **pod}
    body = {
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "chat"}},
            "template": {"metadata": {"labels": {"app": "chat"}}, "spec": spec},
        }
    }
    return workload_entry(kind, "team", "chat", body)


def _pod(copy: dict[str, Any]) -> dict[str, Any]:
    return dict(copy["spec"]["template"]["spec"])


def _access(**fields: Any) -> ClusterAccess:
    return ClusterAccess.model_validate(fields)


# -- who a copy runs as ------------------------------------------------------------------


def test_a_copy_runs_as_the_default_service_account_without_a_token() -> None:
    workload = _workload(serviceAccountName="model-reader", automountServiceAccountToken=True)
    pod = _pod(copy_manifest(KEY, workload, 1, "nl", _access()))
    assert "serviceAccountName" not in pod
    assert pod["automountServiceAccountToken"] is False


def test_the_deprecated_service_account_field_is_dropped_too() -> None:
    pod = _pod(copy_manifest(KEY, _workload(serviceAccount="model-reader"), 1, "nl", _access()))
    assert "serviceAccount" not in pod and "serviceAccountName" not in pod


def test_an_allowed_service_account_is_kept_with_its_token_as_the_template_says() -> None:
    access = _access(allowedServiceAccounts=["model-reader"])
    workload = _workload(serviceAccountName="model-reader")
    pod = _pod(copy_manifest(KEY, workload, 1, "nl", access))
    assert pod["serviceAccountName"] == "model-reader"
    assert "automountServiceAccountToken" not in pod
    other = _pod(copy_manifest(KEY, _workload(serviceAccountName="admin"), 1, "nl", access))
    assert "serviceAccountName" not in other and other["automountServiceAccountToken"] is False


def test_allowing_default_lets_the_template_mount_its_token() -> None:
    access = _access(allowedServiceAccounts=["default"])
    assert "automountServiceAccountToken" not in _pod(
        copy_manifest(KEY, _workload(), 1, "nl", access)
    )


_RESTRICTED_CONTEXT = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "seccompProfile": {"type": "RuntimeDefault"},
    "capabilities": {"drop": ["ALL"]},
}


def _token_workload() -> Any:
    """A Restricted-clean template that projects a token for its account, to an STS."""
    token = {"serviceAccountToken": {"audience": "sts.amazonaws.com", "path": "token"}}
    volumes = [
        {"name": "aws", "projected": {"sources": [token]}},
        {"name": "mixed", "projected": {"sources": [token, {"configMap": {"name": "ca"}}]}},
        {"name": "cache", "emptyDir": {}},
    ]
    mounts = [
        {"name": "aws", "mountPath": "/var/run/secrets/aws"},
        {"name": "mixed", "mountPath": "/etc/mixed"},
        {"name": "cache", "mountPath": "/cache"},
    ]
    container = {"name": "server", "securityContext": _RESTRICTED_CONTEXT, "volumeMounts": mounts}
    fetch = {**container, "name": "fetch"}
    return _workload(containers=[container], initContainers=[fetch], volumes=volumes)


def test_a_copy_gets_no_projected_token_for_an_account_it_may_not_use() -> None:
    """Restricted allows projected volumes, so without this a copy running as `default` with
    automount off would still have the kubelet mint it a token, for any audience."""
    copy = copy_manifest(KEY, _token_workload(), 1, "nl", _access(podSecurityLevel="Restricted"))
    pod = _pod(copy)
    assert pod["volumes"] == [
        {"name": "mixed", "projected": {"sources": [{"configMap": {"name": "ca"}}]}},
        {"name": "cache", "emptyDir": {}},
    ]
    for container in (*pod["containers"], *pod["initContainers"]):
        assert [m["name"] for m in container["volumeMounts"]] == ["mixed", "cache"]
    assert "serviceAccountToken" not in json.dumps(copy)
    assert check(copy["spec"]["template"], PodSecurityLevel.RESTRICTED) == []
    assert (ReferenceKind.SERVICE_ACCOUNT, "default") not in references(copy)


def test_an_allowed_account_keeps_its_projected_token_and_is_listed() -> None:
    for allowed in ("default", "model-reader"):
        workload = _token_workload()
        if allowed != "default":
            workload = _workload(
                serviceAccountName=allowed, **json.loads(workload.source)["template"]["spec"]
            )
        copy = copy_manifest(KEY, workload, 1, "nl", _access(allowedServiceAccounts=[allowed]))
        assert [v["name"] for v in _pod(copy)["volumes"]] == ["aws", "mixed", "cache"]
        assert (ReferenceKind.SERVICE_ACCOUNT, allowed) in references(copy)


def test_a_copy_is_scheduled_by_the_remote_cluster_on_its_own_runtime() -> None:
    workload = _workload(
        nodeName="gpu-node-7",
        schedulerName="tenant-scheduler",
        runtimeClassName="privileged-vm",
        overhead={"cpu": "250m"},
        priority=1000000000,
        preemptionPolicy="PreemptLowerPriority",
        priorityClassName="inference-high",
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
    )
    pod = _pod(copy_manifest(KEY, workload, 1, "nl", _access()))
    for field in (
        "nodeName",
        "schedulerName",
        "runtimeClassName",
        "overhead",
        "priority",
        "preemptionPolicy",
        "priorityClassName",
    ):
        assert field not in pod, field
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]


def test_a_copy_keeps_only_a_priority_class_the_provider_allows() -> None:
    access = _access(allowedPriorityClasses=["inference-high"])
    kept = _pod(copy_manifest(KEY, _workload(priorityClassName="inference-high"), 1, "nl", access))
    assert kept["priorityClassName"] == "inference-high"
    other = _pod(copy_manifest(KEY, _workload(priorityClassName="batch"), 1, "nl", access))
    assert "priorityClassName" not in other
    critical = _workload(priorityClassName="system-cluster-critical")
    # Even past validation (the CRD's rule and the model's refuse to list one).
    listed = ClusterAccess.model_construct(allowed_priority_classes=["system-cluster-critical"])
    assert "priorityClassName" not in _pod(copy_manifest(KEY, critical, 1, "nl", listed))


def test_a_provider_may_not_allow_system_priority_classes() -> None:
    with pytest.raises(ValueError, match="allowedPriorityClasses"):
        _access(allowedPriorityClasses=["system-node-critical"])


def test_changing_the_providers_rules_makes_its_copies_stale() -> None:
    workload = _workload()
    baseline = _access()
    current = Copy("team", "chat", 1, source_hash(workload, baseline))
    assert not stale(current, workload, baseline)
    assert stale(current, workload, _access(podSecurityLevel="Restricted"))
    assert stale(current, workload, _access(allowedServiceAccounts=["model-reader"]))
    assert stale(current, workload, _access(allowedPriorityClasses=["inference-high"]))


# -- namespaces ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "label"), [("Baseline", "baseline"), ("Restricted", "restricted")]
)
def test_a_namespace_gpufleet_creates_enforces_the_providers_level(level: str, label: str) -> None:
    labels = namespace_manifest("team", _access(podSecurityLevel=level))["metadata"]["labels"]
    assert labels == {
        "gpufleet.io/created-by": "gpufleet",
        ENFORCE: label,
        "pod-security.kubernetes.io/enforce-version": "latest",
    }


# -- refusals ------------------------------------------------------------------------------


def test_a_refusal_names_the_level_and_the_first_violations() -> None:
    workload = _workload(
        hostNetwork=True,
        hostPID=True,
        hostIPC=True,
        volumes=[{"name": "root", "hostPath": {"path": "/"}}],
    )
    access = _access()
    copy = copy_manifest(KEY, workload, 1, "nl", access)
    refusal = refused_for(check(copy["spec"]["template"], access.pod_security_level), access)
    assert refusal.reason == "BurstRefused"
    message = str(refusal)
    assert message.startswith("the pod template does not meet Pod Security level Baseline: ")
    assert "spec.template.spec.hostNetwork" in message
    assert "spec.template.spec.hostIPC" in message
    assert message.endswith(" and 1 more")


def test_a_copy_of_a_statefulset_meets_restricted_without_its_claims() -> None:
    """Claim templates become emptyDir volumes: the copy carries no volume type Restricted
    refuses, and names no claim."""
    context = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "seccompProfile": {"type": "RuntimeDefault"},
        "capabilities": {"drop": ["ALL"]},
    }
    body = {
        "spec": {
            "selector": {"matchLabels": {"app": "chat"}},
            "template": {
                "spec": {"containers": [{"name": "s", "securityContext": context}]},
            },
            "volumeClaimTemplates": [{"metadata": {"name": "cache"}}],
        }
    }
    workload = workload_entry("StatefulSet", "team", "chat", body)
    copy = copy_manifest(KEY, workload, 1, "nl", _access(podSecurityLevel="Restricted"))
    assert check(copy["spec"]["template"], PodSecurityLevel.RESTRICTED) == []
    assert references(copy) == set()


def _plan(burst: int) -> PoolPlan:
    placements = frozen_map({NodePoolKey("de", "h100"): 2, NodePoolKey("nl", "h100"): burst})
    return PoolPlan(KEY, 2 + burst, 2, placements, 2 + burst, 0, burst, 0.0, True, ())


def test_a_refused_copy_makes_burst_inactive_whatever_the_plan_places() -> None:
    spec = _pool()
    refusal = ("BurstRefused", "copy for provider nl refused: namespace team exists ...")
    conditions = {c.type: c for c in pool_conditions(spec, _plan(3), None, None, None, refusal)}
    burst = conditions["BurstActive"]
    assert (burst.status, burst.reason, burst.message) == (False, "BurstRefused", refusal[1])
    active = {c.type: c for c in pool_conditions(spec, _plan(3), None, None)}["BurstActive"]
    assert (active.status, active.reason) == (True, "BurstActive")


# -- what a copy names but does not carry --------------------------------------------------


def test_references_list_secrets_config_maps_claims_and_an_allowed_service_account() -> None:
    container = {
        "name": "server",
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "t"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "modes", "key": "m"}}},
            {"name": "PLAIN", "value": "x"},
        ],
        "envFrom": [{"secretRef": {"name": "api-keys"}}, {"configMapRef": {"name": "settings"}}],
    }
    volumes = [
        {"name": "a", "secret": {"secretName": "tls"}},
        {"name": "b", "configMap": {"name": "prompts"}},
        {"name": "c", "persistentVolumeClaim": {"claimName": "weights"}},
        {
            "name": "d",
            "projected": {"sources": [{"secret": {"name": "p-s"}}, {"configMap": {"name": "p-c"}}]},
        },
        {"name": "e", "emptyDir": {}},
    ]
    workload = _workload(
        containers=[container],
        initContainers=[{"name": "fetch", "envFrom": [{"secretRef": {"name": "fetch-creds"}}]}],
        volumes=volumes,
        imagePullSecrets=[{"name": "registry"}],
        serviceAccountName="model-reader",
    )
    allowed = _access(allowedServiceAccounts=["model-reader"])
    secret, config_map = ReferenceKind.SECRET, ReferenceKind.CONFIG_MAP
    expected = {
        (secret, "hf-token"),
        (secret, "api-keys"),
        (secret, "fetch-creds"),
        (secret, "tls"),
        (secret, "p-s"),
        (secret, "registry"),
        (config_map, "modes"),
        (config_map, "settings"),
        (config_map, "prompts"),
        (config_map, "p-c"),
        (ReferenceKind.PERSISTENT_VOLUME_CLAIM, "weights"),
    }
    assert references(copy_manifest(KEY, workload, 1, "nl", allowed)) == expected | {
        (ReferenceKind.SERVICE_ACCOUNT, "model-reader")
    }
    # Not allowed: the copy runs as `default`, which every namespace has.
    assert references(copy_manifest(KEY, workload, 1, "nl", _access())) == expected


def _pool(**burst: Any) -> ServingPoolSpec:
    parsed = parse_pool(
        {
            "scaleTargetRef": {"name": "chat"},
            "gpuTypes": ["H100"],
            "queue": {"query": "q", "targetPerReplica": 4},
            "maxReplicas": 10,
            "burst": {"enabled": True, **burst},
        }
    )
    assert parsed.value is not None, parsed.errors
    return parsed.value


def _provider(name: str, remote: bool = True, **spec: Any) -> CloudProviderSpec:
    pool = fleets.node_pool(
        "h100", gpu_type="H100", site="s", max_nodes=2, watts_per_gpu=700, idle_watts_per_gpu=90
    )
    cluster = {"kubeconfigSecretRef": {"name": name, "key": "kubeconfig"}} if remote else {}
    parsed = parse_provider(
        fleets.cloud_provider(
            name,
            legal_entity=f"{name} B.V.",
            node_pools=[pool],
            role="Secondary",
            cluster=cluster,
            **spec,
        )["spec"]
    )
    assert parsed.value is not None, parsed.errors
    return parsed.value


def test_a_pool_lists_what_its_copies_need_only_for_clusters_it_may_burst_to() -> None:
    workload = _workload(imagePullSecrets=[{"name": "registry"}])
    providers = {"nl": _provider("nl"), "local": _provider("local", remote=False)}
    assert pool_references(KEY, _pool(), workload, providers) == [
        (ReferenceKind.SECRET, "registry")
    ]
    assert pool_references(KEY, _pool(providers=["local"]), workload, providers) == []
    unapproved = {"us": _provider("us", approved=False)}
    assert pool_references(KEY, _pool(), workload, unapproved) == []


def test_references_reach_the_status_and_stop_at_its_bound() -> None:
    refs = [BurstReference(kind=ReferenceKind.SECRET, name=f"s{i:03}") for i in range(70)]
    status = wire(pool_status(None, 1, [], 0.0, _plan(0), burst_references=refs))
    assert len(status["burstReferences"]) == 64
    assert status["burstReferences"][0] == {"kind": "Secret", "name": "s000"}
    assert "burstReferences" not in wire(pool_status(None, 1, [], 0.0, _plan(0)))


# -- on two test beds ----------------------------------------------------------------------

GPU = "E2E-PSS-GPU"
PROVIDER = "e2e-pss-remote"
SECRET = "e2e-pss-kubeconfig"
REFUSED_NS = "e2e-pss-privileged"  # a privileged template: no copy
COMPLIANT_NS = "e2e-pss-compliant"  # a plain one: its copy runs where gpufleet made room
EXISTING_NS = "e2e-pss-existing"  # exists in the remote cluster, not listed: left alone
NAMESPACES = (REFUSED_NS, COMPLIANT_NS, EXISTING_NS)


def _e2e_objects() -> list[dict[str, Any]]:
    node_pool = fleets.node_pool(
        "pss", gpu_type=GPU, site="pss-site", max_nodes=3, watts_per_gpu=700, idle_watts_per_gpu=90
    )
    provider = fleets.cloud_provider(
        PROVIDER,
        legal_entity="PSS B.V.",
        node_pools=[node_pool],
        role="Secondary",
        cluster={"kubeconfigSecretRef": {"name": SECRET, "key": "kubeconfig"}},
    )
    objects: list[dict[str, Any]] = [provider]
    for namespace in NAMESPACES:
        deployment = fleets.deployment(
            namespace, "chat", node_selector={fleets.GPU_TYPE_LABEL: GPU}
        )
        pod = deployment["spec"]["template"]["spec"]
        server = pod["containers"][0]
        if namespace == REFUSED_NS:
            pod["hostNetwork"] = True
            server["securityContext"] = {"privileged": True}
        else:
            pod["serviceAccountName"] = "model-reader"  # not allowed: dropped in the copy
            server["env"] = [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "t"}}}
            ]
        pool = fleets.serving_pool(
            namespace,
            "chat",
            gpu_types=[GPU],
            max_replicas=4,
            burst={"enabled": True},
            behavior=fleets.behavior(scale_down_window_seconds=5),
        )
        objects += [fleets.namespace(namespace), deployment, pool]
    return objects


@pytest.fixture(scope="module")
def confined_fleet(
    testbed: Testbed, secondary_testbed: Testbed, kubectl: Kubectl
) -> Iterator[OperatorProcess]:
    secondary = secondary_testbed.kubectl()
    fleets.install_crds(kubectl)
    secondary.run("create", "namespace", "gpufleet-system", check=False)
    secondary.run("create", "namespace", EXISTING_NS, check=False)
    secondary.run("label", "namespace", EXISTING_NS, "team=theirs", "--overwrite")
    secret = fleets.kubeconfig_secret(secondary, SECRET)
    fleets.apply(kubectl, [secret, *_e2e_objects()])
    exporter = testbed.exporter()
    for namespace in NAMESPACES:
        exporter.set_queue(namespace, "chat", 2)  # 1 replica; only the remote cloud has GPUs
    log = testbed.directory / "logs" / "operator-pod-security.log"
    # The secondary test bed listens on loopback, which remote servers may not by default.
    process = OperatorProcess(testbed, log, extra_args=("--allow-private-remote-servers",))
    process.start()
    try:
        yield process
    finally:
        process.stop()
        for namespace in NAMESPACES:
            exporter.set_queue(namespace, "chat", 0)
            kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)
            secondary.run("delete", "namespace", namespace, "--wait=false", check=False)
        kubectl.run("delete", "cloudprovider", PROVIDER, "--wait=false", check=False)
        kubectl.run("delete", "secret", "-n", "gpufleet-system", SECRET, check=False)
        secondary.run("delete", "nodes", "-l", f"gpufleet.io/provider={PROVIDER}", check=False)


def _burst_condition(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    status = kubectl.json("get", "servingpool", "-n", namespace, "chat").get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "BurstActive"), {})


def _get(kubectl: Kubectl, *args: str) -> dict[str, Any] | None:
    found = kubectl.run("get", *args, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


@pytest.mark.e2e
def test_copies_meet_the_providers_pod_security_level_on_two_test_beds(
    confined_fleet: OperatorProcess, secondary_testbed: Testbed, kubectl: Kubectl
) -> None:
    secondary = secondary_testbed.kubectl()
    # A compliant template: its copy runs, in a namespace that enforces Baseline.
    copy = wait_for(
        lambda: _get(secondary, "deployment", "-n", COMPLIANT_NS, "chat"),
        60,
        "the compliant pool's copy",
        confined_fleet,
    )
    pod = copy["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod or pod["serviceAccountName"] == "default"
    assert pod["automountServiceAccountToken"] is False
    namespace = _get(secondary, "namespace", COMPLIANT_NS)
    assert namespace is not None
    assert namespace["metadata"]["labels"][ENFORCE] == "baseline"
    wait_for(
        lambda: secondary.json("get", "pods", "-n", COMPLIANT_NS, "-l", "app=chat")["items"],
        60,
        "the copy's pods, admitted by the remote cluster",
        confined_fleet,
    )
    status = kubectl.json("get", "servingpool", "-n", COMPLIANT_NS, "chat")["status"]
    assert status["burstReferences"] == [{"kind": "Secret", "name": "hf-token"}]

    # A privileged template: refused, and no namespace or copy made for it.
    refused = wait_for(
        lambda: (c := _burst_condition(kubectl, REFUSED_NS)).get("reason") == "BurstRefused" and c,
        30,
        "the privileged pool refused",
        confined_fleet,
    )
    assert refused["status"] == "False"
    assert "spec.template.spec.hostNetwork" in refused["message"]
    assert "spec.template.spec.containers[0].securityContext.privileged" in refused["message"]
    assert _get(secondary, "namespace", REFUSED_NS) is None

    # A namespace the remote cluster had, not listed: refused, nothing put in or on it.
    existing = wait_for(
        lambda: (c := _burst_condition(kubectl, EXISTING_NS)).get("reason") == "BurstRefused" and c,
        30,
        "the pool of an existing remote namespace refused",
        confined_fleet,
    )
    assert f"namespace {EXISTING_NS} exists" in existing["message"]
    assert "existingNamespaces" in existing["message"]
    assert _get(secondary, "deployment", "-n", EXISTING_NS, "chat") is None
    labels = (_get(secondary, "namespace", EXISTING_NS) or {})["metadata"]["labels"]
    assert ENFORCE not in labels and "gpufleet.io/created-by" not in labels

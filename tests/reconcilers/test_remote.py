"""The pure parts of the burst into remote clusters: the copy (of a Deployment or a
StatefulSet), the attribution of its replicas to node pools, that a malformed kubeconfig is
an error (which ones are refused: tests/security/test_kubeconfig.py), and when a namespace
gpufleet created in a remote cluster may be deleted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpufleet.api.provider import CloudProviderSpec
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.reconcilers.burst.contents import quota_manifest
from gpufleet.reconcilers.burst.copies import (
    CONTENT,
    Copy,
    Fate,
    attribute,
    copy_manifest,
    held_by_other,
    namespace_fate,
    namespace_manifest,
    service_manifest,
    source_hash,
    stale,
)
from gpufleet.reconcilers.burst.kubeconfig import CredentialsError, client_from
from gpufleet.reconcilers.burst.remote import REMOTE_CALLS
from gpufleet.reconcilers.cache import workload_entry

from .builders import minimal_pool

TEMPLATE = {"metadata": {"labels": {"app": "chat"}}, "spec": {"containers": [{"name": "s"}]}}
BODY = {"spec": {"replicas": 3, "selector": {"matchLabels": {"app": "chat"}}, "template": TEMPLATE}}
STATEFUL_TEMPLATE = {
    "metadata": {"labels": {"app": "chat"}},
    "spec": {
        "containers": [{"name": "s", "volumeMounts": [{"name": "cache", "mountPath": "/models"}]}],
        "volumes": [{"name": "config", "configMap": {"name": "chat"}}],
    },
}
STATEFUL_BODY = {
    "apiVersion": "apps/v1",
    "kind": "StatefulSet",
    "metadata": {
        "name": "chat",
        "namespace": "team",
        "uid": "0b6f",
        "resourceVersion": "42",
        "generation": 7,
        "labels": {"team": "a"},
        "ownerReferences": [{"kind": "Rollout", "name": "chat", "uid": "1"}],
        "managedFields": [{"manager": "kubectl"}],
    },
    "spec": {
        "replicas": 2,
        "serviceName": "chat-headless",
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": {"app": "chat"}},
        "template": STATEFUL_TEMPLATE,
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
        "volumeClaimTemplates": [
            {
                "metadata": {"name": "cache"},
                "spec": {
                    "storageClassName": "fast-local",
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "200Gi"}},
                },
            }
        ],
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain"},
    },
    "status": {"replicas": 2, "readyReplicas": 2},
}


def _provider() -> CloudProviderSpec:
    pool = {
        "gpusPerNode": 8,
        "wattsPerGpu": 700,
        "idleWattsPerGpu": 90,
        "maxNodes": 4,
        "site": "nl",
    }
    return CloudProviderSpec.model_validate(
        {
            "role": "Secondary",
            "subprocessor": {"legalEntity": "NL B.V.", "jurisdiction": "NL"},
            "driver": {"type": "Simulated"},
            "nodePools": [
                {"name": "a100", "gpuType": "A100", **pool},
                {"name": "h100", "gpuType": "H100", **pool},
            ],
        }
    )


def test_copy_carries_the_template_our_labels_and_the_planned_replicas() -> None:
    workload = workload_entry("Deployment", "team", "chat", BODY)
    copy = copy_manifest(PoolKey("team", "pool"), workload, 5, "nl")
    assert copy["metadata"]["namespace"] == "team"
    assert copy["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "gpufleet",
        "gpufleet.io/pool": "team.pool",
        "gpufleet.io/provider": "nl",
    }
    assert copy["metadata"]["annotations"]["gpufleet.io/source"] == "team/Deployment/chat"
    # As the remote namespace's default ServiceAccount, no token: no provider allows one here.
    confined = {**TEMPLATE, "spec": {**TEMPLATE["spec"], "automountServiceAccountToken": False}}
    assert copy["spec"] == {
        "replicas": 5,
        "selector": {"matchLabels": {"app": "chat"}},
        "template": confined,
    }


def test_statefulset_copy_keeps_service_and_policy_and_turns_claims_into_empty_dirs() -> None:
    workload = workload_entry("StatefulSet", "team", "chat", STATEFUL_BODY)
    copy = copy_manifest(PoolKey("team", "pool"), workload, 4, "nl")
    assert copy["kind"] == "StatefulSet"
    assert copy["metadata"]["annotations"]["gpufleet.io/source"] == "team/StatefulSet/chat"
    # Nothing of the source object's metadata or status travels.
    assert set(copy["metadata"]) == {"name", "namespace", "labels", "annotations"}
    assert "status" not in copy
    assert copy["metadata"]["labels"]["gpufleet.io/provider"] == "nl"
    # The remote cluster's storage classes are not the source's: no claims, scratch volumes.
    volumes = [{"name": "config", "configMap": {"name": "chat"}}, {"name": "cache", "emptyDir": {}}]
    assert copy["spec"] == {
        "replicas": 4,
        "serviceName": "chat-headless",
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": {"app": "chat"}},
        "template": {
            **STATEFUL_TEMPLATE,
            "spec": {
                **STATEFUL_TEMPLATE["spec"],
                "volumes": volumes,
                "automountServiceAccountToken": False,
            },
        },
    }


def test_a_claim_template_replaces_a_template_volume_of_its_name() -> None:
    body: dict[str, Any] = json.loads(json.dumps(STATEFUL_BODY))
    body["spec"]["template"]["spec"]["volumes"] = [{"name": "cache", "hostPath": {"path": "/x"}}]
    copy = copy_manifest(
        PoolKey("team", "pool"), workload_entry("StatefulSet", "team", "chat", body), 1, "nl"
    )
    assert copy["spec"]["template"]["spec"]["volumes"] == [{"name": "cache", "emptyDir": {}}]


def test_statefulset_copy_gets_a_headless_service_of_its_service_name() -> None:
    workload = workload_entry("StatefulSet", "team", "chat", STATEFUL_BODY)
    service = service_manifest(PoolKey("team", "pool"), workload, "nl")
    assert service is not None
    assert (service["kind"], service["metadata"]["name"]) == ("Service", "chat-headless")
    assert service["metadata"]["labels"]["gpufleet.io/provider"] == "nl"
    assert service["metadata"]["labels"]["gpufleet.io/pool"] == "team.pool"
    assert service["spec"] == {"clusterIP": "None", "selector": {"app": "chat"}}
    deployment = workload_entry("Deployment", "team", "chat", BODY)
    assert service_manifest(PoolKey("team", "pool"), deployment, "nl") is None


def test_deployment_copy_carries_no_statefulset_fields() -> None:
    workload = workload_entry(
        "Deployment", "team", "chat", {**BODY, "spec": {**BODY["spec"], "serviceName": "x"}}
    )
    assert set(copy_manifest(PoolKey("team", "pool"), workload, 1, "nl")["spec"]) == {
        "replicas",
        "selector",
        "template",
    }
    assert set(json.loads(workload.source)) == {"selector", "template"}


def test_a_copy_is_stale_when_its_workload_changes_template_kind_or_name() -> None:
    workload = workload_entry("StatefulSet", "team", "chat", STATEFUL_BODY)
    current = Copy("team", "chat", 2, source_hash(workload), "StatefulSet")
    assert not stale(current, workload)
    assert stale(Copy("team", "chat", 2, source_hash(workload), "Deployment"), workload)
    assert stale(Copy("team", "chat-v1", 2, source_hash(workload), "StatefulSet"), workload)
    assert stale(Copy("team", "chat", 2, "0123", "StatefulSet"), workload)
    assert stale(Copy("team", "chat", 2, "", ""), workload)  # copies of both kinds


def test_a_copy_of_another_provider_or_of_no_gpufleet_is_held_by_them() -> None:
    ours = {"labels": {"app.kubernetes.io/managed-by": "gpufleet", "gpufleet.io/provider": "nl"}}
    assert held_by_other("StatefulSet", None, "nl") is None
    assert held_by_other("StatefulSet", ours, "nl") is None
    assert held_by_other("StatefulSet", ours, "fr") == "provider nl"
    assert held_by_other("StatefulSet", {"labels": {}}, "nl") == (
        "a StatefulSet gpufleet does not manage"
    )


def test_source_hash_changes_with_the_template_not_the_replicas() -> None:
    base = workload_entry("Deployment", "team", "chat", BODY)
    scaled = workload_entry("Deployment", "team", "chat", {"spec": {**BODY["spec"], "replicas": 9}})
    changed_spec: dict[str, Any] = json.loads(json.dumps(BODY))
    changed_spec["spec"]["template"]["spec"]["containers"][0]["image"] = "x:2"
    changed = workload_entry("Deployment", "team", "chat", changed_spec)
    assert source_hash(base) == source_hash(scaled) != source_hash(changed)


def test_copy_replicas_go_where_the_last_plan_put_them_the_rest_to_a_wanted_gpu() -> None:
    spec = _provider()
    last = {NodePoolKey("nl", "h100"): 2, NodePoolKey("de", "x"): 5}
    assert attribute("nl", 3, spec, last, ["H100"]) == {NodePoolKey("nl", "h100"): 3}
    assert attribute("nl", 1, spec, last, ["H100"]) == {NodePoolKey("nl", "h100"): 1}
    assert attribute("nl", 4, spec, {}, ["H100"]) == {NodePoolKey("nl", "h100"): 4}


@pytest.mark.parametrize(
    "text",
    [
        "- a list",
        "users: 5",
        "users: [just-a-string]",
        "clusters: {c: d}",
        "users: [{user: [1, 2]}]",
        "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []",
        "\x00\x01",
    ],
)
def test_malformed_kubeconfigs_are_a_credentials_error_not_a_crash(text: str) -> None:
    with pytest.raises(CredentialsError):
        client_from(text)


CREATED = {"name": "team", "uid": "u", "labels": {"gpufleet.io/created-by": "gpufleet"}}
DEFAULTS = {"ServiceAccount": [{"name": "default"}]}
# Its quota once counted: kube-root-ca.crt, no Secret (tests/security/test_remote_identity.py).
COUNTED = {"count/configmaps": "1", "count/secrets": "0"}
QUOTA = {**quota_manifest("team"), "status": {"hard": dict.fromkeys(COUNTED, "9"), "used": COUNTED}}
COPY = {"app.kubernetes.io/managed-by": "gpufleet", "gpufleet.io/provider": "nl"}


def _content(**extra: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    content: dict[str, list[dict[str, Any]]] = {kind: [] for kind, _, _ in CONTENT}
    for kind, items in {**DEFAULTS, **extra}.items():
        content[kind] = content.get(kind, []) + items
    return content


def test_a_namespace_gpufleet_created_that_holds_only_the_clusters_defaults_goes() -> None:
    assert namespace_fate(CREATED, _content(), quota=QUOTA)[0] == Fate.DELETE
    assert CREATED["labels"].items() <= namespace_manifest("team")["metadata"]["labels"].items()


def test_a_namespace_that_existed_before_is_kept_even_when_empty() -> None:
    fate, why = namespace_fate({"name": "team", "labels": {"team": "a"}}, _content(), quota=QUOTA)
    assert fate == Fate.KEEP
    assert "not created by gpufleet" in why


@pytest.mark.parametrize(
    ("kind", "meta"),
    [
        ("ServiceAccount", {"name": "chat"}),
        ("Service", {"name": "chat"}),
        ("PersistentVolumeClaim", {"name": "models"}),
        ("Pod", {"name": "debug"}),
        ("Deployment", {"name": "sidecar"}),  # the user's, not a copy
        ("Deployment", {"name": "other", "labels": COPY}),  # another pool's copy
        ("StatefulSet", {"name": "other", "labels": COPY}),
    ],
)
def test_a_namespace_gpufleet_created_that_holds_anything_else_is_kept(
    kind: str, meta: dict[str, Any]
) -> None:
    fate, why = namespace_fate(CREATED, _content(**{kind: [meta]}), quota=QUOTA)
    assert fate == Fate.KEEP
    assert f"{kind} {meta['name']}" in why


def test_a_namespace_waits_while_a_copy_in_it_is_being_deleted() -> None:
    deleting = {"name": "chat", "labels": COPY, "deletionTimestamp": "2025-01-01T00:00:00Z"}
    pod = {"name": "chat-0", "ownerReferences": [{"kind": "StatefulSet", "name": "chat"}]}
    content = _content(StatefulSet=[deleting], Pod=[pod], Service=[{"name": "chat"}])
    assert namespace_fate(CREATED, content, quota=QUOTA)[0] == Fate.WAIT


def test_a_namespace_already_being_deleted_is_left_alone() -> None:
    meta = {**CREATED, "deletionTimestamp": "2025-01-01T00:00:00Z"}
    assert namespace_fate(meta, _content(), quota=QUOTA) == (Fate.KEEP, "already being deleted")


def test_the_remote_identity_needs_the_statefulset_and_namespace_calls() -> None:
    for verb in ("list", "get", "patch", "delete"):
        assert ("apps", "statefulsets", verb) in REMOTE_CALLS
    for verb in ("get", "create", "list", "delete"):
        assert ("", "namespaces", verb) in REMOTE_CALLS
    for verb in ("get", "list", "patch", "delete"):
        assert ("", "services", verb) in REMOTE_CALLS
    assert ("", "namespaces", "patch") not in REMOTE_CALLS
    assert {(g, r, "list") for _, g, r in CONTENT} <= set(REMOTE_CALLS)
    assert len(set(REMOTE_CALLS)) == len(REMOTE_CALLS)


def test_burst_copies_count_as_serving_only_once_the_remote_controller_says_ready() -> None:
    from gpufleet.planner.types import PoolObservation, Snapshot, frozen_map
    from gpufleet.reconcilers.burst.targets import add_remote_replicas
    from gpufleet.reconcilers.observe import Observed

    key, local = PoolKey("team", "chat"), NodePoolKey("de", "h100")
    pools = {key: minimal_pool()}
    local_only = PoolObservation(1.0, replicas=frozen_map({local: 2}), ready_replicas=2)
    observed = Observed(Snapshot(pools=frozen_map({key: local_only})))
    loading = Copy("team", "chat", 4, "", "Deployment", ready=1)
    observed = add_remote_replicas(observed, pools, {"nl": _provider()}, {"nl": {key: loading}}, {})
    seen = observed.snapshot.pools[key]
    assert seen.total_replicas == 6  # two here, four in the NL cluster
    assert seen.ready_replicas == 3  # three of them serve: two here, one there

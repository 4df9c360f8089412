"""The pure parts of the burst into remote clusters: the copy, the attribution of its
replicas to node pools, and which kubeconfigs are refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpufleet.api.provider import CloudProviderSpec
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.reconcilers.cache import workload_entry
from gpufleet.reconcilers.remote import (
    CredentialsError,
    attribute,
    check_kubeconfig,
    copy_manifest,
    source_hash,
)

TEMPLATE = {"metadata": {"labels": {"app": "chat"}}, "spec": {"containers": [{"name": "s"}]}}
BODY = {"spec": {"replicas": 3, "selector": {"matchLabels": {"app": "chat"}}, "template": TEMPLATE}}


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
    assert copy["spec"] == {
        "replicas": 5,
        "selector": {"matchLabels": {"app": "chat"}},
        "template": TEMPLATE,
    }


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
    "user",
    [
        {"exec": {"command": "sh"}},
        {"auth-provider": {"name": "gcp"}},
        {"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"},
        {"token-file": "/var/run/secrets/kubernetes.io/serviceaccount/token"},
        {"client-certificate": "/tmp/c", "client-key": "/tmp/k"},
    ],
)
def test_kubeconfigs_that_run_commands_or_read_files_are_refused(user: dict[str, Any]) -> None:
    with pytest.raises(CredentialsError):
        check_kubeconfig({"users": [{"name": "u", "user": user}]})


def test_embedded_kubeconfigs_are_accepted() -> None:
    check_kubeconfig(
        {
            "clusters": [{"name": "c", "cluster": {"certificate-authority-data": "eA=="}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
        }
    )
    with pytest.raises(CredentialsError):
        check_kubeconfig({"clusters": [{"name": "c", "cluster": {"certificate-authority": "/ca"}}]})

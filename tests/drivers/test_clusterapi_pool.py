"""The MachinePool driver's pure parts: which instances a pool has, and how a scale-down
counts the nodes it is asked to remove (tests/e2e/drivers runs the whole contract)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.api.labels import ACTION_ANNOTATION, REMOVING_NODES_ANNOTATION
from gpufleet.api.provider import CloudProviderSpec, ClusterApiKind
from gpufleet.drivers.clusterapi_pool import (
    Instance,
    Removal,
    instances,
    plan_removal,
    recorded,
    removal_patch,
)

A, B, C = (f"gce://proj/europe-west4-a/gke-gpu-{n}" for n in "abc")


def pool(ids: list[str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "gpu", "annotations": annotations or {}},
        "spec": {"clusterName": "c1", "replicas": len(ids), "providerIDList": ids},
    }


def test_instances_take_their_nodes_names_by_provider_id() -> None:
    found = instances(pool([A, B]), {"node-a": A, "unrelated": C})

    assert found == [Instance(A, "node-a"), Instance(B, None)]
    assert [i.name for i in found] == ["node-a", B]  # B boots: named by its provider ID


def test_instances_skip_empty_and_repeated_provider_ids() -> None:
    assert instances(pool([A, "", A, B]), {}) == [Instance(A), Instance(B)]


def test_a_pool_without_provider_ids_has_no_instances() -> None:
    assert instances({"spec": {"replicas": 3}}, {"node-a": A}) == []


def merged(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` applied to `target` as a JSON merge patch (RFC 7386), as the API server does."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def test_recorded_reads_the_action_and_counted_instances() -> None:
    written = merged(pool([A, B]), removal_patch(pool([A, B]), Removal(0, (A, B), (A, B)), "del-1"))

    assert recorded(written) == ("del-1", (A, B))
    assert recorded(pool([A])) == (None, ())
    assert recorded(pool([A], {REMOVING_NODES_ANNOTATION: "not json"})) == (None, ())


def test_a_retry_counts_nothing_after_a_resize_rewrote_the_action_id() -> None:
    # del-1 counted A; the loop then set the target size (its own action id) while GKE
    # removed B instead; a retry of del-1 must not lower the pool a second time.
    group = [Instance(A, "node-a"), Instance(B, "node-b")]
    before = pool([A, B])
    written = merged(before, removal_patch(before, Removal(1, (A,), (A,)), "del-1"))
    resized = merged(written, {"metadata": {"annotations": {ACTION_ANNOTATION: "size-7"}}})

    again = plan_removal(group[:1], 1, {"node-a"}, record=recorded(resized), action_id="del-1")

    assert again.counted == ()
    assert again.replicas == 1


def test_removal_lowers_replicas_by_the_named_instances_in_the_pool() -> None:
    group = [Instance(A, "node-a"), Instance(B, "node-b"), Instance(C)]

    removal = plan_removal(
        group, 3, {"node-a", C, "never-existed"}, record=(None, ()), action_id="del-1"
    )

    assert removal.replicas == 1
    assert removal.counted == (A, C)
    assert removal.record == (A, C)


def test_a_retry_counts_nothing_while_the_provider_shrinks() -> None:
    group = [Instance(A, "node-a"), Instance(B, "node-b")]  # replicas already lowered to 1

    again = plan_removal(group, 1, {"node-a"}, record=("del-1", (A,)), action_id="del-1")
    other = plan_removal(group, 1, {"node-a"}, record=("del-1", (A,)), action_id="del-2")

    assert again.counted == () and again.replicas == 1
    assert other.counted == () and other.replicas == 1


def test_a_retry_counts_nothing_after_the_provider_removed_another_instance() -> None:
    group = [Instance(A, "node-a")]  # the provider took B, not A

    again = plan_removal(group, 1, {"node-a"}, record=("del-1", (A, B)), action_id="del-1")

    assert again.counted == ()
    assert again.record == (A,)  # B is gone: no longer recorded


def test_a_new_action_counts_a_node_the_provider_left_in_place() -> None:
    group = [Instance(A, "node-a")]  # caught up: one instance for one replica

    removal = plan_removal(group, 1, {"node-a"}, record=("del-1", (A,)), action_id="del-2")

    assert removal.counted == (A,)
    assert removal.replicas == 0


def test_replicas_never_go_below_zero() -> None:
    group = [Instance(A, "node-a"), Instance(B, "node-b")]

    assert (
        plan_removal(group, 1, {"node-a", "node-b"}, record=(None, ()), action_id="x").replicas == 0
    )


@pytest.mark.parametrize(
    ("settings", "kind"),
    [
        ({}, ClusterApiKind.MACHINE_DEPLOYMENT),
        ({"kind": "MachinePool"}, ClusterApiKind.MACHINE_POOL),
    ],
)
def test_cluster_api_kind_defaults_to_machine_deployment(
    settings: dict[str, str], kind: ClusterApiKind
) -> None:
    spec = CloudProviderSpec.model_validate(
        {
            "subprocessor": {"legalEntity": "Example", "jurisdiction": "DE"},
            "driver": {
                "type": "ClusterAPI",
                "clusterAPI": {"namespace": "capi", "clusterName": "c1", **settings},
            },
            "nodePools": [
                {
                    "name": "gpu",
                    "gpuType": "H100",
                    "gpusPerNode": 8,
                    "wattsPerGpu": 700,
                    "idleWattsPerGpu": 90,
                    "maxNodes": 4,
                    "site": "fra1",
                }
            ],
        }
    )
    assert spec.driver.cluster_api is not None
    assert spec.driver.cluster_api.kind == kind


def _docs_example() -> dict[str, dict[str, Any]]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "clouds.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    docs = [d for b in blocks for d in yaml.safe_load_all(b) if isinstance(d, dict) and "kind" in d]
    return {d["kind"]: d for d in docs}


def test_docs_gke_example_fits_together() -> None:
    found = _docs_example()
    spec = CloudProviderSpec.model_validate(found["CloudProvider"]["spec"])
    machine_pool, gke_pool = found["MachinePool"], found["GCPManagedMachinePool"]
    settings, (node_pool,) = spec.driver.cluster_api, spec.node_pools

    assert settings is not None and settings.kind == ClusterApiKind.MACHINE_POOL
    assert machine_pool["metadata"]["name"] == node_pool.external_name
    assert machine_pool["metadata"]["namespace"] == settings.namespace
    assert machine_pool["spec"]["clusterName"] == settings.cluster_name
    assert (
        machine_pool["spec"]["template"]["spec"]["infrastructureRef"]["name"]
        == (gke_pool["metadata"]["name"])
    )
    # What docs/clouds.md asks of a GKE pool that gpufleet sizes.
    assert gke_pool["spec"]["scaling"]["enableAutoscaling"] is False
    assert gke_pool["spec"]["nodeLocations"] == [node_pool.site]
    labels = {label.key: label.value for label in node_pool.labels}
    assert labels.items() <= gke_pool["spec"]["kubernetesLabels"].items()
    taints = [t.model_dump(mode="json", exclude_none=True) for t in node_pool.taints]
    assert gke_pool["spec"]["kubernetesTaints"] == taints

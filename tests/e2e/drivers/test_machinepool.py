"""What the MachinePool driver promises beyond the contract suite: on GKE the cloud picks
which instances a scale-down removes, and a retried delete still lowers the pool once.
Also: docs/clouds.md's GKE example is accepted by the pinned upstream CRDs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from driver_harness import eventually
from kubernetes.client import ApiClient
from machinepool_harness import MachinePoolHarness

from gpufleet.api.labels import FIELD_MANAGER
from gpufleet.drivers import clusterapi as capi
from gpufleet.drivers.base import NodePoolState
from gpufleet_testbed.kubectl import Kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
CLOUDS_DOC = Path(__file__).resolve().parents[3] / "docs" / "clouds.md"


@pytest.fixture
def gke(
    api_client: ApiClient, kubectl: Kubectl, driver_namespace: str
) -> Iterator[MachinePoolHarness]:
    harness = MachinePoolHarness(api_client, kubectl, driver_namespace)
    try:
        yield harness
    finally:
        harness.cleanup()


async def oldest_instance(gke: MachinePoolHarness) -> str:
    pool: Any = await asyncio.to_thread(
        gke.objects.get_namespaced_custom_object,
        capi.GROUP,
        capi.VERSION,
        gke.namespace,
        capi.MACHINE_POOLS,
        gke.ref.external_name,
    )
    return str(pool["spec"]["providerIDList"][0]).rsplit("/", 1)[1]


@pytest.mark.asyncio
async def test_a_retried_delete_lowers_the_pool_once_whichever_node_gke_removes(
    gke: MachinePoolHarness,
) -> None:
    driver = gke.new_driver()
    await driver.set_target_size(gke.ref, 2, action_id="up")

    async def nodes(count: int) -> NodePoolState | None:
        state = await driver.get_pool(gke.ref)
        return state if state.ready == count and len(state.all_nodes) == count else None

    await eventually(lambda: nodes(2), within=60.0, what="2 Ready nodes")
    kept = await oldest_instance(gke)  # the played GKE removes its newest instance

    await driver.delete_nodes(gke.ref, [kept], action_id="del-1")
    await driver.delete_nodes(gke.ref, [kept], action_id="del-1")  # a retry
    assert (await driver.get_pool(gke.ref)).target_size == 1
    left = await eventually(lambda: nodes(1), within=60.0, what="1 node left")
    assert left.all_nodes == (kept,)  # GKE chose the other node

    await driver.delete_nodes(gke.ref, [kept], action_id="del-1")  # a late retry
    assert (await driver.get_pool(gke.ref)).target_size == 1
    await driver.delete_nodes(gke.ref, [kept], action_id="del-2")  # a new decision
    emptied = await eventually(lambda: nodes(0), what="no nodes left")
    assert emptied.target_size == 0


@pytest.mark.asyncio
async def test_resizes_are_written_under_the_operators_field_manager(
    gke: MachinePoolHarness,
) -> None:
    """GitOps tools tell the operator's fields from theirs by manager (docs/gitops.md)."""
    await gke.new_driver().set_target_size(gke.ref, 1, action_id="up")
    pool: Any = await asyncio.to_thread(
        gke.objects.get_namespaced_custom_object,
        capi.GROUP,
        capi.VERSION,
        gke.namespace,
        capi.MACHINE_POOLS,
        gke.ref.external_name,
    )
    # Only spec.replicas: the harness's CAPG stand-in writes status.replicas under its own
    # manager whenever its reconcile wins the race with this read.
    owners = {
        entry["manager"]
        for entry in pool["metadata"]["managedFields"]
        if "f:replicas" in entry.get("fieldsV1", {}).get("f:spec", {})
    }
    assert owners == {FIELD_MANAGER}


def docs_objects() -> list[dict[str, Any]]:
    text = CLOUDS_DOC.read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    return [d for b in blocks for d in yaml.safe_load_all(b) if isinstance(d, dict) and "kind" in d]


def test_docs_gke_example_is_accepted_by_the_pinned_upstream_crds(
    gke: MachinePoolHarness, kubectl: Kubectl
) -> None:
    upstream = [d for d in docs_objects() if d["kind"] in ("MachinePool", "GCPManagedMachinePool")]
    assert len(upstream) == 2
    for doc in upstream:
        doc["metadata"]["namespace"] = gke.namespace  # the test bed's, not the example's
        done = kubectl.run(
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            "-",
            stdin=json.dumps(doc),
            check=False,
        )
        assert done.returncode == 0, f"{doc['kind']} was rejected:\n{done.stderr}"

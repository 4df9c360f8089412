"""The ClusterAPI driver with `clusterAPI.kind: MachinePool`, proven on a GKE node pool:
a Cluster API MachinePool whose infrastructure is CAPG's GCPManagedMachinePool.

The CRDs are the pinned upstream ones: MachinePool from Cluster API v1.13.2 (what CAPG
v1.13.1 is built on) or v1.14.2 (the test bed's MachineDeployment pin), the harness's
`capi` choosing which is installed, and GCPManagedMachinePool from CAPG v1.13.1. No
controller runs; PlayedGke plays three, touching only what each real one touches:

- CAPG and GKE: while the GCPManagedMachinePool's `scaling.enableAutoscaling` is false, the
  node pool follows the MachinePool's `spec.replicas`, rounded down to a multiple of its
  `nodeLocations` (3 zones where unset) as CAPG v1.13.1 divides it; the instance group
  removes its newest instances on a scale-down, whatever was asked for (GKE picks, not
  the caller). CAPG writes the instances' provider IDs to the GCPManagedMachinePool's
  `spec.providerIDList` and `status.replicas`/`ready`;
- the kubelets and GKE's node lifecycle: each instance registers a kwok Node of the same
  name with its `spec.providerID` and the pool's `kubernetesLabels`/`kubernetesTaints`;
  a removed instance's Node goes;
- Cluster API's MachinePool controller: copies `providerIDList` to the MachinePool and
  sets `status.replicas`, `readyReplicas` and `nodeRefs` (the Nodes matching by provider
  ID).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from driver_harness import GPU_TAINT, ExpectedNode
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, V1Node
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry
from upstream_harness import (
    HARNESS_LABEL,
    PlayedController,
    _delete_node,
    ensure_crds,
    provider_spec,
    upstream_crds,
)

from gpufleet.drivers import clusterapi as capi
from gpufleet.drivers.base import NodePoolDriver, NodePoolRef
from gpufleet.drivers.kube_objects import node_is_ready
from gpufleet.drivers.registry import make_driver
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.nodes import GpuNode, Taint

INFRA_GROUP = "infrastructure.cluster.x-k8s.io"
INFRA_VERSION = "v1beta1"  # CAPG v1.13.1's only version of GCPManagedMachinePool
GKE_POOLS = "gcpmanagedmachinepools"
MACHINE_POOL_CRD = "cluster.x-k8s.io_machinepools.yaml"
GKE_POOL_CRD = "infrastructure.cluster.x-k8s.io_gcpmanagedmachinepools.yaml"
CAPG = "cluster-api-provider-gcp"
ZONE = "europe-west4-a"
# Where nodeLocations is unset, CAPG v1.13.1 divides replicas by 3 (DefaultNumRegionsPerZone).
DEFAULT_ZONES = [f"europe-west4-{z}" for z in "abc"]


@dataclass
class MachinePoolHarness:
    api_client: ApiClient
    kubectl: Kubectl
    namespace: str
    capi: str = CAPG  # the tools dir whose MachinePool CRD is installed
    kind: str = "ClusterAPIMachinePool"
    provider: str = field(default_factory=lambda: f"capi-mp-{uuid.uuid4().hex[:6]}")

    def __post_init__(self) -> None:
        self.cluster = f"cluster-{uuid.uuid4().hex[:6]}"
        settings = {"namespace": self.namespace, "clusterName": self.cluster, "kind": "MachinePool"}
        self.spec = provider_spec({"type": "ClusterAPI", "clusterAPI": settings})
        pool = self.spec.node_pools[0]
        assert pool.external_name is not None
        self.ref = NodePoolRef(self.provider, pool.name, pool.external_name)
        self.unknown_ref = NodePoolRef(self.provider, "no-such-pool", "no-such-pool")
        labels = {HARNESS_LABEL: self.provider, "gpufleet.io/contract": "yes"}
        self.expected = ExpectedNode(labels=labels, taints=[GPU_TAINT], gpus=2)
        self.node_selector = {HARNESS_LABEL: self.provider}
        ensure_crds(
            self.kubectl,
            [*upstream_crds(self.capi, MACHINE_POOL_CRD), *upstream_crds(CAPG, GKE_POOL_CRD)],
        )
        self.objects = CustomObjectsApi(self.api_client)
        self.objects.create_namespaced_custom_object(
            INFRA_GROUP, INFRA_VERSION, self.namespace, GKE_POOLS, self._gke_pool()
        )
        self.objects.create_namespaced_custom_object(
            capi.GROUP, capi.VERSION, self.namespace, capi.MACHINE_POOLS, self._machine_pool()
        )
        self.controller = PlayedGke(self)
        self.controller.start()

    def _gke_pool(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{INFRA_GROUP}/{INFRA_VERSION}",
            "kind": "GCPManagedMachinePool",
            "metadata": {"name": self.ref.external_name, "namespace": self.namespace},
            "spec": {
                "machineType": "a3-highgpu-2g",  # two H100s
                "nodeLocations": [ZONE],
                "scaling": {"enableAutoscaling": False},
                "kubernetesLabels": dict(self.expected.labels),
                "kubernetesTaints": list(self.expected.taints),
            },
        }

    def _machine_pool(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{capi.GROUP}/{capi.VERSION}",
            "kind": "MachinePool",
            "metadata": {"name": self.ref.external_name, "namespace": self.namespace},
            "spec": {
                "clusterName": self.cluster,
                "replicas": 0,
                "template": {
                    "spec": {
                        "clusterName": self.cluster,
                        "bootstrap": {"dataSecretName": ""},  # GKE bootstraps its nodes
                        "infrastructureRef": {
                            "apiGroup": INFRA_GROUP,
                            "kind": "GCPManagedMachinePool",
                            "name": self.ref.external_name,
                        },
                    }
                },
            },
        }

    def new_driver(self) -> NodePoolDriver:
        return make_driver(
            self.provider, self.spec, api_client=self.api_client, registry=CollectorRegistry()
        )

    async def finish_boot(self) -> None:
        pass  # the played GKE registers Nodes at once

    async def inject(self, failure: str) -> None:
        pytest.skip("Cluster API reports no capacity errors synchronously")

    def cleanup(self) -> None:
        self.controller.stop()
        for resource in (f"machinepools.{capi.GROUP}", f"{GKE_POOLS}.{INFRA_GROUP}"):
            self.kubectl.run(
                "delete",
                resource,
                self.ref.external_name,
                "-n",
                self.namespace,
                "--ignore-not-found",
                "--wait=false",
            )
        self.kubectl.run(
            "delete", "nodes", "-l", f"{HARNESS_LABEL}={self.provider}", "--wait=false"
        )


class PlayedGke(PlayedController):
    def __init__(self, harness: MachinePoolHarness) -> None:
        super().__init__()
        self.h = harness
        self.core = CoreV1Api(harness.api_client)

    def tick(self) -> None:
        h = self.h
        machine_pool: Any = h.objects.get_namespaced_custom_object(
            capi.GROUP, capi.VERSION, h.namespace, capi.MACHINE_POOLS, h.ref.external_name
        )
        gke_pool: Any = h.objects.get_namespaced_custom_object(
            INFRA_GROUP, INFRA_VERSION, h.namespace, GKE_POOLS, h.ref.external_name
        )
        ids = self._resize(machine_pool, gke_pool)
        nodes = self._register(ids, gke_pool["spec"])
        self._mirror(machine_pool, ids, nodes)

    def _resize(self, machine_pool: dict[str, Any], gke_pool: dict[str, Any]) -> list[str]:
        """CAPG and GKE: the node pool's instances follow the MachinePool's replicas."""
        spec = gke_pool["spec"]
        ids: list[str] = list(spec.get("providerIDList") or [])
        if (spec.get("scaling") or {}).get("enableAutoscaling", True) is not False:
            return ids  # GKE's own autoscaler owns the size; CAPG leaves it alone
        zones = spec.get("nodeLocations") or DEFAULT_ZONES
        per_zone = int(machine_pool["spec"].get("replicas", 1)) // len(zones)
        want = per_zone * len(zones)
        changed = len(ids) != want
        del ids[want:]  # the instance group's choice: its newest instances
        while len(ids) < want:
            name = f"gke-{self.h.ref.external_name}-{uuid.uuid4().hex[:5]}"
            ids.append(f"gce://contract-project/{zones[len(ids) % len(zones)]}/{name}")
        if changed:
            self._patch(INFRA_GROUP, INFRA_VERSION, GKE_POOLS, {"spec": {"providerIDList": ids}})
        status = {
            "ready": True,
            "replicas": len(ids),
            "infrastructureMachineKind": "GCPManagedMachinePool",
        }
        if {k: (gke_pool.get("status") or {}).get(k) for k in status} != status:
            self._patch(INFRA_GROUP, INFRA_VERSION, GKE_POOLS, {"status": status}, status_only=True)
        return ids

    def _register(self, ids: list[str], spec: dict[str, Any]) -> dict[str, Any]:
        """Kubelets join with the pool's labels and taints; removed instances' Nodes go."""
        h = self.h
        listed = self.core.list_node(label_selector=f"{HARNESS_LABEL}={h.provider}").items
        by_id = {n.spec.provider_id: n for n in listed if n.spec and n.spec.provider_id}
        for gone in set(by_id) - set(ids):
            _delete_node(self.core, gone.rsplit("/", 1)[1])  # named as its instance
        for provider_id in ids:
            if provider_id in by_id:
                continue
            node = _kubelet_node(provider_id, spec, h.expected.gpus)
            try:
                by_id[provider_id] = self.core.create_node(node)
            except ApiException as error:
                if error.status != 409:
                    raise
        return by_id

    def _mirror(self, machine_pool: dict[str, Any], ids: list[str], nodes: dict[str, Any]) -> None:
        """Cluster API's MachinePool controller: provider IDs, replica counts, nodeRefs."""
        if (machine_pool["spec"].get("providerIDList") or []) != ids:
            self._patch(
                capi.GROUP, capi.VERSION, capi.MACHINE_POOLS, {"spec": {"providerIDList": ids}}
            )
        found = [nodes[i] for i in ids if i in nodes]
        status = {
            "replicas": len(ids),
            "readyReplicas": sum(1 for n in found if node_is_ready(n)),
            "nodeRefs": [
                {"apiVersion": "v1", "kind": "Node", "name": n.metadata.name, "uid": n.metadata.uid}
                for n in found
            ],
        }
        current = machine_pool.get("status") or {}
        if {k: current.get(k, [] if k == "nodeRefs" else None) for k in status} != status:
            self._patch(
                capi.GROUP, capi.VERSION, capi.MACHINE_POOLS, {"status": status}, status_only=True
            )

    def _patch(
        self,
        group: str,
        version: str,
        plural: str,
        body: dict[str, Any],
        *,
        status_only: bool = False,
    ) -> None:
        h = self.h
        call = (
            h.objects.patch_namespaced_custom_object_status
            if status_only
            else h.objects.patch_namespaced_custom_object
        )
        call(
            group,
            version,
            h.namespace,
            plural,
            h.ref.external_name,
            body,
            _content_type=capi.MERGE_PATCH,
        )


def _kubelet_node(provider_id: str, spec: dict[str, Any], gpus: int) -> V1Node:
    """The Node an instance's kubelet registers: named as the instance, the pool's labels
    and taints, and the instance's provider ID (which Cluster API matches nodes by)."""
    taints = tuple(
        Taint(t["key"], t.get("value", ""), t["effect"]) for t in spec.get("kubernetesTaints") or []
    )
    name = provider_id.rsplit("/", 1)[1]
    manifest = GpuNode(name, gpus=gpus, labels=spec.get("kubernetesLabels") or {}, taints=taints)
    body = manifest.manifest()
    body["spec"]["providerID"] = provider_id
    return V1Node.model_validate(body)

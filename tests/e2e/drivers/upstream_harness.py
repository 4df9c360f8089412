"""Harnesses for the drivers that steer another project's objects: ClusterAPI, Karpenter.

The CRDs are the upstream ones (gpufleet_testbed.crds_upstream, pinned under e2e/tools/);
the controllers are not: no Cluster API or Karpenter controller runs on the test bed, so
each harness plays that controller in a background thread, touching only what the real
one would, and the driver under test reads and writes only the real objects:

- PlayedClusterApi (the MachineSet/Machine controllers and an infrastructure provider):
  keeps one Machine per `spec.replicas` of the MachineDeployment, deleting Machines
  annotated `cluster.x-k8s.io/delete-machine` first; gives each a kwok Node and sets its
  `status.nodeRef`; keeps `status.replicas`/`readyReplicas` current.
- PlayedKarpenter (Karpenter's provisioner and termination): launches NodeClaims up to
  the NodePool's GPU limit, as if pending pods asked for that much (real Karpenter only
  launches for pending pods: the limit is an upper bound), registers a kwok Node for
  each (`status.nodeName`), and removes the Node of a deleted NodeClaim.

MachinePools (GKE through CAPG) have their own harness, machinepool_harness.py, built
on the helpers here.

Nodes boot at once ("a real backend by waiting"), so `finish_boot` has nothing to do, and
these backends inject no capacity failures, so `inject` skips.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from driver_harness import GPU_TAINT, ExpectedNode
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, V1Node
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers import clusterapi as capi
from gpufleet.drivers import karpenter as karp
from gpufleet.drivers.base import NodePoolDriver, NodePoolRef
from gpufleet.drivers.registry import make_driver
from gpufleet_testbed.crds_upstream import crd_files
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.nodes import GpuNode, Taint

HARNESS_LABEL = "gpufleet.io/contract-harness"
# CRD name -> the pinned file applied last in this session. Two pins may hold the same CRD
# (MachinePool of Cluster API v1.13.2 and v1.14.2): the one a harness asks for replaces
# the other on the shared test bed.
_installed: dict[str, Path] = {}


def upstream_crds(tools_dir: str, *files: str) -> list[Path]:
    """The cached CRD files of `tools_dir` named `files` (all of them without names)."""
    found = crd_files(tools_dir)
    picked = [p for p in found if not files or p.name in files]
    assert len(picked) == (len(files) or len(found)), f"{tools_dir} lacks one of {files}"
    return picked


def ensure_crds(kubectl: Kubectl, paths: list[Path]) -> None:
    """Applies each pinned upstream CRD unless it is installed already; waits until it serves."""
    for path in paths:
        text = path.read_text()
        name = yaml.safe_load(text)["metadata"]["name"]
        if _installed.get(name) == path:
            continue
        kubectl.apply(text, "--force-conflicts")
        kubectl.run("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")
        _installed[name] = path


def provider_spec(driver: dict[str, Any]) -> CloudProviderSpec:
    return CloudProviderSpec.model_validate(
        {
            "subprocessor": {"legalEntity": "Contract Suite", "jurisdiction": "DE"},
            "driver": driver,
            "nodePools": [
                {
                    "name": "gpu",
                    "externalName": f"gpu-{uuid.uuid4().hex[:6]}",
                    "gpuType": "H100",
                    "gpusPerNode": 2,
                    "wattsPerGpu": 700,
                    "idleWattsPerGpu": 90,
                    "maxNodes": 4,
                    "site": "test",
                }
            ],
        }
    )


class PlayedController:
    """Runs `tick` every 0.1 s in a thread until `stop`; errors are kept, not raised."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as error:  # a conflict or a race with the driver: next tick
                self.errors.append(f"{type(error).__name__}: {error}"[:300])
            self._stop.wait(0.1)

    def tick(self) -> None:
        raise NotImplementedError


def _node(name: str, labels: dict[str, str], gpus: int) -> V1Node:
    manifest = GpuNode(
        name,
        gpus=gpus,
        labels=labels,
        taints=(Taint(GPU_TAINT["key"], GPU_TAINT["value"], GPU_TAINT["effect"]),),
    ).manifest()
    return V1Node.model_validate(manifest)


def _create_node(core: CoreV1Api, node: V1Node) -> None:
    try:
        core.create_node(node)
    except ApiException as error:
        if error.status != 409:
            raise


def _delete_node(core: CoreV1Api, name: str) -> None:
    try:
        core.delete_node(name)
    except ApiException as error:
        if error.status != 404:
            raise


# -- Cluster API ------------------------------------------------------------------------


@dataclass
class ClusterApiHarness:
    api_client: ApiClient
    kubectl: Kubectl
    namespace: str
    kind: str = "ClusterAPI"
    provider: str = field(default_factory=lambda: f"capi-{uuid.uuid4().hex[:6]}")

    def __post_init__(self) -> None:
        self.cluster = f"cluster-{uuid.uuid4().hex[:6]}"
        self.spec = provider_spec(
            {
                "type": "ClusterAPI",
                "clusterAPI": {"namespace": self.namespace, "clusterName": self.cluster},
            }
        )
        pool = self.spec.node_pools[0]
        assert pool.external_name is not None
        self.ref = NodePoolRef(self.provider, pool.name, pool.external_name)
        self.unknown_ref = NodePoolRef(self.provider, "no-such-pool", "no-such-pool")
        labels = {HARNESS_LABEL: self.provider, "gpufleet.io/contract": "yes"}
        self.expected = ExpectedNode(labels=labels, taints=[GPU_TAINT], gpus=2)
        self.node_selector = {HARNESS_LABEL: self.provider}
        ensure_crds(
            self.kubectl,
            upstream_crds(
                "cluster-api",
                "cluster.x-k8s.io_machinedeployments.yaml",
                "cluster.x-k8s.io_machines.yaml",
            ),
        )
        self.objects = CustomObjectsApi(self.api_client)
        self.objects.create_namespaced_custom_object(
            capi.GROUP, capi.VERSION, self.namespace, capi.MACHINE_DEPLOYMENTS, self._deployment()
        )
        self.controller = PlayedClusterApi(self)
        self.controller.start()

    def _deployment(self) -> dict[str, Any]:
        selector = {capi.DEPLOYMENT_NAME_LABEL: self.ref.external_name}
        template_spec = {
            "clusterName": self.cluster,
            "bootstrap": {"dataSecretName": "bootstrap-data"},
            "infrastructureRef": {
                "apiGroup": "infrastructure.cluster.x-k8s.io",
                "kind": "KwokMachineTemplate",
                "name": self.ref.external_name,
            },
        }
        return {
            "apiVersion": f"{capi.GROUP}/{capi.VERSION}",
            "kind": "MachineDeployment",
            "metadata": {"name": self.ref.external_name, "namespace": self.namespace},
            "spec": {
                "clusterName": self.cluster,
                "replicas": 0,
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": selector}, "spec": template_spec},
            },
        }

    def new_driver(self) -> NodePoolDriver:
        return make_driver(
            self.provider, self.spec, api_client=self.api_client, registry=CollectorRegistry()
        )

    async def finish_boot(self) -> None:
        pass  # the played controller gives Machines their Nodes at once

    async def inject(self, failure: str) -> None:
        pytest.skip("Cluster API reports no capacity errors synchronously")

    def cleanup(self) -> None:
        self.controller.stop()
        self.kubectl.run(
            "delete",
            "machines.cluster.x-k8s.io",
            "-n",
            self.namespace,
            "-l",
            f"{capi.CLUSTER_NAME_LABEL}={self.cluster}",
            "--wait=false",
        )
        self.kubectl.run(
            "delete",
            "machinedeployments.cluster.x-k8s.io",
            self.ref.external_name,
            "-n",
            self.namespace,
            "--ignore-not-found",
            "--wait=false",
        )
        self.kubectl.run(
            "delete", "nodes", "-l", f"{HARNESS_LABEL}={self.provider}", "--wait=false"
        )


class PlayedClusterApi(PlayedController):
    def __init__(self, harness: ClusterApiHarness) -> None:
        super().__init__()
        self.h = harness
        self.core = CoreV1Api(harness.api_client)
        self.serial = 0

    def tick(self) -> None:
        h, objects = self.h, self.h.objects
        md = objects.get_namespaced_custom_object(
            capi.GROUP, capi.VERSION, h.namespace, capi.MACHINE_DEPLOYMENTS, h.ref.external_name
        )
        want = int(md["spec"].get("replicas", 1))
        selector = f"{capi.CLUSTER_NAME_LABEL}={h.cluster},{capi.DEPLOYMENT_NAME_LABEL}={h.ref.external_name}"
        machines = objects.list_namespaced_custom_object(
            capi.GROUP, capi.VERSION, h.namespace, capi.MACHINES, label_selector=selector
        )["items"]
        # Scale down the way a MachineSet does: marked Machines first, then the newest.
        machines.sort(
            key=lambda m: (
                capi.DELETE_MACHINE_ANNOTATION not in (m["metadata"].get("annotations") or {}),
                m["metadata"]["name"],
            )
        )
        for machine in machines[: max(len(machines) - want, 0)]:
            objects.delete_namespaced_custom_object(
                capi.GROUP, capi.VERSION, h.namespace, capi.MACHINES, machine["metadata"]["name"]
            )
        kept = machines[max(len(machines) - want, 0) :]
        for _ in range(want - len(kept)):
            kept.append(self._create_machine())
        for machine in kept:
            self._give_node(machine)
        self._remove_orphan_nodes({m["metadata"]["name"] for m in kept})
        status = {"replicas": len(kept), "readyReplicas": len(kept)}
        if md.get("status", {}).get("readyReplicas") != len(kept):
            objects.patch_namespaced_custom_object_status(
                capi.GROUP,
                capi.VERSION,
                h.namespace,
                capi.MACHINE_DEPLOYMENTS,
                h.ref.external_name,
                {"status": status},
                _content_type=capi.MERGE_PATCH,
            )

    def _create_machine(self) -> dict[str, Any]:
        h = self.h
        self.serial += 1
        name = f"{h.ref.external_name}-{uuid.uuid4().hex[:5]}"
        body = {
            "apiVersion": f"{capi.GROUP}/{capi.VERSION}",
            "kind": "Machine",
            "metadata": {
                "name": name,
                "namespace": h.namespace,
                "labels": {
                    capi.CLUSTER_NAME_LABEL: h.cluster,
                    capi.DEPLOYMENT_NAME_LABEL: h.ref.external_name,
                },
            },
            "spec": {
                "clusterName": h.cluster,
                "bootstrap": {"dataSecretName": "bootstrap-data"},
                "infrastructureRef": {
                    "apiGroup": "infrastructure.cluster.x-k8s.io",
                    "kind": "KwokMachine",
                    "name": name,
                },
            },
        }
        created: dict[str, Any] = h.objects.create_namespaced_custom_object(
            capi.GROUP, capi.VERSION, h.namespace, capi.MACHINES, body
        )
        return created

    def _give_node(self, machine: dict[str, Any]) -> None:
        h = self.h
        name = machine["metadata"]["name"]
        if (machine.get("status") or {}).get("nodeRef"):
            return
        node_name = f"node-{name}"
        _create_node(self.core, _node(node_name, dict(h.expected.labels), h.expected.gpus))
        h.objects.patch_namespaced_custom_object_status(
            capi.GROUP,
            capi.VERSION,
            h.namespace,
            capi.MACHINES,
            name,
            {"status": {"nodeRef": {"name": node_name}}},
            _content_type=capi.MERGE_PATCH,
        )

    def _remove_orphan_nodes(self, machines: set[str]) -> None:
        nodes = self.core.list_node(label_selector=f"{HARNESS_LABEL}={self.h.provider}")
        for node in nodes.items:
            if node.metadata.name.removeprefix("node-") not in machines:
                _delete_node(self.core, node.metadata.name)


# -- Karpenter ----------------------------------------------------------------------------


@dataclass
class KarpenterHarness:
    api_client: ApiClient
    kubectl: Kubectl
    namespace: str
    kind: str = "Karpenter"
    provider: str = field(default_factory=lambda: f"karp-{uuid.uuid4().hex[:6]}")

    def __post_init__(self) -> None:
        self.spec = provider_spec({"type": "Karpenter", "karpenter": {"nodeClassRefName": "kwok"}})
        pool = self.spec.node_pools[0]
        assert pool.external_name is not None
        self.gpus_per_node = pool.gpus_per_node
        self.ref = NodePoolRef(self.provider, pool.name, pool.external_name)
        self.unknown_ref = NodePoolRef(self.provider, "no-such-pool", "no-such-pool")
        labels = {HARNESS_LABEL: self.provider, karp.NODE_POOL_LABEL: pool.external_name}
        self.expected = ExpectedNode(labels=labels, taints=[GPU_TAINT], gpus=2)
        self.node_selector = {HARNESS_LABEL: self.provider}
        ensure_crds(self.kubectl, upstream_crds("karpenter"))
        self.objects = CustomObjectsApi(self.api_client)
        self.objects.create_cluster_custom_object(
            karp.GROUP, karp.VERSION, karp.NODE_POOLS, self._node_pool()
        )
        self.controller = PlayedKarpenter(self)
        self.controller.start()

    def node_class_ref(self) -> dict[str, str]:
        return {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": "kwok"}

    def requirements(self) -> list[dict[str, Any]]:
        return [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]

    def _node_pool(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{karp.GROUP}/{karp.VERSION}",
            "kind": "NodePool",
            "metadata": {"name": self.ref.external_name},
            "spec": {
                "limits": {karp.GPU_RESOURCE: "0", "cpu": "1000"},
                "template": {
                    "metadata": {"labels": {HARNESS_LABEL: self.provider}},
                    "spec": {
                        "nodeClassRef": self.node_class_ref(),
                        "requirements": self.requirements(),
                        "taints": [GPU_TAINT],
                    },
                },
            },
        }

    def new_driver(self) -> NodePoolDriver:
        return make_driver(
            self.provider, self.spec, api_client=self.api_client, registry=CollectorRegistry()
        )

    async def finish_boot(self) -> None:
        pass  # the played Karpenter registers Nodes at once

    async def inject(self, failure: str) -> None:
        pytest.skip("Karpenter reports launch failures on NodeClaims, not to the driver")

    def cleanup(self) -> None:
        self.controller.stop()
        selector = f"{karp.NODE_POOL_LABEL}={self.ref.external_name}"
        self.kubectl.run("delete", "nodeclaims.karpenter.sh", "-l", selector, "--wait=false")
        self.kubectl.run(
            "delete",
            "nodepools.karpenter.sh",
            self.ref.external_name,
            "--ignore-not-found",
            "--wait=false",
        )
        self.kubectl.run(
            "delete", "nodes", "-l", f"{HARNESS_LABEL}={self.provider}", "--wait=false"
        )


class PlayedKarpenter(PlayedController):
    def __init__(self, harness: KarpenterHarness) -> None:
        super().__init__()
        self.h = harness
        self.core = CoreV1Api(harness.api_client)

    def tick(self) -> None:
        h, objects = self.h, self.h.objects
        pool = objects.get_cluster_custom_object(
            karp.GROUP, karp.VERSION, karp.NODE_POOLS, h.ref.external_name
        )
        limit = karp.gpu_limit(pool) or 0
        claims = objects.list_cluster_custom_object(
            karp.GROUP,
            karp.VERSION,
            karp.NODE_CLAIMS,
            label_selector=f"{karp.NODE_POOL_LABEL}={h.ref.external_name}",
        )["items"]
        live = [c for c in claims if not c["metadata"].get("deletionTimestamp")]
        # Launch while the next node fits under the limit (Karpenter's limit check).
        while (len(live) + 1) * h.gpus_per_node <= limit:
            live.append(self._launch())
        for claim in live:
            self._register(claim)
        names = {c["metadata"]["name"] for c in live}
        nodes = self.core.list_node(label_selector=f"{HARNESS_LABEL}={h.provider}")
        for node in nodes.items:  # termination: a deleted NodeClaim's Node goes too
            if node.metadata.name.removeprefix("node-") not in names:
                _delete_node(self.core, node.metadata.name)

    def _launch(self) -> dict[str, Any]:
        h = self.h
        body = {
            "apiVersion": f"{karp.GROUP}/{karp.VERSION}",
            "kind": "NodeClaim",
            "metadata": {
                "name": f"{h.ref.external_name}-{uuid.uuid4().hex[:5]}",
                "labels": {karp.NODE_POOL_LABEL: h.ref.external_name, HARNESS_LABEL: h.provider},
            },
            "spec": {"nodeClassRef": h.node_class_ref(), "requirements": h.requirements()},
        }
        created: dict[str, Any] = h.objects.create_cluster_custom_object(
            karp.GROUP, karp.VERSION, karp.NODE_CLAIMS, body
        )
        return created

    def _register(self, claim: dict[str, Any]) -> None:
        h = self.h
        if (claim.get("status") or {}).get("nodeName"):
            return
        name = claim["metadata"]["name"]
        node_name = f"node-{name}"
        _create_node(self.core, _node(node_name, dict(h.expected.labels), h.expected.gpus))
        h.objects.patch_cluster_custom_object_status(
            karp.GROUP,
            karp.VERSION,
            karp.NODE_CLAIMS,
            name,
            {"status": {"nodeName": node_name}},
            _content_type=karp.MERGE_PATCH,
        )

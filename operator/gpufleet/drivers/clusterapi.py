"""The ClusterAPI driver: a node pool is a Cluster API MachineDeployment.

(With `clusterAPI.kind: MachinePool` it is a MachinePool instead: clusterapi_pool.py.)

Only Cluster API's own objects are touched, as the Cluster Autoscaler's clusterapi
provider does, so the MachineDeployment controller stays the one that creates and
deletes Machines:

- target size: the MachineDeployment's `spec.replicas`, written through its `scale`
  subresource (absolute, so a retry is harmless);
- nodes: the Machines labelled `cluster.x-k8s.io/deployment-name=<externalName>` (and the
  cluster's name), each named by its `status.nodeRef.name` once it has a Node, else by
  the Machine's own name while it boots; Ready when that Node exists and is Ready;
- deleting nodes: their Machines are annotated `cluster.x-k8s.io/delete-machine`, which
  the MachineSet controller deletes first on a scale-down, and `spec.replicas` is lowered
  by the number newly marked. A Machine already marked or deleting counts nothing, so a
  retry never shrinks the pool twice.

The MachineDeployments live in `driver.clusterAPI.namespace` of the cluster the ApiClient
reaches; their Nodes must be visible through the same client (a self-hosted cluster, or
management and workload cluster joined, which the Cluster Autoscaler requires as well).
Cluster API reports no capacity errors synchronously: a Machine that cannot be launched
stays without a Node, which the fleet loop sees as nodes that never become Ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from gpufleet.api.labels import ACTION_ANNOTATION, FIELD_MANAGER
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import DriverError, NodePoolNotFound, NodePoolRef, NodePoolState
from gpufleet.drivers.kube_objects import dig, is_deleting, name_of, ready_node_names

GROUP = "cluster.x-k8s.io"
# The storage version since Cluster API v1.11. For MachinePools as well in v1.13.2 (which
# CAPG v1.13.1 is built on) and v1.14.2; both also serve v1beta1, deprecated.
VERSION = "v1beta2"
MACHINE_DEPLOYMENTS = "machinedeployments"
MACHINE_POOLS = "machinepools"
MACHINES = "machines"
CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"
DEPLOYMENT_NAME_LABEL = "cluster.x-k8s.io/deployment-name"
DELETE_MACHINE_ANNOTATION = "cluster.x-k8s.io/delete-machine"
MERGE_PATCH = "application/merge-patch+json"

# (api group, resource, verb) of every Kubernetes call below; the chart's RBAC (values
# `drivers.clusterAPI.enabled`) is checked against it.
CALLS = (
    (GROUP, "machinedeployments", "get"),
    (GROUP, "machinedeployments/scale", "patch"),
    (GROUP, "machines", "list"),
    (GROUP, "machines", "patch"),
    ("", "nodes", "get"),
    # clusterapi_pool.py, for `clusterAPI.kind: MachinePool`: one patch sets replicas and
    # the record of nodes already counted together.
    (GROUP, "machinepools", "get"),
    (GROUP, "machinepools", "patch"),
)
READS = tuple(c for c in CALLS if c[2] in ("get", "list"))


class ClusterApiDriver:
    """NodePoolDriver for `driver.type: ClusterAPI`; see the module docstring."""

    def __init__(self, api_client: ApiClient, provider: str, spec: CloudProviderSpec) -> None:
        settings = spec.driver.cluster_api
        if settings is None:  # the API's validation makes this unreachable
            raise DriverError("driver.clusterAPI is required for driver type ClusterAPI")
        self._objects = CustomObjectsApi(api_client)
        self._core = CoreV1Api(api_client)
        self._provider = provider
        self._spec = spec
        self._namespace = settings.namespace
        self._cluster = settings.cluster_name
        self._where = GroupOf(
            MACHINE_DEPLOYMENTS, "MachineDeployment", self._namespace, self._cluster
        )

    # -- the Protocol ---------------------------------------------------------------

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        deployment = await self._deployment(ref)
        machines = await self._machines(ref)
        live = [m for m in machines if not is_deleting(m)]
        names = [_node_name(m) for m in live]
        with_nodes = [str(dig(m, "status", "nodeRef", "name")) for m in live if _has_node(m)]
        ready = await ready_node_names(self._core, with_nodes)
        return NodePoolState(
            target_size=replicas_of(deployment),
            ready_nodes=tuple(sorted(ready)),
            all_nodes=tuple(sorted(names)),
        )

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        if size < 0:
            raise DriverError(f"target size must not be negative, got {size}", reason="InvalidSize")
        await self._deployment(ref)  # NodePoolNotFound before any write
        await self._scale(ref, size)

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        await self._deployment(ref)  # NodePoolNotFound before any write
        wanted = set(names)
        marked = 0
        for machine in await self._machines(ref):
            if _node_name(machine) not in wanted and name_of(machine) not in wanted:
                continue
            annotations = dig(machine, "metadata", "annotations") or {}
            if is_deleting(machine) or DELETE_MACHINE_ANNOTATION in annotations:
                continue  # an earlier call counted it already
            await self._mark(machine, action_id)
            marked += 1
        if marked:
            # Read again after marking: another writer may have moved replicas meanwhile,
            # and lowering the value we read at the start would undo that.
            current = replicas_of(await self._deployment(ref))
            await self._scale(ref, max(current - marked, 0))

    # -- Cluster API objects ------------------------------------------------------------

    async def _deployment(self, ref: NodePoolRef) -> dict[str, Any]:
        check_pool(self._provider, self._spec, ref)
        return await read_group(self._objects, self._where, ref)

    def _missing(self, ref: NodePoolRef) -> str:
        return self._where.missing(ref)

    async def _machines(self, ref: NodePoolRef) -> list[dict[str, Any]]:
        selector = (
            f"{CLUSTER_NAME_LABEL}={self._cluster},{DEPLOYMENT_NAME_LABEL}={ref.external_name}"
        )
        listed = await asyncio.to_thread(
            self._objects.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self._namespace,
            MACHINES,
            label_selector=selector,
        )
        return list(dig(listed, "items") or [])

    async def _scale(self, ref: NodePoolRef, size: int) -> None:
        try:
            await asyncio.to_thread(
                self._objects.patch_namespaced_custom_object_scale,
                GROUP,
                VERSION,
                self._namespace,
                MACHINE_DEPLOYMENTS,
                ref.external_name,
                {"spec": {"replicas": size}},
                _content_type=MERGE_PATCH,
                field_manager=FIELD_MANAGER,
            )
        except ApiException as error:
            if error.status == 404:  # deleted between the read and the write
                raise NodePoolNotFound(self._missing(ref)) from None
            raise

    async def _mark(self, machine: dict[str, Any], action_id: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        patch = {
            "metadata": {
                "annotations": {DELETE_MACHINE_ANNOTATION: stamp, ACTION_ANNOTATION: action_id}
            }
        }
        try:
            await asyncio.to_thread(
                self._objects.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                self._namespace,
                MACHINES,
                name_of(machine),
                patch,
                _content_type=MERGE_PATCH,
                field_manager=FIELD_MANAGER,
            )
        except ApiException as error:
            if error.status != 404:  # gone meanwhile: the goal is reached
                raise


@dataclass(frozen=True)
class GroupOf:
    """Where a node pool's Cluster API object lives: its kind, namespace and Cluster."""

    plural: str
    kind: str
    namespace: str
    cluster: str

    def missing(self, ref: NodePoolRef) -> str:
        return (
            f"no {self.kind} {ref.external_name} of Cluster {self.cluster} "
            f"in namespace {self.namespace}"
        )


async def read_group(objects: CustomObjectsApi, where: GroupOf, ref: NodePoolRef) -> dict[str, Any]:
    """The MachineDeployment or MachinePool behind `ref`, or NodePoolNotFound."""
    try:
        found: Any = await asyncio.to_thread(
            objects.get_namespaced_custom_object,
            GROUP,
            VERSION,
            where.namespace,
            where.plural,
            ref.external_name,
        )
    except ApiException as error:
        if error.status == 404:
            raise NodePoolNotFound(where.missing(ref)) from None
        raise
    if dig(found, "spec", "clusterName") != where.cluster:
        # Same name in another Cluster: never resize what belongs to someone else.
        raise NodePoolNotFound(where.missing(ref))
    return dict(found)


def check_pool(provider: str, spec: CloudProviderSpec, ref: NodePoolRef) -> None:
    """NodePoolNotFound unless `ref` names one of this provider's node pools."""
    known = ref.provider == provider and any(p.name == ref.node_pool for p in spec.node_pools)
    if not known:
        raise NodePoolNotFound(f"provider {provider} has no node pool {ref.node_pool!r}")


def _has_node(machine: dict[str, Any]) -> bool:
    return bool(dig(machine, "status", "nodeRef", "name"))


def _node_name(machine: dict[str, Any]) -> str:
    """The Node's name once the Machine has one; the Machine's name while it boots."""
    if _has_node(machine):
        return str(dig(machine, "status", "nodeRef", "name"))
    return name_of(machine)


def replicas_of(group: dict[str, Any]) -> int:
    """`spec.replicas` of a MachineDeployment or MachinePool."""
    replicas = dig(group, "spec", "replicas")
    # Cluster API's defaulting webhook fills in replicas (1 unless autoscaler annotations
    # say otherwise); where no webhook ran, absent is read as that default.
    return int(replicas) if isinstance(replicas, int) else 1

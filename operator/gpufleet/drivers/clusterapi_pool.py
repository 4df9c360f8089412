"""The ClusterAPI driver for `clusterAPI.kind: MachinePool`: a node pool is a MachinePool.

A MachinePool is a group of instances that the infrastructure provider runs itself (a
GKE node pool through CAPG's GCPManagedMachinePool, an Azure scale set, an AWS Auto
Scaling group); Cluster API mirrors it. Only the MachinePool is touched (API version
cluster.x-k8s.io/v1beta2, which Cluster API v1.13 and v1.14 both serve and store):

- target size: `spec.replicas` (absolute, so a retry is harmless), with the action id in
  an annotation as on every resize. The provider resizes its group to match; CAPG v1.13
  only while the GCPManagedMachinePool's `scaling.enableAutoscaling` is false, and per
  zone of its `nodeLocations` (docs/clouds.md);
- nodes: one per entry of `spec.providerIDList`, the provider's instances, which Cluster
  API copies from the infrastructure object. An instance whose Node is among
  `status.nodeRefs` takes that Node's name (matched by `spec.providerID`) and is Ready
  when the Node is; one without a Node yet is booting and goes by its provider ID;
- deleting nodes: a MachinePool has no way to remove a chosen instance where the provider
  keeps no MachinePool Machines, and CAPG's GKE pools keep none. So `spec.replicas` is
  lowered by the number of named instances newly counted, and the provider picks which
  instances go (GKE: its managed instance group). The counted instances and the action
  that counted them are recorded in an annotation of their own in the same patch, guarded
  by the resourceVersion read, so a retry, or a repeat while the provider is still
  shrinking, counts nothing. (Not the action-id annotation: every resize rewrites that.)

Namespace, cluster and Node visibility are as for MachineDeployments (clusterapi.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from gpufleet.api.labels import ACTION_ANNOTATION, FIELD_MANAGER, REMOVING_NODES_ANNOTATION
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import DriverError, NodePoolNotFound, NodePoolRef, NodePoolState
from gpufleet.drivers.clusterapi import (
    GROUP,
    MACHINE_POOLS,
    MERGE_PATCH,
    VERSION,
    GroupOf,
    check_pool,
    read_group,
    replicas_of,
)
from gpufleet.drivers.kube_objects import dig, node_is_ready, read_nodes

# Tries of delete_nodes' read-count-write before a conflict is reported: each lost race
# means another writer moved the MachinePool, so the count is made again on what it wrote.
CONFLICT_TRIES = 3


@dataclass(frozen=True)
class Instance:
    """One instance of the provider's group and its Node's name once it has one."""

    provider_id: str
    node: str | None = None

    @property
    def name(self) -> str:
        return self.node or self.provider_id


@dataclass(frozen=True)
class Removal:
    """What one delete_nodes call writes: the new replicas and the instances recorded."""

    replicas: int
    counted: tuple[str, ...]
    record: tuple[str, ...]


def instances(pool: Mapping[str, Any], node_ids: Mapping[str, str]) -> list[Instance]:
    """The MachinePool's instances; `node_ids` maps its Nodes' names to their provider IDs."""
    by_id = {provider_id: name for name, provider_id in node_ids.items() if provider_id}
    listed = dig(pool, "spec", "providerIDList") or []
    unique = dict.fromkeys(str(p) for p in listed if p)  # ordered, without repeats
    return [Instance(p, by_id.get(p)) for p in unique]


def recorded(pool: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    """The action id and provider IDs an earlier delete_nodes call recorded."""
    annotations = dig(pool, "metadata", "annotations") or {}
    try:
        found = json.loads(str(annotations.get(REMOVING_NODES_ANNOTATION) or "{}"))
    except ValueError:
        return None, ()  # not ours to read: count as if nothing was recorded
    if not isinstance(found, dict):
        return None, ()
    action, listed = found.get("actionId"), found.get("providerIDs")
    ids = tuple(str(p) for p in listed if p) if isinstance(listed, list) else ()
    return (str(action) if action else None), ids


def removal_patch(pool: Mapping[str, Any], removal: Removal, action_id: str) -> dict[str, Any]:
    """The merge patch of one delete_nodes call: replicas and its record together, applied
    only to the version of the MachinePool that was read."""
    record = {"actionId": action_id, "providerIDs": list(removal.record)}
    return {
        "metadata": {
            "resourceVersion": dig(pool, "metadata", "resourceVersion"),
            "annotations": {
                REMOVING_NODES_ANNOTATION: json.dumps(record, separators=(",", ":")),
                ACTION_ANNOTATION: action_id,
            },
        },
        "spec": {"replicas": removal.replicas},
    }


def plan_removal(
    group: Sequence[Instance],
    replicas: int,
    names: Collection[str],
    *,
    record: tuple[str | None, tuple[str, ...]],
    action_id: str,
) -> Removal:
    """How far to lower `replicas` for the instances `names` (Node names or provider IDs).

    A recorded instance counts again only once the provider has caught up with the last
    scale-down (no more instances than replicas) and the call is a new action: then the
    provider removed others and this is a new request for the same instance.
    """
    last_action, counted_before = record
    present = {i.provider_id for i in group}
    catching_up = len(group) > replicas
    keep = catching_up or last_action == action_id
    kept = [p for p in counted_before if p in present] if keep else []
    new = [
        i.provider_id
        for i in group
        if (i.name in names or i.provider_id in names) and i.provider_id not in kept
    ]
    return Removal(max(replicas - len(new), 0), tuple(new), tuple(kept + new))


class ClusterApiMachinePoolDriver:
    """NodePoolDriver for `driver.type: ClusterAPI` with `clusterAPI.kind: MachinePool`."""

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
        self._where = GroupOf(MACHINE_POOLS, "MachinePool", self._namespace, self._cluster)

    # -- the Protocol ---------------------------------------------------------------

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        pool = await self._pool(ref)
        group, nodes = await self._instances(pool)
        ready = [i.name for i in group if i.node is not None and node_is_ready(nodes[i.node])]
        return NodePoolState(
            target_size=replicas_of(pool),
            ready_nodes=tuple(sorted(ready)),
            all_nodes=tuple(sorted(i.name for i in group)),
        )

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        if size < 0:
            raise DriverError(f"target size must not be negative, got {size}", reason="InvalidSize")
        await self._pool(ref)  # NodePoolNotFound before any write
        patch = {
            "metadata": {"annotations": {ACTION_ANNOTATION: action_id}},
            "spec": {"replicas": size},
        }
        await self._patch(ref, patch)

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        for attempt in range(CONFLICT_TRIES):
            pool = await self._pool(ref)
            group, _ = await self._instances(pool)
            removal = plan_removal(
                group, replicas_of(pool), set(names), record=recorded(pool), action_id=action_id
            )
            if not removal.counted:
                return  # gone, never there, or counted by an earlier call
            try:
                await self._patch(ref, removal_patch(pool, removal, action_id))
                return
            except ApiException as error:
                if error.status != 409 or attempt == CONFLICT_TRIES - 1:
                    raise

    # -- Cluster API objects ------------------------------------------------------------

    async def _pool(self, ref: NodePoolRef) -> dict[str, Any]:
        check_pool(self._provider, self._spec, ref)
        return await read_group(self._objects, self._where, ref)

    def _missing(self, ref: NodePoolRef) -> str:
        return self._where.missing(ref)

    async def _instances(self, pool: dict[str, Any]) -> tuple[list[Instance], dict[str, Any]]:
        refs = dig(pool, "status", "nodeRefs") or []
        nodes = await read_nodes(self._core, (str(dig(r, "name")) for r in refs if dig(r, "name")))
        node_ids = {name: _provider_id(node) for name, node in nodes.items()}
        return instances(pool, node_ids), nodes

    async def _patch(self, ref: NodePoolRef, patch: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(
                self._objects.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                self._namespace,
                MACHINE_POOLS,
                ref.external_name,
                patch,
                _content_type=MERGE_PATCH,
                field_manager=FIELD_MANAGER,
            )
        except ApiException as error:
            if error.status == 404:  # deleted between the read and the write
                raise NodePoolNotFound(self._missing(ref)) from None
            raise


def _provider_id(node: Any) -> str:
    return str((node.spec.provider_id if node.spec else None) or "")

"""The Karpenter driver: a node pool is a Karpenter NodePool (karpenter.sh/v1).

A NodePool has no size: Karpenter launches NodeClaims for pending pods that fit it, up to
its `spec.limits`. So the driver steers instead of sizing:

- target size: the NodePool's GPU limit, `spec.limits["nvidia.com/gpu"] = nodes x
  gpusPerNode`, written absolutely. It is an upper bound: Karpenter makes the nodes only
  when there are pods to place, so the fleet loop's planner budget (and with it the
  power caps) holds, but the nodes follow the workload, not the number. Reading it back
  gives `limit // gpusPerNode`; a NodePool without a GPU limit reports its live nodes.
- preference: `spec.weight` (Karpenter tries higher weights first) from the provider's
  role and order, so Primary providers' NodePools are tried before Secondary ones.
- scale-down: Karpenter never removes nodes because a limit was lowered, so when there
  are more live NodeClaims than the target the driver deletes the surplus (booting ones
  first, then the newest); Karpenter's termination finalizer drains and removes each.
- nodes: NodeClaims labelled `karpenter.sh/nodepool=<externalName>`, named by
  `status.nodeName` once registered, else by the NodeClaim's name; Ready when that Node
  exists and is Ready. Deleting ones are left out: they are on their way out.
- deleting nodes: their NodeClaims are deleted (gone ones succeed) and the limit is
  lowered by as many, so Karpenter does not replace them.

Capacity errors surface in Karpenter as NodeClaims that fail to launch and are retried
or given up by Karpenter itself; this driver does not raise CapacityError (yet).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from gpufleet.api.labels import ACTION_ANNOTATION, FIELD_MANAGER
from gpufleet.api.provider import CloudProviderSpec, NodePool, Role
from gpufleet.drivers.base import DriverError, NodePoolNotFound, NodePoolRef, NodePoolState
from gpufleet.drivers.kube_objects import dig, is_deleting, name_of, ready_node_names

GROUP = "karpenter.sh"
VERSION = "v1"
NODE_POOLS = "nodepools"
NODE_CLAIMS = "nodeclaims"
NODE_POOL_LABEL = "karpenter.sh/nodepool"
GPU_RESOURCE = "nvidia.com/gpu"
MERGE_PATCH = "application/merge-patch+json"
_PLAIN_INTEGER = re.compile(r"^\d+$")

# (api group, resource, verb) of every Kubernetes call below; the chart's RBAC (values
# `drivers.karpenter.enabled`) is checked against it. NodePools and NodeClaims are
# cluster-scoped.
CALLS = (
    (GROUP, "nodepools", "get"),
    (GROUP, "nodepools", "patch"),
    (GROUP, "nodeclaims", "list"),
    (GROUP, "nodeclaims", "delete"),
    ("", "nodes", "get"),
)
READS = tuple(c for c in CALLS if c[2] in ("get", "list"))


def weight_for(spec: CloudProviderSpec) -> int:
    """Karpenter weight (1-100, higher first): Primary 51-100, Secondary 1-50, each
    falling with `order`, so the planner's preference and Karpenter's agree."""
    base, span = (51, 50) if spec.role == Role.PRIMARY else (1, 50)
    return base + max(span - 1 - spec.order, 0)


def gpu_limit(node_pool: dict[str, Any]) -> int | None:
    raw = dig(node_pool, "spec", "limits", GPU_RESOURCE)
    if raw is None:
        return None
    text = str(raw).strip()
    if not _PLAIN_INTEGER.match(text):
        # We only write plain integers; anything else was written by someone else.
        raise DriverError(
            f"NodePool limit {GPU_RESOURCE} must be a plain integer, got {text!r}",
            reason="InvalidNodePool",
        )
    return int(text)


class KarpenterDriver:
    """NodePoolDriver for `driver.type: Karpenter`; see the module docstring."""

    def __init__(self, api_client: ApiClient, provider: str, spec: CloudProviderSpec) -> None:
        self._objects = CustomObjectsApi(api_client)
        self._core = CoreV1Api(api_client)
        self._provider = provider
        self._spec = spec

    # -- the Protocol ---------------------------------------------------------------

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        pool = self._pool(ref)
        node_pool = await self._node_pool(ref)
        claims = [c for c in await self._claims(ref) if not is_deleting(c)]
        registered = [_node_name(c) for c in claims if _registered(c)]
        ready = await ready_node_names(self._core, registered)
        limit = gpu_limit(node_pool)
        return NodePoolState(
            target_size=len(claims) if limit is None else limit // pool.gpus_per_node,
            ready_nodes=tuple(sorted(ready)),
            all_nodes=tuple(sorted(_node_name(c) for c in claims)),
        )

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        if size < 0:
            raise DriverError(f"target size must not be negative, got {size}", reason="InvalidSize")
        pool = self._pool(ref)
        await self._node_pool(ref)  # NodePoolNotFound before any write
        await self._set_limit(ref, pool, size, action_id)
        live = [c for c in await self._claims(ref) if not is_deleting(c)]
        for claim in _surplus(live, len(live) - size):
            await self._delete_claim(name_of(claim))

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        pool = self._pool(ref)
        await self._node_pool(ref)
        wanted = set(names)
        deleted = 0
        for claim in await self._claims(ref):
            if is_deleting(claim):
                continue  # an earlier call counted it already
            if _node_name(claim) in wanted or name_of(claim) in wanted:
                deleted += await self._delete_claim(name_of(claim))
        if deleted:
            # Read the limit after deleting, so a concurrent change is lowered, not undone.
            limit = gpu_limit(await self._node_pool(ref))
            if limit is not None:
                size = max(limit // pool.gpus_per_node - deleted, 0)
                await self._set_limit(ref, pool, size, action_id)

    # -- Karpenter objects --------------------------------------------------------------

    def _pool(self, ref: NodePoolRef) -> NodePool:
        if ref.provider == self._provider:
            for pool in self._spec.node_pools:
                if pool.name == ref.node_pool:
                    return pool
        raise NodePoolNotFound(f"provider {self._provider} has no node pool {ref.node_pool!r}")

    async def _node_pool(self, ref: NodePoolRef) -> dict[str, Any]:
        try:
            found: Any = await asyncio.to_thread(
                self._objects.get_cluster_custom_object,
                GROUP,
                VERSION,
                NODE_POOLS,
                ref.external_name,
            )
        except ApiException as error:
            if error.status == 404:
                raise NodePoolNotFound(f"no Karpenter NodePool {ref.external_name}") from None
            raise
        return dict(found)

    async def _claims(self, ref: NodePoolRef) -> list[dict[str, Any]]:
        listed = await asyncio.to_thread(
            self._objects.list_cluster_custom_object,
            GROUP,
            VERSION,
            NODE_CLAIMS,
            label_selector=f"{NODE_POOL_LABEL}={ref.external_name}",
        )
        return list(dig(listed, "items") or [])

    async def _set_limit(self, ref: NodePoolRef, pool: NodePool, size: int, action_id: str) -> None:
        patch = {
            "metadata": {"annotations": {ACTION_ANNOTATION: action_id}},
            # A merge patch keeps the user's other limits (cpu, memory) as they are.
            "spec": {
                "limits": {GPU_RESOURCE: str(size * pool.gpus_per_node)},
                "weight": weight_for(self._spec),
            },
        }
        try:
            await asyncio.to_thread(
                self._objects.patch_cluster_custom_object,
                GROUP,
                VERSION,
                NODE_POOLS,
                ref.external_name,
                patch,
                _content_type=MERGE_PATCH,
                field_manager=FIELD_MANAGER,
            )
        except ApiException as error:
            if error.status == 404:
                raise NodePoolNotFound(f"no Karpenter NodePool {ref.external_name}") from None
            raise

    async def _delete_claim(self, name: str) -> int:
        """1 when this call deleted the NodeClaim, 0 when it was gone already."""
        try:
            await asyncio.to_thread(
                self._objects.delete_cluster_custom_object, GROUP, VERSION, NODE_CLAIMS, name
            )
        except ApiException as error:
            if error.status == 404:
                return 0
            raise
        return 1


def _registered(claim: dict[str, Any]) -> bool:
    return bool(dig(claim, "status", "nodeName"))


def _node_name(claim: dict[str, Any]) -> str:
    """The Node's name once registered; the NodeClaim's name while it launches."""
    return str(dig(claim, "status", "nodeName")) if _registered(claim) else name_of(claim)


def _surplus(claims: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """NodeClaims to remove on a scale-down: not yet registered first, then the newest."""
    newest_first = sorted(
        claims,
        key=lambda c: (str(dig(c, "metadata", "creationTimestamp") or ""), name_of(c)),
        reverse=True,
    )
    # A stable sort on "registered" keeps the newest-first order within each group.
    return sorted(newest_first, key=_registered)[: max(count, 0)]

"""The Simulated driver: a cloud whose machines are kwok Nodes.

Scaling up records launches in the provider's ConfigMap (see simulated_state for the
contract); `get_pool`, which the fleet loop calls every tick, creates each Node once its
boot time has passed. Nodes carry the pool's labels and taints, GPU feature discovery's
labels, `nvidia.com/gpu` capacity and kwok's annotation, so the real scheduler places GPU
pods on them. Failure knobs in the ConfigMap make scale-ups fail on request.

Every write to the ConfigMap carries the resourceVersion it was computed from, so two
driver instances never overwrite each other; the loser re-reads and recomputes.

The pool's Nodes are listed on every call, unless the driver is given `WatchedNodes`: the
operator's own watch of the cluster's node-pool Nodes, fed to it each tick. Then a quiet
tick lists nothing: at 20 providers and 500 nodes the lists were 17 requests a second and
every Node's JSON parsed each tick. What a watch has not delivered yet is harmless: a
launch whose Node is not seen is created again (409, taken as done), a deleted Node still
seen is deleted again (404, taken as done).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from kubernetes.client import ApiClient, CoreV1Api, V1ConfigMap, V1Node
from kubernetes.client.exceptions import ApiException

from gpufleet.api.labels import (
    ACTION_ANNOTATION,
    FIELD_MANAGER,
    GPU_TYPE_LABEL,
    NODE_POOL_LABEL,
    ORDINAL_ANNOTATION,
    PROVIDER_LABEL,
)
from gpufleet.api.provider import CloudProviderSpec, NodePool
from gpufleet.drivers import simulated_state as sim
from gpufleet.drivers.base import (
    DriverError,
    InsufficientCapacity,
    NodePoolNotFound,
    NodePoolRef,
    NodePoolState,
    ProviderUnavailable,
)
from gpufleet.drivers.kube_objects import dig
from gpufleet.drivers.side_by_side import side_by_side

DEFAULT_NAMESPACE = "gpufleet-system"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
_WRITE_ATTEMPTS = 8
_NODE_WRITES = 8  # a pool's Node creates or deletes at once
_TERMINAL_PHASES = ("Succeeded", "Failed")

# (api group, resource, verb) of every Kubernetes call below: the ConfigMap in `namespace`,
# Nodes and Pods cluster-wide. The Helm chart's RBAC is checked against it.
CALLS = (
    ("", "configmaps", "get"),
    ("", "configmaps", "create"),
    ("", "configmaps", "update"),
    ("", "nodes", "list"),
    ("", "nodes", "create"),
    ("", "nodes", "delete"),
    ("", "pods", "list"),
)
# Of those, the calls on a namespaced kind that must stay cluster-wide even when the operator
# watches only some namespaces: a scale-down counts every pod bound to a node, and pods of an
# unwatched namespace keep a node busy as much as any (the chart grants this list cluster-wide).
CLUSTER_WIDE_CALLS = (("", "pods", "list"),)


class WriteConflict(DriverError):
    """Other writers kept changing the ConfigMap; the next tick tries again."""

    reason = "WriteConflict"


def config_map_name(provider: str) -> str:
    return f"gpufleet-sim-{provider}"


def node_manifest(provider: str, pool: NodePool, launch: sim.Pending) -> dict[str, Any]:
    """A kwok-managed GPU Node for one launch of `pool`."""
    gpus = str(pool.gpus_per_node)
    # Nodes accept status on create; kwok then keeps the capacity given here.
    capacity = {"cpu": "96", "memory": "1Ti", "pods": "110", GPU_RESOURCE: gpus}
    labels = {label.key: label.value for label in pool.labels}
    labels.update(
        {
            "kubernetes.io/hostname": launch.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            # GPU feature discovery's labels, which workloads' node selectors use.
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": f"NVIDIA-{pool.gpu_type}",
            "nvidia.com/gpu.count": gpus,
            # Ours last, so a pool's labels cannot hide which pool a node belongs to.
            PROVIDER_LABEL: provider,
            NODE_POOL_LABEL: pool.name,
            GPU_TYPE_LABEL: pool.gpu_type,
        }
    )
    taints = [
        {"key": t.key, "effect": t.effect.value, **({"value": t.value} if t.value else {})}
        for t in pool.taints
    ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": launch.name,
            "labels": labels,
            "annotations": {
                KWOK_ANNOTATION: "fake",
                ORDINAL_ANNOTATION: launch.name.rsplit("-", 1)[-1],
                ACTION_ANNOTATION: launch.action_id,
            },
        },
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def _observed(node: Mapping[str, Any]) -> sim.ObservedNode:
    """A listed Node as its JSON (not the client's model: building a V1Node per node per
    tick was a tenth of the operator's CPU at 20 providers and 250 nodes)."""
    annotations = dig(node, "metadata", "annotations") or {}
    try:
        ordinal = int(annotations.get(ORDINAL_ANNOTATION, "-1"))
    except (TypeError, ValueError):
        ordinal = -1
    conditions = dig(node, "status", "conditions") or []
    ready = any(
        isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in conditions
    )
    return sim.ObservedNode(str(dig(node, "metadata", "name") or ""), ordinal, ready)


class NodeFacts(Protocol):
    """What a watch keeps of a node-pool Node (the operator's node index entries)."""

    @property
    def name(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def node_pool(self) -> str: ...
    @property
    def ready(self) -> bool: ...


def ordinal_of(name: str) -> int:
    """The launch ordinal a Simulated Node's name ends with (its ORDINAL_ANNOTATION too)."""
    suffix = name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


class WatchedNodes:
    """The cluster's node-pool Nodes as a watch sees them, by provider and node pool, for
    drivers on that cluster to read in place of a LIST. Unfed, it answers None: list."""

    def __init__(self) -> None:
        self._fed: tuple[NodeFacts, ...] | None = None
        self._by_pool: dict[tuple[str, str], list[sim.ObservedNode]] = {}

    def update(self, nodes: Iterable[NodeFacts]) -> None:
        fed = tuple(nodes)
        if fed == self._fed:  # the same entries: identity compares first, so this is cheap
            return
        by_pool: dict[tuple[str, str], list[sim.ObservedNode]] = {}
        for node in fed:
            observed = sim.ObservedNode(node.name, ordinal_of(node.name), node.ready)
            by_pool.setdefault((node.provider, node.node_pool), []).append(observed)
        self._fed, self._by_pool = fed, by_pool

    def of(self, provider: str, pool: str) -> list[sim.ObservedNode] | None:
        if self._fed is None:
            return None
        return list(self._by_pool.get((provider, pool), ()))


@dataclass
class _Snapshot:
    """One consistent read: the ConfigMap (with its version) and the pool's Nodes."""

    data: dict[str, str]
    resource_version: str | None
    nodes: list[sim.ObservedNode]


class SimulatedDriver:
    """NodePoolDriver for `driver.type: Simulated`; see the module docstring."""

    def __init__(
        self,
        api_client: ApiClient,
        provider: str,
        spec: CloudProviderSpec,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        clock: Callable[[], float] = time.time,
        watched: WatchedNodes | None = None,
    ) -> None:
        self._core = CoreV1Api(api_client)
        self._watched = watched
        self._provider = provider
        self._spec = spec
        self._namespace = namespace
        self._clock = clock
        self._config_map = config_map_name(provider)
        simulated = spec.driver.simulated
        self._prefix = (simulated.node_name_prefix if simulated else None) or provider

    # -- the Protocol ---------------------------------------------------------------

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        pool = self._pool(ref)
        plan, nodes = await self._reconcile(pool, lambda state, _snap: state)
        return self._state_of(plan, nodes)

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        if size < 0:
            raise DriverError(f"target size must be non-negative, got {size}", reason="InvalidSize")
        pool = self._pool(ref)
        short: list[int] = []

        def resize(state: sim.PoolState, snap: _Snapshot) -> sim.PoolState:
            current = self._current_size(state, snap)
            knobs = sim.decode_knobs(snap.data, pool.name)
            granted = sim.grant(current, size, knobs, self._quota_nodes(pool, snap.data))
            short[:] = [granted] if granted < size else []
            if granted == state.target_size:
                return state
            return replace(state, target_size=granted, last_action_id=action_id)

        await self._reconcile(pool, resize)
        if short:
            raise InsufficientCapacity(
                f"node pool {pool.name}: the simulated cloud has capacity for {short[0]} "
                f"nodes, {size} were asked for"
            )

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        pool = self._pool(ref)
        wanted = set(names)

        def remove(state: sim.PoolState, snap: _Snapshot) -> sim.PoolState:
            # Only names still in the pool count: deleting a gone node succeeds and,
            # retried, never shrinks the pool twice.
            current = self._current_size(state, snap)
            live = {n.name for n in sim.live_nodes(state, snap.nodes)}
            doomed = sorted(wanted & live)
            cancelled = [p for p in state.pending if p.name in wanted and p.name not in live]
            if not doomed and not cancelled:
                return state
            return replace(
                state,
                target_size=max(current - len(doomed) - len(cancelled), 0),
                pending=tuple(p for p in state.pending if p not in cancelled),
                deleting=(*state.deleting, *doomed),
                last_action_id=action_id,
            )

        await self._reconcile(pool, remove)

    # -- the loop every call runs -----------------------------------------------------

    async def _reconcile(
        self,
        pool: NodePool,
        change: Callable[[sim.PoolState, _Snapshot], sim.PoolState],
    ) -> tuple[sim.Plan, list[sim.ObservedNode]]:
        """Read, apply `change`, plan, write with a precondition, then act.

        The intent (target, launches, victims) is recorded before the cluster is
        touched, so a crash between the two is finished by the next call.
        """
        for _ in range(_WRITE_ATTEMPTS):
            snap = await self._read(pool)
            before = sim.decode(snap.data, pool.name)
            state = change(before, snap)
            if state.target_size is not None and state.target_size < len(
                sim.live_nodes(state, snap.nodes)
            ):
                # Only a scale-down of running nodes needs to know which ones are busy.
                snap.nodes = await self._with_pod_counts(snap.nodes)
            plan = sim.plan(
                state,
                snap.nodes,
                now=self._clock(),
                boot_seconds=pool.boot_seconds,
                name_for=lambda ordinal: sim.node_name(self._prefix, pool.name, ordinal),
            )
            if plan.state != before and not await self._write(snap, plan.state, pool.name):
                continue
            await self._act(pool, plan)
            return plan, snap.nodes
        raise WriteConflict(f"ConfigMap {self._config_map} kept changing; will retry")

    async def _read(self, pool: NodePool) -> _Snapshot:
        try:
            config_map = await asyncio.to_thread(
                self._core.read_namespaced_config_map, self._config_map, self._namespace
            )
            data = dict(config_map.data or {})
            version = config_map.metadata.resource_version if config_map.metadata else None
        except ApiException as error:
            if error.status != 404:
                raise
            data, version = {}, None
        watched = self._watched.of(self._provider, pool.name) if self._watched else None
        if watched is not None:
            return _Snapshot(data, version, watched)
        selector = f"{PROVIDER_LABEL}={self._provider},{NODE_POOL_LABEL}={pool.name}"
        # Without preloading, the client returns the HTTP response, not its typed model.
        listed: Any = await asyncio.to_thread(
            self._core.list_node, label_selector=selector, _preload_content=False
        )
        items = json.loads(listed.data).get("items") or []
        return _Snapshot(data, version, [_observed(n) for n in items])

    async def _write(self, snap: _Snapshot, state: sim.PoolState, pool: str) -> bool:
        """Writes the pool's keys; False when someone else wrote first."""
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self._config_map,
                "namespace": self._namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "gpufleet",
                    PROVIDER_LABEL: self._provider,
                },
            },
            "data": sim.merge(snap.data, state, pool),
        }
        try:
            if snap.resource_version is None:
                await asyncio.to_thread(
                    self._core.create_namespaced_config_map,
                    self._namespace,
                    V1ConfigMap.model_validate(body),
                    field_manager=FIELD_MANAGER,
                )
            else:
                body["metadata"]["resourceVersion"] = snap.resource_version
                await asyncio.to_thread(
                    self._core.replace_namespaced_config_map,
                    self._config_map,
                    self._namespace,
                    V1ConfigMap.model_validate(body),
                    field_manager=FIELD_MANAGER,
                )
        except ApiException as error:
            if error.status == 409:
                return False
            if error.status == 404:
                raise ProviderUnavailable(
                    f"namespace {self._namespace} for the simulated cloud's ConfigMap is missing"
                ) from None
            raise
        return True

    async def _act(self, pool: NodePool, plan: sim.Plan) -> None:
        # Side by side, as a cloud boots a batch: one by one, a surge's hundred Nodes held
        # a tick 14 s on a loaded API server (benchmarks/fleet_scale.py). Each write is
        # idempotent, so the order among them does not matter.
        async def create(launch: sim.Pending) -> None:
            node = V1Node.model_validate(node_manifest(self._provider, pool, launch))
            try:
                await asyncio.to_thread(self._core.create_node, node, field_manager=FIELD_MANAGER)
            except ApiException as error:
                if error.status != 409:  # another instance created it first
                    raise

        async def delete(name: str) -> None:
            try:
                await asyncio.to_thread(self._core.delete_node, name)
            except ApiException as error:
                if error.status != 404:  # already gone: the goal is reached
                    raise

        await side_by_side([functools.partial(create, n) for n in plan.create], _NODE_WRITES)
        await side_by_side([functools.partial(delete, n) for n in plan.delete], _NODE_WRITES)

    async def _with_pod_counts(self, nodes: list[sim.ObservedNode]) -> list[sim.ObservedNode]:
        async def count(node: sim.ObservedNode) -> sim.ObservedNode:
            pods = await asyncio.to_thread(
                self._core.list_pod_for_all_namespaces,
                field_selector=f"spec.nodeName={node.name}",
            )
            phases = [p.status.phase if p.status else None for p in pods.items]
            bound = sum(1 for phase in phases if phase not in _TERMINAL_PHASES)
            return replace(node, pods=bound)

        return [await count(n) for n in nodes]

    # -- helpers ----------------------------------------------------------------------

    def _pool(self, ref: NodePoolRef) -> NodePool:
        if ref.provider == self._provider:
            for pool in self._spec.node_pools:
                if pool.name == ref.node_pool:
                    return pool
        raise NodePoolNotFound(f"provider {self._provider} has no node pool {ref.node_pool!r}")

    @staticmethod
    def _current_size(state: sim.PoolState, snap: _Snapshot) -> int:
        if state.target_size is not None:
            return state.target_size
        present = {n.name for n in snap.nodes}
        launching = [p for p in state.pending if p.name not in present]
        return len(sim.live_nodes(state, snap.nodes)) + len(launching)

    def _quota_nodes(self, pool: NodePool, data: Mapping[str, str]) -> int | None:
        """Most nodes `pool` may have under the provider's gpuQuota, given the others."""
        if self._spec.gpu_quota is None:
            return None
        others = sum(
            (sim.decode(data, p.name).target_size or 0) * p.gpus_per_node
            for p in self._spec.node_pools
            if p.name != pool.name
        )
        return max(self._spec.gpu_quota - others, 0) // pool.gpus_per_node

    @staticmethod
    def _state_of(plan: sim.Plan, nodes: list[sim.ObservedNode]) -> NodePoolState:
        live = [n for n in nodes if n.name not in plan.delete]
        names = {n.name for n in live} | {p.name for p in plan.state.pending}
        target = plan.state.target_size
        return NodePoolState(
            target_size=len(names) if target is None else target,
            ready_nodes=tuple(sorted(n.name for n in live if n.ready)),
            all_nodes=tuple(sorted(names)),
        )

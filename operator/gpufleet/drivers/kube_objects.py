"""Small helpers the Kubernetes-backed drivers (ClusterAPI, Karpenter) share.

Custom objects come back from the kubernetes client as plain dicts; these helpers read
them defensively, because a half-written object (a Machine without status yet) is normal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException


def dig(obj: Any, *path: str) -> Any:
    """obj[path[0]][path[1]]...; None where any step is missing or not a mapping."""
    for step in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(step)
    return obj


def name_of(obj: Mapping[str, Any]) -> str:
    return str(dig(obj, "metadata", "name") or "")


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return dig(obj, "metadata", "deletionTimestamp") is not None


def node_is_ready(node: Any) -> bool:
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


async def read_nodes(core: CoreV1Api, names: Iterable[str]) -> dict[str, Any]:
    """The Nodes of `names` that exist, by name.

    Reads each Node by name instead of listing all Nodes: a pool has tens of nodes, a
    cluster may have thousands, and the chart then needs only `get` on nodes.
    """

    async def read(name: str) -> Any:
        try:
            return await asyncio.to_thread(core.read_node, name)
        except ApiException as error:
            if error.status == 404:  # not registered yet, or already gone
                return None
            raise

    wanted = sorted(set(names))
    found = await asyncio.gather(*(read(n) for n in wanted))
    return {name: node for name, node in zip(wanted, found, strict=True) if node is not None}


async def ready_node_names(core: CoreV1Api, names: Iterable[str]) -> set[str]:
    """Which of `names` are Nodes that exist and are Ready."""
    return {name for name, node in (await read_nodes(core, names)).items() if node_is_ready(node)}

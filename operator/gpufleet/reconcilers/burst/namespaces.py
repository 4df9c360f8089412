"""Namespaces of remote clusters: the one a copy goes into, made if missing, and deleted
again once gpufleet's copies in it are gone, only if gpufleet made it and it holds nothing
else (copies.namespace_fate). Also the metadata-only calls remote.py shares.

A namespace gpufleet creates is labelled `gpufleet.io/created-by: gpufleet`; one that existed
is never labelled, so never deleted. Deleting a copy puts its namespace on the sweep's list
for that provider; after a (re)connection the sweep also lists every labelled namespace once,
so a restart between deleting a copy and its namespace leaves nothing behind. Any doubt (an
error, a denied list) keeps the namespace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gpufleet.api.labels import CREATED_BY_LABEL
from gpufleet.reconcilers.burst.copies import CONTENT, Fate, namespace_fate, namespace_manifest
from gpufleet.reconcilers.burst.kubeconfig import Connection
from gpufleet.reconcilers.kube import FIELD_MANAGER, api_reason

log = logging.getLogger(__name__)

# (api group, resource, verb) made here, in each remote cluster.
NAMESPACE_CALLS = (
    ("", "namespaces", "get"),
    ("", "namespaces", "create"),
    ("", "namespaces", "list"),
    ("", "namespaces", "delete"),
    *((group, resource, "list") for _, group, resource in CONTENT),
)
TIMEOUT = 10
_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_APIS: dict[str, Any] = {"": client.CoreV1Api, "apps": client.AppsV1Api, "batch": client.BatchV1Api}


def call(api: ApiClient, group: str, method: str, kind: str) -> Any:
    """The client method `method` with `*` for `kind` (`list_namespaced_*`, StatefulSet:
    `list_namespaced_stateful_set`)."""
    return getattr(
        _APIS[group](api), method.replace("*", re.sub(r"\B(?=[A-Z])", "_", kind).lower())
    )


def _reason(exc: Exception) -> str:
    return api_reason(exc) if isinstance(exc, ApiException) else type(exc).__name__


async def read_metadata(
    api: ApiClient, group: str, kind: str, name: str, namespace: str | None = None
) -> dict[str, Any] | None:
    """The metadata of the object of `kind` named `name`; None when there is none."""
    args = (name,) if namespace is None else (name, namespace)
    method = "read_*" if namespace is None else "read_namespaced_*"
    try:
        response = await asyncio.to_thread(
            call(api, group, method, kind),
            *args,
            _preload_content=False,
            _headers={"Accept": _METADATA},
            _request_timeout=TIMEOUT,
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    meta: dict[str, Any] = json.loads(response.data).get("metadata") or {}
    return meta


async def list_metadata(
    api: ApiClient, group: str, kind: str, namespace: str, selector: str | None = None
) -> list[dict[str, Any]]:
    """The metadata of the objects of `kind` in `namespace`: at most 50 (a namespace holding
    more is kept, whatever they are)."""
    response = await asyncio.to_thread(
        call(api, group, "list_namespaced_*", kind),
        namespace,
        label_selector=selector,
        limit=50,
        _preload_content=False,
        _headers={"Accept": _METADATA_LIST},
        _request_timeout=TIMEOUT,
    )
    items = json.loads(response.data).get("items") or []
    return [dict(item.get("metadata") or {}) for item in items]


async def ensure_namespace(api: ApiClient, name: str, facts: Mapping[str, str]) -> bool:
    """The namespace exists (created and marked as gpufleet's if it did not); False while it
    is being deleted."""
    found = await read_metadata(api, "", "Namespace", name)
    if found is not None:
        if found.get("deletionTimestamp"):
            log.info("namespace %s is being deleted: the copy waits", name, extra=dict(facts))
            return False
        return True
    body = client.V1Namespace.from_dict(namespace_manifest(name))
    assert body is not None
    try:
        await asyncio.to_thread(
            client.CoreV1Api(api).create_namespace,
            body,
            field_manager=FIELD_MANAGER,
            _request_timeout=TIMEOUT,
        )
    except ApiException as exc:
        if exc.status != 409:  # someone else made it meanwhile: theirs, not ours
            raise
    else:
        log.info("created namespace %s for a burst copy", name, extra=dict(facts))
    return True


@dataclass
class NamespaceSweep:
    # provider -> namespaces to look at (a copy in them went).
    pending: dict[str, set[str]] = field(default_factory=dict)
    # provider -> the ApiClient whose labelled namespaces were listed into `pending`.
    scanned: dict[str, ApiClient] = field(default_factory=dict)

    def copy_gone(self, provider: str, namespace: str) -> None:
        self.pending.setdefault(provider, set()).add(namespace)

    async def sweep(self, connections: Mapping[str, Connection], skip: Collection[str]) -> None:
        """Delete the namespaces of each provider's cluster that namespace_fate lets go;
        providers in `skip` (unreachable this tick) wait."""
        for provider in set(self.pending) | set(self.scanned):
            if provider not in connections:
                self.pending.pop(provider, None)
                self.scanned.pop(provider, None)
        for provider, connection in sorted(connections.items()):
            if provider in skip:
                continue
            if self.scanned.get(provider) is not connection.api:
                try:
                    marked = await asyncio.to_thread(
                        client.CoreV1Api(connection.api).list_namespace,
                        label_selector=f"{CREATED_BY_LABEL}=gpufleet",
                        _request_timeout=TIMEOUT,
                    )
                except Exception as exc:
                    log.warning(
                        "remote cluster of %s: cannot list namespaces: %s",
                        provider,
                        _reason(exc),
                        extra={"provider": provider},
                    )
                    continue
                self.scanned[provider] = connection.api
                names = {n.metadata.name for n in marked.items if n.metadata and n.metadata.name}
                self.pending.setdefault(provider, set()).update(names)
            for namespace in sorted(self.pending.get(provider, ())):
                if await self._settle(connection.api, provider, namespace) != Fate.WAIT:
                    self.pending[provider].discard(namespace)

    async def _settle(self, api: ApiClient, provider: str, namespace: str) -> Fate:
        """Delete `namespace` if namespace_fate says so; on any error keep it."""
        facts = {"provider": provider, "namespace": namespace}
        try:
            meta = await read_metadata(api, "", "Namespace", namespace)
            if meta is None:
                return Fate.KEEP  # gone already
            content: dict[str, list[dict[str, Any]]] = {}
            # Only a namespace gpufleet created is looked through; another is kept unseen.
            if (meta.get("labels") or {}).get(CREATED_BY_LABEL) == "gpufleet":
                listed = await asyncio.gather(
                    *(list_metadata(api, group, kind, namespace) for kind, group, _ in CONTENT)
                )
                content = {kind: items for (kind, _, _), items in zip(CONTENT, listed, strict=True)}
            fate, why = namespace_fate(meta, content)
            if fate == Fate.DELETE:
                # Only the namespace just looked at: not one recreated or relabelled since.
                options = client.V1DeleteOptions(
                    preconditions=client.V1Preconditions(
                        uid=meta.get("uid"), resource_version=meta.get("resourceVersion")
                    )
                )
                await asyncio.to_thread(
                    client.CoreV1Api(api).delete_namespace,
                    namespace,
                    body=options,
                    _request_timeout=TIMEOUT,
                )
                log.info("deleted namespace %s: %s", namespace, why, extra=facts)
            elif fate == Fate.KEEP:
                log.info("kept namespace %s: %s", namespace, why, extra=facts)
            return fate
        except Exception as exc:
            log.warning("kept namespace %s: %s", namespace, _reason(exc), extra=facts)
            return Fate.KEEP

"""Namespaces of remote clusters: the one a copy goes into, made if missing, and deleted
again once gpufleet's copies in it are gone, only if gpufleet made it and it holds nothing
else (copies.namespace_fate). Also the metadata-only calls remote.py shares.

Each namespace gpufleet creates gets the ResourceQuota `gpufleet-contents`, which counts its
Secrets and ConfigMaps (contents.py): the remote identity may not list those, as the grant would
read every Secret of the remote cluster. A namespace of gpufleet's found without one (an
earlier release made it, or the quota's creation failed) gets it when looked at, and is looked
at again next tick, once the quota controller has counted.

A namespace gpufleet creates is labelled `gpufleet.io/created-by: gpufleet`, with the
installation and provider it was made for (`gpufleet.io/installation`, `gpufleet.io/provider`)
and with the provider's Pod Security level (`pod-security.kubernetes.io/enforce`); one that
existed is never labelled, so never deleted, and takes a copy only when the provider lists it
(`cluster.existingNamespaces`), as does one another installation created: otherwise the copy would run beside, and as, whatever the
remote cluster's own users put there. No namespace is ever patched (the remote identity has
no such grant, so it cannot loosen any namespace's Pod Security labels): one created by an
earlier release, or before the level changed, keeps its labels, and the in-process check
(podsecurity.py) holds every copy to the provider's level all the same. Deleting a copy puts its namespace on the sweep's list
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

from gpufleet.api.labels import CREATED_BY_LABEL, FIELD_MANAGER, INSTALLATION_LABEL
from gpufleet.api.provider import ClusterAccess
from gpufleet.reconcilers.burst.contents import QUOTA_NAME, quota_manifest
from gpufleet.reconcilers.burst.copies import (
    CONTENT,
    Fate,
    NamespaceRefused,
    namespace_fate,
    namespace_manifest,
)
from gpufleet.reconcilers.burst.kubeconfig import Connection
from gpufleet.reconcilers.burst.lifecycle import created_by
from gpufleet.reconcilers.kube import api_reason

log = logging.getLogger(__name__)

# (api group, resource, verb) made here, in each remote cluster.
NAMESPACE_CALLS = (
    ("", "namespaces", "get"),
    ("", "namespaces", "create"),
    ("", "namespaces", "list"),
    ("", "namespaces", "delete"),
    ("", "resourcequotas", "create"),
    ("", "resourcequotas", "get"),
    *((group, resource, "list") for _, group, resource in CONTENT),
)
TIMEOUT = 10
_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_MERGE = "application/merge-patch+json"
GONE = "gone"  # settle's reason for a namespace that is gone already
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


async def ensure_namespace(
    api: ApiClient,
    name: str,
    facts: Mapping[str, str],
    access: ClusterAccess,
    installation: str = "",
    provider: str = "",
) -> bool:
    """The namespace exists (created and marked as `installation`'s, for `provider`,
    enforcing `access`'s Pod Security level, if it did not); False while it is being
    deleted or when someone else made it meanwhile (looked at again next tick).
    NamespaceRefused for one that existed, or that another installation created, and that
    `access` does not list."""
    found = await read_metadata(api, "", "Namespace", name)
    if found is not None:
        if found.get("deletionTimestamp"):
            log.info("namespace %s is being deleted: the copy waits", name, extra=dict(facts))
            return False
        if not created_by(found, installation) and name not in access.existing_namespaces:
            raise NamespaceRefused(
                f"namespace {name} exists in the remote cluster and this gpufleet "
                "installation did not create it; the CloudProvider must list it in "
                "spec.cluster.existingNamespaces for copies to go there"
            )
        return True
    body = client.V1Namespace.from_dict(namespace_manifest(name, access, installation, provider))
    assert body is not None
    try:
        await asyncio.to_thread(
            client.CoreV1Api(api).create_namespace,
            body,
            field_manager=FIELD_MANAGER,
            _request_timeout=TIMEOUT,
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
        return False  # someone else made it meanwhile: theirs, not ours, unless listed
    log.info("created namespace %s for a burst copy", name, extra=dict(facts))
    try:
        await create_quota(api, name, installation, provider)
    except Exception as exc:  # the copy goes on; the namespace is kept until it is counted
        log.warning(
            "namespace %s: quota %s not created (%s): without it the namespace is kept when "
            "its copies go; grant create and get on resourcequotas",
            name,
            QUOTA_NAME,
            _reason(exc),
            extra=dict(facts),
        )
    return True


async def create_quota(api: ApiClient, namespace: str, installation: str, provider: str) -> None:
    """The ResourceQuota that counts `namespace`'s Secrets and ConfigMaps (one that exists
    already is left as it is: only its status, the quota controller's, is read)."""
    body = client.V1ResourceQuota.from_dict(quota_manifest(namespace, installation, provider))
    assert body is not None
    try:
        await asyncio.to_thread(
            client.CoreV1Api(api).create_namespaced_resource_quota,
            namespace,
            body,
            field_manager=FIELD_MANAGER,
            _request_timeout=TIMEOUT,
        )
    except ApiException as exc:
        if exc.status != 409:
            raise


async def read_quota(api: ApiClient, namespace: str) -> dict[str, Any] | None:
    """`namespace`'s ResourceQuota `gpufleet-contents` as the API serves it; None when
    there is none."""
    try:
        response = await asyncio.to_thread(
            call(api, "", "read_namespaced_*", "ResourceQuota"),
            QUOTA_NAME,
            namespace,
            _preload_content=False,
            _request_timeout=TIMEOUT,
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    quota: dict[str, Any] = json.loads(response.data)
    return quota


@dataclass
class NamespaceSweep:
    # Whose namespaces this sweep may delete (and those made before installations were).
    installation: str = ""
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
        try:
            return (await settle(api, provider, namespace, self.installation))[0]
        except Exception as exc:
            facts = {"provider": provider, "namespace": namespace}
            log.warning("kept namespace %s: %s", namespace, _reason(exc), extra=facts)
            return Fate.KEEP


async def settle(
    api: ApiClient, provider: str, namespace: str, installation: str
) -> tuple[Fate, str]:
    """Delete `namespace` if namespace_fate says so; what became of it and why (KEEP when
    it is gone already). Errors are the caller's: any doubt keeps the namespace."""
    facts = {"provider": provider, "namespace": namespace}
    meta = await read_metadata(api, "", "Namespace", namespace)
    if meta is None:
        return Fate.KEEP, GONE
    content: dict[str, list[dict[str, Any]]] = {}
    quota: dict[str, Any] | None = None
    # Only a namespace gpufleet created is looked through; another is kept unseen.
    if (meta.get("labels") or {}).get(CREATED_BY_LABEL) == "gpufleet":
        listed = await asyncio.gather(
            *(list_metadata(api, group, kind, namespace) for kind, group, _ in CONTENT)
        )
        content = {kind: items for (kind, _, _), items in zip(CONTENT, listed, strict=True)}
        quota = await read_quota(api, namespace)
    fate, why = namespace_fate(meta, content, installation, quota=quota)
    if fate == Fate.WAIT and quota is None:
        # WAIT: gpufleet's own namespace, not being deleted. Counted from the next tick on.
        await create_quota(api, namespace, installation, provider)
        log.info("namespace %s: created quota %s to count it", namespace, QUOTA_NAME, extra=facts)
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
    return fate, why


async def adopt(
    api: ApiClient,
    kind: str,
    namespace: str,
    name: str,
    version: str,
    installation: str,
    services: str | None = None,
) -> bool:
    """Label the copy of `kind` made before installations were labelled as
    `installation`'s, only if it is still at `version` (two installations racing for one:
    the first wins, the other sees it labelled as the first's); with `services` (their label
    selector), the copy's Services too. True when the copy is now `installation`'s."""
    label = {"metadata": {"labels": {INSTALLATION_LABEL: installation}}}
    try:
        await asyncio.to_thread(
            call(api, "apps", "patch_namespaced_*", kind),
            name,
            namespace,
            {"metadata": {**label["metadata"], "resourceVersion": version}},
            _content_type=_MERGE,
            _request_timeout=TIMEOUT,
        )
    except ApiException as exc:
        if exc.status in (404, 409):
            return False  # gone, or changed (adopted by another?): looked at next tick
        raise
    if services is not None:
        for meta in await list_metadata(api, "", "Service", namespace, services):
            if INSTALLATION_LABEL not in (meta.get("labels") or {}):
                await asyncio.to_thread(
                    client.CoreV1Api(api).patch_namespaced_service,
                    str(meta.get("name", "")),
                    namespace,
                    {"metadata": {**label["metadata"], "resourceVersion": meta["resourceVersion"]}},
                    _content_type=_MERGE,
                    _request_timeout=TIMEOUT,
                )
    log.info(
        "adopted %s %s/%s, made before installations were labelled",
        kind,
        namespace,
        name,
        extra={"installation": installation},
    )
    return True

"""Burst into remote clusters: the calls that list, apply and delete copies there.

Each tick the fleet loop connects (reconcilers/burst/kubeconfig.py) and lists the copies this
installation owns in each remote provider's cluster (Deployments and StatefulSets labelled
as its own, reconcilers/burst/lifecycle.py; one made before installations were labelled is
adopted if it serves one of its pools), which are the pool's replicas on that provider. It resizes each copy through the intent
journal as `Remote/<provider>/<namespace>/<name>`: a copy of the pool's workload
(reconcilers/burst/copies.py) in a namespace of the same name, applied server-side, and deleted,
pods first, when the plan puts nothing there; then the namespace too, if gpufleet made it
and it holds nothing else (reconcilers/burst/namespaces.py).

A copy the provider's rules refuse (a template below its Pod Security level, a namespace
that existed and is not listed) is not applied; `refusals` holds this tick's, which the
pool's BurstActive condition reports. The pool's earlier copy stays only if its own template
meets the level: one that does not (applied by an earlier release, or before the level was
raised) is deleted, so a refused change never leaves a copy running that the rules forbid,
while a tenant's bad edit does not drain a burst that complies.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gpufleet.api.labels import FIELD_MANAGER, POOL_LABEL, SOURCE_HASH_ANNOTATION
from gpufleet.api.provider import CloudProviderSpec, ClusterAccess
from gpufleet.drivers.base import NodePoolDriver
from gpufleet.planner.types import PoolKey
from gpufleet.reconcilers.burst.client import RefusedPeer
from gpufleet.reconcilers.burst.copies import (
    KINDS,
    Copy,
    CopyRefused,
    NamespaceRefused,
    copy_manifest,
    copy_selector,
    held_by_other,
    refused_for,
    service_manifest,
)
from gpufleet.reconcilers.burst.kubeconfig import Connections, RemoteDriverFactory
from gpufleet.reconcilers.burst.lifecycle import Owner, claims
from gpufleet.reconcilers.burst.namespaces import (
    NAMESPACE_CALLS,
    TIMEOUT,
    NamespaceSweep,
    adopt,
    call,
    ensure_namespace,
    list_metadata,
    read_metadata,
)
from gpufleet.reconcilers.burst.podsecurity import check
from gpufleet.reconcilers.burst.reads import ReadLimitedDriver, Reused
from gpufleet.reconcilers.cache import WorkloadEntry
from gpufleet.reconcilers.kube import Kube, api_reason
from gpufleet.reconcilers.problems import Problem

log = logging.getLogger(__name__)

# (api group, resource, verb) made in each remote cluster with its kubeconfig's identity
# (besides the provider driver's own calls): grant them there, not in this chart. A
# server-side apply is a patch, and also a create when the object is new.
REMOTE_CALLS = tuple(
    dict.fromkeys(
        [
            *(
                ("apps", resource, verb)
                for resource in ("deployments", "statefulsets")
                for verb in ("list", "get", "create", "patch", "delete")
            ),
            *(("", "services", verb) for verb in ("get", "list", "create", "patch", "delete")),
            *NAMESPACE_CALLS,
        ]
    )
)
_APPLY = "application/apply-patch+yaml"


@dataclass
class RemoteClusters:
    kube: Kube
    make_driver: RemoteDriverFactory
    operator_namespace: str
    # The namespaces this operator watches (empty: all); copies elsewhere are not its own.
    namespaces: tuple[str, ...] = ()
    # Servers on the operator's host, link-local or in-cluster names (test beds only).
    allow_private_servers: bool = False
    # This installation's id (`--installation`): it touches only what carries it.
    installation: str = ""
    # Seconds a remote cluster's copies and node pools are reused for (burst/reads.py); 0:
    # read every tick.
    read_seconds: float = 10.0
    connections: Connections = field(init=False)
    namespace_sweep: NamespaceSweep = field(default_factory=NamespaceSweep)
    # (provider, pool) -> why its copy was refused this tick (the pool's BurstActive).
    refusals: dict[tuple[str, PoolKey], CopyRefused] = field(default_factory=dict)
    # What was last logged of each refusal: logged when it changes, not every tick.
    _told: dict[tuple[str, PoolKey], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.connections = Connections(
            self.kube, self._limited_driver, self.operator_namespace, self.allow_private_servers
        )
        # (provider, its ApiClient, the pools known when listed) -> the copies found.
        self._listed: Reused[dict[PoolKey, Copy]] = Reused(self.read_seconds)
        self.namespace_sweep.installation = self.installation

    def _limited_driver(self, name: str, spec: CloudProviderSpec, api: ApiClient) -> NodePoolDriver:
        """The provider's driver, its node pools read at a bounded rate (burst/reads.py)."""
        return ReadLimitedDriver(self.make_driver(name, spec, api), Reused(self.read_seconds))

    @property
    def errors(self) -> dict[str, str]:
        """provider -> why its credentials are unusable (CredentialsValid=False), this tick."""
        return self.connections.errors

    def owns(self, namespace: str) -> bool:
        return not self.namespaces or namespace in self.namespaces

    async def connect(
        self, providers: Mapping[str, CloudProviderSpec]
    ) -> dict[str, NodePoolDriver]:
        """Drivers of the remote providers whose kubeconfig is usable now. A tick starts
        here: the last tick's refusals are gone (each applies again, or is refused again)."""
        self.refusals.clear()
        return await self.connections.connect(providers)

    def refused(self) -> dict[PoolKey, tuple[str, str]]:
        """pool -> (reason, message) of its first refused copy this tick, by provider."""
        out: dict[PoolKey, tuple[str, str]] = {}
        for (provider, key), refusal in sorted(self.refusals.items()):
            out.setdefault(
                key, (refusal.reason, f"copy for provider {provider} refused: {refusal}")
            )
        return out

    async def copies(
        self, providers: list[str], known: Collection[PoolKey] = ()
    ) -> tuple[dict[str, dict[PoolKey, Copy]], dict[str, Problem]]:
        """The copies this installation owns in each provider's cluster (adopting unlabelled
        ones of its `known` pools), and providers that failed."""
        names = sorted(p for p in providers if p in self.connections.by_provider)
        results = await asyncio.gather(*(self._list(n, known) for n in names))
        found: dict[str, dict[PoolKey, Copy]] = {}
        failed: dict[str, Problem] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, Problem):
                failed[name] = result
            else:
                found[name] = result
        return found, failed

    async def _list(self, name: str, known: Collection[PoolKey]) -> dict[PoolKey, Copy] | Problem:
        api = self.connections.by_provider[name].api
        key = (name, api, frozenset(known))
        found = self._listed.get(key)
        if found is None:
            listed = await self._list_now(name, api, known)
            if isinstance(listed, Problem):
                return listed
            found = self._listed.put(key, listed)
        return dict(found)

    def _wrote(self, provider: str) -> None:
        """This operator changed copies in `provider`'s cluster: the next tick reads them."""
        self._listed.forget(lambda key: isinstance(key, tuple) and key[0] == provider)

    async def _list_now(
        self, name: str, api: ApiClient, known: Collection[PoolKey]
    ) -> dict[PoolKey, Copy] | Problem:
        try:
            listed = await asyncio.gather(
                *(
                    asyncio.to_thread(
                        call(api, "apps", "list_*_for_all_namespaces", kind),
                        # Providers may share a cluster: each sees only its own copies.
                        label_selector=copy_selector(name),
                        _request_timeout=TIMEOUT,
                    )
                    for kind in KINDS
                )
            )
        except ApiException as exc:
            return Problem("ProviderUnavailable", f"remote cluster: {api_reason(exc)}")
        except RefusedPeer as exc:
            return Problem("ProviderUnavailable", f"remote cluster: {exc}")
        except Exception as exc:
            return Problem("ProviderUnavailable", f"remote cluster: {type(exc).__name__}")
        out: dict[PoolKey, Copy] = {}
        for kind, items in zip(KINDS, listed, strict=True):
            for item in items.items:
                meta, spec = item.metadata, item.spec
                if meta is None or spec is None or not meta.name or meta.deletion_timestamp:
                    continue  # a copy being deleted is gone: its pods are terminating
                namespace, _, pool = str((meta.labels or {}).get(POOL_LABEL, "")).partition(".")
                if not namespace or not pool or namespace != meta.namespace:
                    continue
                key = PoolKey(namespace, pool)
                # Another installation's copies, even of a provider of this name, are not ours.
                taken = claims(meta.labels, self.installation, key, known)
                if taken is None or (
                    taken == Owner.UNLABELLED and not await self._adopt(api, name, kind, key, meta)
                ):
                    continue
                status = item.status
                copy = Copy(
                    namespace,
                    meta.name,
                    int(spec.replicas or 0),
                    str((meta.annotations or {}).get(SOURCE_HASH_ANNOTATION, "")),
                    kind,
                    int((status.ready_replicas if status is not None else 0) or 0),
                )
                if key in out:  # its workload changed kind or name: one copy, stale
                    first = out[key]
                    copy = Copy(
                        namespace,
                        first.name,
                        first.replicas + copy.replicas,
                        "",
                        "",
                        first.ready + copy.ready,
                    )
                out[key] = copy
        return out

    async def _adopt(
        self, api: ApiClient, provider: str, kind: str, key: PoolKey, meta: Any
    ) -> bool:
        try:
            return await adopt(
                api,
                kind,
                key.namespace,
                str(meta.name),
                str(meta.resource_version or ""),
                self.installation,
                copy_selector(provider, key),
            )
        except Exception as exc:  # looked at again next tick
            reason = api_reason(exc) if isinstance(exc, ApiException) else type(exc).__name__
            log.warning("adopting burst copy %s on %s: %s", key, provider, reason)
            return False

    async def resize(
        self,
        provider: str,
        key: PoolKey,
        copy: Copy | None,
        workload: WorkloadEntry | None,
        size: int,
        action_id: str,
    ) -> bool:
        """Apply the copy of `workload` at `size` replicas, or delete the pool's copies at
        0; True when done. An object of that name that is not this provider's copy is left
        alone; a namespace that is missing is created and marked as gpufleet's."""
        api = self.connections.api(provider)
        if api is None:
            return False
        self._wrote(provider)
        access = self.connections.by_provider[provider].spec.cluster
        facts = {"pool": str(key), "provider": provider, "actionId": action_id}
        try:
            if size <= 0:
                await self._delete_copies(api, provider, key)
                self.namespace_sweep.copy_gone(provider, key.namespace)
                self._told.pop((provider, key), None)
                return True
            if workload is None:
                return False
            body = await self._may_apply(api, provider, key, workload, size, access, facts)
            if body is None:
                return False
            await asyncio.to_thread(
                call(api, "apps", "patch_namespaced_*", workload.kind),
                workload.name,
                key.namespace,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=_APPLY,
                _request_timeout=TIMEOUT,
            )
            await self._apply_service(api, provider, key, workload, facts)
            if copy is not None and (copy.kind, copy.name) != (workload.kind, workload.name):
                # The workload changed kind or name: its earlier copy goes.
                await self._delete_copies(api, provider, key, keep=(workload.kind, workload.name))
            if self._told.pop((provider, key), None) is not None:
                log.info("burst copy %s on %s: no longer refused", key, provider, extra=facts)
        except CopyRefused as refusal:
            return await self._refuse(api, provider, key, copy, size, access, refusal, facts)
        except ApiException as exc:
            log.warning("burst copy %s on %s: %s", key, provider, api_reason(exc), extra=facts)
            return False
        except Exception as exc:
            log.warning("burst copy %s on %s: %s", key, provider, type(exc).__name__, extra=facts)
            return False
        return True

    async def _refuse(
        self,
        api: ApiClient,
        provider: str,
        key: PoolKey,
        copy: Copy | None,
        size: int,
        access: ClusterAccess,
        refusal: CopyRefused,
        facts: dict[str, str],
    ) -> bool:
        """Keep the refusal for the pool's status, and delete the pool's earlier copy there
        if it may not stay either (its namespace is refused, or its own template does not
        meet the level). One that may stay keeps its template and shrinks as planned (its
        node pool shrinks too), never grows: True once it is at `size`."""
        self.refusals[(provider, key)] = refusal
        if self._told.get((provider, key)) != str(refusal):
            self._told[(provider, key)] = str(refusal)
            log.warning("burst copy %s on %s refused: %s", key, provider, refusal, extra=facts)
        if copy is None:
            return False
        try:
            if isinstance(refusal, NamespaceRefused) or await self._copies_break(
                api, provider, key, access
            ):
                log.warning(
                    "burst copy %s on %s: the running copy may not stay either; deleting it",
                    key,
                    provider,
                    extra=facts,
                )
                await self._delete_copies(api, provider, key)
                self.namespace_sweep.copy_gone(provider, key.namespace)
            elif copy.kind and size < copy.replicas:
                # A merge patch of the size alone: an apply would take the template along.
                await asyncio.to_thread(
                    call(api, "apps", "patch_namespaced_*", copy.kind),
                    copy.name,
                    key.namespace,
                    {"spec": {"replicas": size}},
                    field_manager=FIELD_MANAGER,
                    _request_timeout=TIMEOUT,
                )
                return True
        except ApiException as exc:
            log.warning("burst copy %s on %s: %s", key, provider, api_reason(exc), extra=facts)
        except Exception as exc:
            log.warning("burst copy %s on %s: %s", key, provider, type(exc).__name__, extra=facts)
        return False

    async def _copies_break(
        self, api: ApiClient, provider: str, key: PoolKey, access: ClusterAccess
    ) -> bool:
        """Whether a copy of the pool in `provider`'s cluster, as it runs there, breaks the
        provider's Pod Security level."""
        for kind in KINDS:
            response = await asyncio.to_thread(
                call(api, "apps", "list_namespaced_*", kind),
                key.namespace,
                label_selector=copy_selector(provider, key, self.installation),
                _preload_content=False,
                _request_timeout=TIMEOUT,
            )
            for item in json.loads(response.data).get("items") or ():
                template = (item.get("spec") or {}).get("template") or {}
                if check(template, access.pod_security_level):
                    return True
        return False

    async def _may_apply(
        self,
        api: ApiClient,
        provider: str,
        key: PoolKey,
        workload: WorkloadEntry,
        size: int,
        access: ClusterAccess,
        facts: dict[str, str],
    ) -> dict[str, Any] | None:
        """The copy of `workload` at `size`, if it may be applied now: a kind that bursts, a
        template that meets the provider's Pod Security level (else CopyRefused), a name no
        one else's copy holds, no earlier copy still going, and its namespace in place."""
        if workload.kind not in KINDS:
            log.warning(
                "pool %s: only Deployments and StatefulSets burst to remote clusters",
                key,
                extra=facts,
            )
            return None
        body = copy_manifest(key, workload, size, provider, access, self.installation)
        violations = check(body["spec"]["template"], access.pod_security_level)
        if violations:
            raise refused_for(violations, access)
        found = await read_metadata(api, "apps", workload.kind, workload.name, key.namespace)
        held = held_by_other(workload.kind, found, provider, self.installation)
        if held:
            log.warning(
                "burst copy %s/%s on %s: the cluster holds %s's copy; not taking it",
                key.namespace,
                workload.name,
                provider,
                held,
                extra=facts,
            )
            return None
        if found and found.get("deletionTimestamp"):
            log.info("burst copy %s on %s: waits for the last to go", key, provider, extra=facts)
            return None
        made = await ensure_namespace(
            api, key.namespace, facts, access, self.installation, provider
        )
        return body if made else None

    async def _apply_service(
        self,
        api: ApiClient,
        provider: str,
        key: PoolKey,
        workload: WorkloadEntry,
        facts: Mapping[str, str],
    ) -> None:
        """The StatefulSet copy's headless Service, best effort: without it the copy still
        serves (workers pulling from a queue need no DNS names), so a refusal, say a remote
        identity without the services grants, is logged and the copy goes on."""
        body = service_manifest(key, workload, provider, self.installation)
        if body is None:
            return
        name, namespace = body["metadata"]["name"], key.namespace
        try:
            found = await read_metadata(api, "", "Service", name, namespace)
            held = held_by_other("Service", found, provider, self.installation)
            if held:
                log.info(
                    "burst copy %s on %s: Service %s is %s's",
                    key,
                    provider,
                    name,
                    held,
                    extra=dict(facts),
                )
                return
            await asyncio.to_thread(
                client.CoreV1Api(api).patch_namespaced_service,
                name,
                namespace,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=_APPLY,
                _request_timeout=TIMEOUT,
            )
        except ApiException as exc:
            log.warning(
                "burst copy %s on %s: headless Service %s not applied (%s): its pods have no "
                "DNS names there",
                key,
                provider,
                name,
                api_reason(exc),
                extra=dict(facts),
            )

    async def delete_copies(self, api: ApiClient, provider: str, key: PoolKey) -> None:
        """Delete `provider`'s copies of the pool `key`, pods first, and look at their
        namespace once they are gone."""
        self._wrote(provider)
        await self._delete_copies(api, provider, key)
        self.namespace_sweep.copy_gone(provider, key.namespace)

    async def _delete_copies(
        self, api: ApiClient, provider: str, key: PoolKey, keep: tuple[str, str] | None = None
    ) -> None:
        """Delete `provider`'s copies of the pool `key` (but `keep`), pods first."""
        for kind in KINDS:
            for meta in await list_metadata(
                api, "apps", kind, key.namespace, copy_selector(provider, key, self.installation)
            ):
                name = str(meta.get("name", ""))
                if (kind, name) == keep or meta.get("deletionTimestamp"):
                    continue
                try:
                    await asyncio.to_thread(
                        call(api, "apps", "delete_namespaced_*", kind),
                        name,
                        key.namespace,
                        propagation_policy="Foreground",
                        _request_timeout=TIMEOUT,
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        if keep is None:  # the pool's copies are all going: their Services too
            await self._delete_services(api, provider, key)

    async def _delete_services(self, api: ApiClient, provider: str, key: PoolKey) -> None:
        try:
            services = await list_metadata(
                api, "", "Service", key.namespace, copy_selector(provider, key, self.installation)
            )
        except ApiException as exc:
            if exc.status != 403:  # an identity without the services grants made none
                raise
            services = []
        for meta in services:
            name = str(meta.get("name", ""))
            if not meta.get("deletionTimestamp"):
                try:
                    await asyncio.to_thread(
                        client.CoreV1Api(api).delete_namespaced_service,
                        name,
                        key.namespace,
                        _request_timeout=TIMEOUT,
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise

    async def sweep(self, skip: Collection[str] = ()) -> None:
        """Delete the namespaces gpufleet created whose copies are gone and that hold nothing
        else; providers in `skip` (unreachable this tick) wait."""
        await self.namespace_sweep.sweep(self.connections.by_provider, skip)

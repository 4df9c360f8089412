"""A CloudProvider's finalizer: its remote copies go before it does (lifecycle.py decides).

Run by the fleet loop each tick, level-based: what a provider's deletion still has to do comes
from its `deletionTimestamp` (the provider index) and from listing its remote cluster, so an
operator restart, or another replica taking over, goes on where the last one stopped. Not a
kopf `on.delete` handler: that would need kopf's own finalizer and progress annotations on
the admin's object, and would act beside the fleet loop, which applies copies into the same
cluster (one could re-apply what the other just deleted). Here one writer does both: a
provider being deleted is left out of the fleet the planner sees, so it takes no placement,
and its copies are removed here, not resized.

Removing a copy: scale it to 0 (its pods end gracefully), then delete it (foreground) once
its pods are gone or DRAIN_SECONDS into the deletion; then delete the namespaces gpufleet
created for the provider's copies that hold nothing else. A namespace holding someone else's
objects is kept, and said so. The finalizer goes when nothing is left, or after the deletion
timeout with an Event naming what is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gpufleet.api.labels import (
    CREATED_BY_LABEL,
    INSTALLATION_LABEL,
    POOL_LABEL,
    PROVIDER_LABEL,
    REMOTE_COPIES_FINALIZER,
)
from gpufleet.planner.types import PoolKey
from gpufleet.reconcilers.burst.copies import KINDS, Fate, copy_selector
from gpufleet.reconcilers.burst.lifecycle import (
    DEFAULT_DELETION_TIMEOUT,
    DRAIN_SECONDS,
    Owner,
    Remains,
    Step,
    abandoned_message,
    claims,
    deletion_time,
    finalizer_step,
    removing_message,
)
from gpufleet.reconcilers.burst.namespaces import GONE, TIMEOUT, adopt, call, settle
from gpufleet.reconcilers.burst.remote import RemoteClusters
from gpufleet.reconcilers.cache import ProviderEntry
from gpufleet.reconcilers.kube import Conflict, Kube, api_reason
from gpufleet.reconcilers.leader import NotLeading

log = logging.getLogger(__name__)
REMOVING = "RemovingCopies"
_MERGE = "application/merge-patch+json"


@dataclass
class ProviderTeardown:
    kube: Kube
    remote: RemoteClusters
    timeout: float = DEFAULT_DELETION_TIMEOUT
    # provider -> (reason, message) of its deletion this tick: its Ready=False and Deleting.
    deleting: dict[str, tuple[str, str]] = field(default_factory=dict)
    _told: dict[str, str] = field(default_factory=dict)  # logged on change, not per tick
    # (uid, reason) of the Events posted: once per deletion, though the finalizer's removal
    # may take a retry (a conflict) or the index a tick to see it.
    _posted: set[tuple[str, str]] = field(default_factory=set)

    async def step(
        self, providers: Sequence[ProviderEntry], known: Collection[PoolKey], now: float
    ) -> None:
        """Add, keep or remove each provider's finalizer, removing the copies of those being
        deleted; one provider's failure leaves the others' steps alone."""
        self.deleting = {}
        for entry in providers:
            try:
                await self._step(entry, known, now)
            except NotLeading:
                raise  # deposed: no provider's step goes on
            except Exception:
                log.exception("provider %s: finalizer step failed", entry.name)

    async def _step(self, entry: ProviderEntry, known: Collection[PoolKey], now: float) -> None:
        spec = entry.parsed.value
        remote = None if spec is None else spec.cluster.kubeconfig_secret_ref is not None
        since = (deletion_time(entry.deleting) or now) if entry.deleting else None
        has = REMOTE_COPIES_FINALIZER in entry.finalizers
        remains = None
        if since is not None and has and remote:
            remains = await self.remains(entry.name, since, now, known)
        step = finalizer_step(
            remote=remote,
            has_finalizer=has,
            deleting_since=since,
            now=now,
            timeout=self.timeout,
            remains=remains,
        )
        facts = {"provider": entry.name, "step": step.value}
        if step == Step.WAIT:
            assert since is not None
            message = removing_message(remains, since, self.timeout)
            self.deleting[entry.name] = (REMOVING, message)
            if self._told.get(entry.name) != message:
                self._told[entry.name] = message
                log.info("provider %s being deleted: %s", entry.name, message, extra=facts)
            return
        if step == Step.ADD:
            await self._set_finalizers(entry, [*entry.finalizers, REMOTE_COPIES_FINALIZER])
        elif step in (Step.REMOVE, Step.ABANDON):
            if step == Step.ABANDON:
                message = abandoned_message(
                    remains, self.timeout, entry.name, self.remote.installation
                )
                await self._event(entry, "RemoteCopiesLeftBehind", message, warning=True)
                log.warning("provider %s: %s", entry.name, message, extra=facts)
            elif since is not None:
                kept = (
                    f" (kept namespaces: {', '.join(remains.kept)})"
                    if remains and remains.kept
                    else ""
                )
                await self._event(entry, "RemoteCopiesRemoved", f"burst copies removed{kept}")
                log.info("provider %s: burst copies removed%s", entry.name, kept, extra=facts)
            left = [f for f in entry.finalizers if f != REMOTE_COPIES_FINALIZER]
            await self._set_finalizers(entry, left)
            self._told.pop(entry.name, None)

    async def _set_finalizers(self, entry: ProviderEntry, finalizers: list[str]) -> None:
        try:
            await self.kube.patch_finalizers(
                "cloudproviders", entry.name, finalizers, entry.resource_version
            )
        except Conflict:
            pass  # changed since the index saw it: next tick, from the new version
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def _event(
        self, entry: ProviderEntry, reason: str, message: str, warning: bool = False
    ) -> None:
        if (entry.uid, reason) in self._posted:
            return
        self._posted.add((entry.uid, reason))
        try:
            await self.kube.event(
                "CloudProvider", None, entry.name, entry.uid or None, reason, message, warning
            )
        except NotLeading:
            raise
        except Exception as exc:  # history only: the finalizer step goes on
            log.warning("provider %s: event not posted: %s", entry.name, type(exc).__name__)

    async def remains(
        self, provider: str, since: float, now: float, known: Collection[PoolKey]
    ) -> Remains:
        """Remove what is left of `provider`'s copies in its remote cluster, a step at a
        time, and say what is still there."""
        api = self.remote.connections.api(provider)
        if api is None:
            return Remains(problem=self.remote.errors.get(provider) or "not connected")
        try:
            copies, pods = await self._drain_copies(api, provider, since, now, known)
            if copies:
                return Remains(copies=copies, pods=pods)
            going, kept = await self._namespaces(api, provider)
        except ApiException as exc:
            return Remains(problem=f"remote cluster: {api_reason(exc)}")
        except Exception as exc:
            return Remains(problem=f"remote cluster: {type(exc).__name__}")
        return Remains(namespaces=tuple(sorted(going | kept)), kept=tuple(sorted(kept)))

    async def _drain_copies(
        self, api: ApiClient, provider: str, since: float, now: float, known: Collection[PoolKey]
    ) -> tuple[int, int]:
        """Scale `provider`'s copies to 0, delete those whose pods went; how many copies
        and pods are left."""
        copies = pods = 0
        for kind in KINDS:
            response = await asyncio.to_thread(
                call(api, "apps", "list_*_for_all_namespaces", kind),
                label_selector=copy_selector(provider),
                _preload_content=False,
                _request_timeout=TIMEOUT,
            )
            for item in json.loads(response.data).get("items") or ():
                if await self._drain(api, provider, kind, item, known, now - since):
                    copies += 1
                    pods += int((item.get("status") or {}).get("replicas") or 0)
        return copies, pods

    async def _drain(
        self,
        api: ApiClient,
        provider: str,
        kind: str,
        item: dict[str, Any],
        known: Collection[PoolKey],
        elapsed: float,
    ) -> bool:
        """One step for the copy `item`; whether it is this installation's (still there)."""
        meta = item.get("metadata") or {}
        labels = meta.get("labels") or {}
        name, namespace = str(meta.get("name", "")), str(meta.get("namespace", ""))
        pool_namespace, _, pool = str(labels.get(POOL_LABEL, "")).partition(".")
        key = PoolKey(pool_namespace, pool)
        taken = claims(labels, self.remote.installation, key, known)
        if taken is None:
            return False  # another installation's, or unlabelled and not of our pools
        if taken == Owner.UNLABELLED:
            version = str(meta.get("resourceVersion", ""))
            services = copy_selector(provider, key)
            await adopt(api, kind, namespace, name, version, self.remote.installation, services)
            return True  # ours from the next listing on
        if meta.get("deletionTimestamp"):
            return True
        replicas = int((item.get("spec") or {}).get("replicas") or 0)
        running = int((item.get("status") or {}).get("replicas") or 0)
        if replicas > 0:
            await asyncio.to_thread(
                call(api, "apps", "patch_namespaced_*", kind),
                name,
                namespace,
                {"spec": {"replicas": 0}},
                _content_type=_MERGE,
                _request_timeout=TIMEOUT,
            )
            log.info("provider %s being deleted: scaled copy %s/%s to 0", provider, namespace, name)
        elif running == 0 or elapsed >= min(DRAIN_SECONDS, self.timeout / 2):
            await self.remote.delete_copies(api, provider, key)
            log.info("provider %s being deleted: deleted copy %s/%s", provider, namespace, name)
        return True

    async def _namespaces(self, api: ApiClient, provider: str) -> tuple[set[str], set[str]]:
        """The namespaces this installation created for `provider`'s copies: those still
        going (deleted now, or being deleted), and those kept (they hold other objects)."""
        selector = (
            f"{CREATED_BY_LABEL}=gpufleet,{INSTALLATION_LABEL}={self.remote.installation},"
            f"{PROVIDER_LABEL}={provider}"
        )
        found = await asyncio.to_thread(
            client.CoreV1Api(api).list_namespace,
            label_selector=selector,
            _request_timeout=TIMEOUT,
        )
        going: set[str] = set()
        kept: set[str] = set()
        for namespace in found.items:
            meta = namespace.metadata
            if meta is None or not meta.name:
                continue
            if meta.deletion_timestamp:
                going.add(meta.name)
                continue
            fate, why = await settle(api, provider, meta.name, self.remote.installation)
            if why != GONE:
                (kept if fate == Fate.KEEP else going).add(meta.name)
        return going, kept

"""Burst into remote clusters: CloudProviders with `cluster.kubeconfigSecretRef`.

Each tick, for every such provider: read the Secret, build an ApiClient from its kubeconfig
(cached per Secret resourceVersion) and the provider's driver on it, so its nodes live in
that cluster; list the copies gpufleet owns there (Deployments labelled as ours), which are
the pool's replicas on that provider. The fleet loop then resizes each copy through the
intent journal as `Remote/<provider>/<namespace>/<name>`: a copy of the pool's Deployment
(same selector and template, in a namespace of the same name), applied server-side, and
deleted when the plan puts nothing there.

Nothing of the Secret leaves this module: errors name the Secret and key, never its data.
Kubeconfigs that run commands (`exec`, `auth-provider`) or read local files (`…-file`,
paths) are refused: a CloudProvider must not make the operator hand out its own token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import DriverError, NodePoolDriver
from gpufleet.planner.types import NodePoolKey, PoolKey
from gpufleet.reconcilers.cache import WorkloadEntry
from gpufleet.reconcilers.kube import FIELD_MANAGER, Kube

log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
POOL_LABEL = "gpufleet.io/pool"
PROVIDER_LABEL = "gpufleet.io/provider"
SOURCE_ANNOTATION = "gpufleet.io/source"
SOURCE_HASH_ANNOTATION = "gpufleet.io/source-hash"
TARGET_PREFIX = "Remote/"
# (api group, resource, verb) made in each remote cluster with its kubeconfig's identity
# (besides the provider driver's own calls): grant them there, not in this chart.
REMOTE_CALLS = (
    ("", "namespaces", "patch"),
    ("apps", "deployments", "list"),
    ("apps", "deployments", "get"),
    ("apps", "deployments", "patch"),
    ("apps", "deployments", "delete"),
)
_APPLY = "application/apply-patch+yaml"
_USER_REFUSED = (
    "exec",
    "auth-provider",
    "token-file",
    "tokenFile",
    "client-certificate",
    "client-key",
)
_CLUSTER_REFUSED = ("certificate-authority", "client-certificate", "client-key")

RemoteDriverFactory = Callable[[str, CloudProviderSpec, ApiClient], NodePoolDriver]


class CredentialsError(Exception):
    """The Secret or its kubeconfig is unusable; the message is safe to show."""


@dataclass(frozen=True)
class Copy:
    """A burst copy observed in a remote cluster."""

    namespace: str
    name: str
    replicas: int
    source_hash: str


@dataclass
class _Connection:
    version: str
    api: ApiClient
    spec: CloudProviderSpec
    driver: NodePoolDriver


def target(provider: str, namespace: str, name: str) -> str:
    return f"{TARGET_PREFIX}{provider}/{namespace}/{name}"


def source_hash(workload: WorkloadEntry) -> str:
    return hashlib.sha256(workload.source.encode()).hexdigest()[:16]


def pool_label(key: PoolKey) -> str:
    return f"{key.namespace}.{key.name}"


def copy_manifest(
    key: PoolKey, workload: WorkloadEntry, replicas: int, provider: str
) -> dict[str, Any]:
    """The copy of `workload` (a Deployment) gpufleet applies in `provider`'s cluster."""
    source = json.loads(workload.source or "{}")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": workload.name,
            "namespace": workload.namespace,
            "labels": {
                MANAGED_BY: "gpufleet",
                POOL_LABEL: pool_label(key),
                PROVIDER_LABEL: provider,
            },
            "annotations": {
                SOURCE_ANNOTATION: f"{workload.namespace}/{workload.kind}/{workload.name}",
                SOURCE_HASH_ANNOTATION: source_hash(workload),
            },
        },
        "spec": {
            "replicas": replicas,
            "selector": source.get("selector") or {},
            "template": source.get("template") or {},
        },
    }


def attribute(
    provider: str,
    count: int,
    spec: CloudProviderSpec,
    last: Mapping[NodePoolKey, int],
    gpu_types: Any,
) -> dict[NodePoolKey, int]:
    """A copy's replicas by node pool: where the last plan put them, the rest on the first
    node pool of the provider that the last plan used, else the first of a wanted GPU type."""
    out: dict[NodePoolKey, int] = {}
    left = count
    for key, planned in sorted(last.items()):
        if key.provider == provider and left > 0 and planned > 0:
            out[key] = min(left, planned)
            left -= out[key]
    if left > 0:
        used = sorted(k for k in last if k.provider == provider)
        names = [n.name for n in spec.node_pools if n.gpu_type in set(gpu_types)] or [
            n.name for n in spec.node_pools
        ]
        key = used[0] if used else NodePoolKey(provider, names[0])
        out[key] = out.get(key, 0) + left
    return out


def check_kubeconfig(raw: Any) -> None:
    """Refuse kubeconfigs that run commands or read the operator's files."""
    if not isinstance(raw, dict):
        raise CredentialsError("not a kubeconfig mapping")
    for entry in raw.get("users") or []:
        user = (entry or {}).get("user") or {}
        if any(k in user for k in _USER_REFUSED):
            raise CredentialsError(
                "users may not use exec, auth-provider or file references: "
                "embed client-certificate-data/client-key-data or a token"
            )
    for entry in raw.get("clusters") or []:
        cluster = (entry or {}).get("cluster") or {}
        if any(k in cluster for k in _CLUSTER_REFUSED):
            raise CredentialsError(
                "clusters may not reference files: embed certificate-authority-data"
            )


def _client_from(text: str) -> ApiClient:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raise CredentialsError("not valid YAML") from None
    check_kubeconfig(raw)
    try:
        api: ApiClient = config.new_client_from_config_dict(  # type: ignore[no-untyped-call]
            raw, persist_config=False
        )
        return api
    except Exception as exc:  # ConfigException and friends: name only, they may quote data
        raise CredentialsError(f"unusable kubeconfig ({type(exc).__name__})") from None


def _api_reason(exc: ApiException) -> str:
    return f"{exc.reason or 'error'} ({exc.status})"


@dataclass
class RemoteClusters:
    kube: Kube
    make_driver: RemoteDriverFactory
    operator_namespace: str
    # The namespaces this operator watches (empty: all); copies elsewhere are not its own.
    namespaces: tuple[str, ...] = ()
    connections: dict[str, _Connection] = field(default_factory=dict)
    # provider -> why its credentials are unusable (CredentialsValid=False), this tick.
    errors: dict[str, str] = field(default_factory=dict)

    def owns(self, namespace: str) -> bool:
        return not self.namespaces or namespace in self.namespaces

    async def connect(
        self, providers: Mapping[str, CloudProviderSpec]
    ) -> dict[str, NodePoolDriver]:
        """Drivers of the remote providers whose kubeconfig is usable now."""
        for gone in set(self.connections) - set(providers):
            await self._close(self.connections.pop(gone))
        names = sorted(providers)
        results = await asyncio.gather(*(self._connect(n, providers[n]) for n in names))
        self.errors = {n: e for n, e in zip(names, results, strict=True) if e is not None}
        return {n: self.connections[n].driver for n in names if n not in self.errors}

    async def _connect(self, name: str, spec: CloudProviderSpec) -> str | None:
        ref = spec.cluster.kubeconfig_secret_ref
        assert ref is not None
        namespace = ref.namespace or self.operator_namespace
        where = f"key {ref.key} of Secret {namespace}/{ref.name}"
        try:
            data, version = await self.kube.read_secret(namespace, ref.name)
        except ApiException as exc:
            return f"Secret {namespace}/{ref.name}: {_api_reason(exc)}"
        except Exception as exc:
            return f"Secret {namespace}/{ref.name}: {type(exc).__name__}"
        cache_key = f"{namespace}/{ref.name}/{ref.key}@{version}"
        cached = self.connections.get(name)
        if cached is not None and cached.version == cache_key and cached.spec == spec:
            return None
        if ref.key not in data:
            return f"{where}: missing"
        try:
            text = base64.b64decode(data[ref.key], validate=True).decode()
            api = await asyncio.to_thread(_client_from, text)
        except (binascii.Error, UnicodeDecodeError):
            return f"{where}: not base64-encoded UTF-8"
        except CredentialsError as exc:
            return f"{where}: {exc}"
        try:
            driver = self.make_driver(name, spec, api)
        except DriverError as exc:
            await asyncio.to_thread(api.close)
            return f"no driver: {exc.reason}"
        if cached is not None:
            await self._close(cached)
        self.connections[name] = _Connection(cache_key, api, spec, driver)
        log.info("connected to the remote cluster of %s", name, extra={"provider": name})
        return None

    async def _close(self, connection: _Connection) -> None:
        await asyncio.to_thread(connection.api.close)

    async def copies(
        self, providers: list[str]
    ) -> tuple[dict[str, dict[PoolKey, Copy]], dict[str, str]]:
        """The copies gpufleet owns in each provider's cluster, and providers that failed."""
        names = sorted(p for p in providers if p in self.connections)
        results = await asyncio.gather(*(self._list(n) for n in names))
        found: dict[str, dict[PoolKey, Copy]] = {}
        failed: dict[str, str] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, str):
                failed[name] = result
            else:
                found[name] = result
        return found, failed

    async def _list(self, name: str) -> dict[PoolKey, Copy] | str:
        apps = client.AppsV1Api(self.connections[name].api)
        try:
            listed = await asyncio.to_thread(
                apps.list_deployment_for_all_namespaces,
                # Providers may share a cluster: each sees only its own copies.
                label_selector=f"{MANAGED_BY}=gpufleet,{POOL_LABEL},{PROVIDER_LABEL}={name}",
                _request_timeout=10,
            )
        except ApiException as exc:
            return f"ProviderUnavailable: remote cluster: {_api_reason(exc)}"
        except Exception as exc:
            return f"ProviderUnavailable: remote cluster: {type(exc).__name__}"
        out: dict[PoolKey, Copy] = {}
        for item in listed.items:
            meta, spec = item.metadata, item.spec
            if meta is None or spec is None or not meta.name:
                continue
            namespace, _, pool = str((meta.labels or {}).get(POOL_LABEL, "")).partition(".")
            if not namespace or not pool or namespace != meta.namespace:
                continue
            out[PoolKey(namespace, pool)] = Copy(
                namespace,
                meta.name,
                int(spec.replicas or 0),
                str((meta.annotations or {}).get(SOURCE_HASH_ANNOTATION, "")),
            )
        return out

    async def resize(
        self,
        provider: str,
        key: PoolKey,
        name: str,
        workload: WorkloadEntry | None,
        size: int,
        action_id: str,
    ) -> bool:
        """Apply the copy at `size` replicas, or delete it at 0; True when done. A
        Deployment of that name that is not this provider's copy is left alone."""
        connection = self.connections.get(provider)
        if connection is None:
            return False
        apps = client.AppsV1Api(connection.api)
        try:
            if size <= 0:
                if await self._held_by_other(apps, provider, key.namespace, name):
                    return True  # not ours to delete
                try:
                    await asyncio.to_thread(
                        apps.delete_namespaced_deployment, name, key.namespace, _request_timeout=10
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                return True
            if workload is None or workload.kind != "Deployment":
                log.warning(
                    "pool %s: only Deployments burst to remote clusters",
                    key,
                    extra={"pool": str(key), "provider": provider},
                )
                return False
            held = await self._held_by_other(apps, provider, key.namespace, name)
            if held:
                log.warning(
                    "burst copy %s/%s on %s: the cluster holds %s's copy; not taking it",
                    key.namespace,
                    name,
                    provider,
                    held,
                    extra={"pool": str(key), "provider": provider, "actionId": action_id},
                )
                return False
            core = client.CoreV1Api(connection.api)
            namespace = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": key.namespace},
            }
            await asyncio.to_thread(
                core.patch_namespace,
                key.namespace,
                namespace,
                field_manager=FIELD_MANAGER,
                _content_type=_APPLY,
                _request_timeout=10,
            )
            body = copy_manifest(key, workload, size, provider)
            await asyncio.to_thread(
                apps.patch_namespaced_deployment,
                name,
                key.namespace,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=_APPLY,
                _request_timeout=10,
            )
        except ApiException as exc:
            log.warning(
                "burst copy %s on %s: %s",
                key,
                provider,
                _api_reason(exc),
                extra={"pool": str(key), "provider": provider, "actionId": action_id},
            )
            return False
        except Exception as exc:
            log.warning(
                "burst copy %s on %s: %s",
                key,
                provider,
                type(exc).__name__,
                extra={"pool": str(key), "provider": provider, "actionId": action_id},
            )
            return False
        return True

    async def _held_by_other(
        self, apps: client.AppsV1Api, provider: str, namespace: str, name: str
    ) -> str | None:
        """Who else holds the Deployment `namespace/name` (another provider sharing the
        cluster, or someone not gpufleet); None when it is absent or this provider's."""
        try:
            found = await asyncio.to_thread(
                apps.read_namespaced_deployment, name, namespace, _request_timeout=10
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        labels = (found.metadata.labels if found.metadata else None) or {}
        if labels.get(MANAGED_BY) != "gpufleet":
            return "a Deployment gpufleet does not manage"
        owner = str(labels.get(PROVIDER_LABEL, ""))
        return None if owner == provider else f"provider {owner or '(none)'}"

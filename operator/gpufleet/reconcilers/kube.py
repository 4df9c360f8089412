"""The few Kubernetes calls the operator makes, each in a worker thread (the client is
synchronous) and each named here, so RBAC can be checked against this list."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gpufleet.api.common import GROUP, VERSION

FIELD_MANAGER = "gpufleet"

# (api group, resource, verb) of every call below; the Helm chart's RBAC is checked against it.
CALLS = (
    ("apps", "deployments/scale", "patch"),
    ("apps", "statefulsets/scale", "patch"),
    (GROUP, "servingpools/status", "patch"),
    (GROUP, "cloudproviders/status", "patch"),
    (GROUP, "powerbudgets/status", "patch"),
    ("", "events", "create"),
    ("", "configmaps", "create"),
    # reconcilers/intent.py: the intent record on the anchor (resourceVersion precondition);
    # reconcilers/reporting/gateway.py: the optional gateway ConfigMap, the same three calls.
    ("", "configmaps", "get"),
    ("", "configmaps", "patch"),
    # reconcilers/drain.py: preempted replicas leave through the Eviction API (which honours
    # PodDisruptionBudgets); the pods and nodes it picks them from are listed fresh (the
    # watches grant both lists already).
    ("", "pods/eviction", "create"),
    ("", "pods", "list"),
    ("", "nodes", "list"),
)
# Only where `rbac.secretNamespaces` grants it: Kube.read_secret, for a CloudProvider's
# `cluster.kubeconfigSecretRef` (reconcilers/burst/kubeconfig.py). The Deployment or StatefulSet a
# burst copies comes from the deployments or statefulsets index, which list and watch them.
SECRET_CALLS = (("", "secrets", "get"),)
# Only with leader election (`--leader-election`): Kube.ensure_peering.
PEERING_CALLS = (("kopf.dev", "clusterkopfpeerings", "create"),)
PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL = "kopf.dev", "v1", "clusterkopfpeerings"


class SecretUnusable(Exception):
    """A Secret's key is missing or not text; the message names the key, never the data."""


def api_reason(exc: ApiException) -> str:
    """An API error as a condition or log may show it: reason and status, never the body."""
    return f"{exc.reason or 'error'} ({exc.status})"


def secret_text(data: Mapping[str, str], key: str, where: str) -> str:
    """The text under `key` of a Secret's (base64) `data`; `where` names it in errors."""
    if key not in data:
        raise SecretUnusable(f"{where}: missing")
    try:
        return base64.b64decode(data[key], validate=True).decode()
    except ValueError:  # binascii.Error and UnicodeDecodeError
        raise SecretUnusable(f"{where}: not base64-encoded UTF-8") from None


class Conflict(Exception):
    """A write's resourceVersion precondition failed: someone else wrote first."""


class EvictionRefused(Exception):
    """The API server refused an eviction for now (HTTP 429). `budget`: a
    PodDisruptionBudget allows no disruption now (the message names it); otherwise the
    server throttled the request."""

    def __init__(self, message: str, budget: bool) -> None:
        super().__init__(message)
        self.budget = budget
        self.reason = "DisruptionBudget" if budget else "Throttled"


class Workloads(Protocol):
    """What actuation asks of the API server: scale workloads and drain their pods. `Kube`
    is the real one; tests use an in-memory one."""

    async def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None: ...

    async def evict(self, namespace: str, name: str, grace_seconds: int) -> bool: ...

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...

    async def list_node_names(self, label_selector: str) -> list[str]: ...

    async def event(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        uid: str | None,
        reason: str,
        message: str,
        warning: bool = False,
    ) -> None: ...


class Kube:
    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    async def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        body = {"spec": {"replicas": replicas}}
        if kind == "StatefulSet":
            call: Any = self.apps.patch_namespaced_stateful_set_scale
        elif kind == "Deployment":
            call = self.apps.patch_namespaced_deployment_scale
        else:
            raise ValueError(
                f"scaleTargetRef.kind {kind} is not supported yet (Deployment, StatefulSet)"
            )
        await asyncio.to_thread(call, name, namespace, body, field_manager=FIELD_MANAGER)

    async def patch_status(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        previous: Mapping[str, Any],
        status: Mapping[str, Any],
    ) -> None:
        # A merge patch keeps keys it does not name: clear the ones that went away.
        body = {"status": {**dict.fromkeys(k for k in previous if k not in status), **status}}
        if namespace:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                body,
                field_manager=FIELD_MANAGER,
            )
        else:
            await asyncio.to_thread(
                self.custom.patch_cluster_custom_object_status,
                GROUP,
                VERSION,
                plural,
                name,
                body,
                field_manager=FIELD_MANAGER,
            )

    async def event(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        uid: str | None,
        reason: str,
        message: str,
        warning: bool = False,
    ) -> None:
        now = datetime.now(tz=UTC)
        target_namespace = namespace or "default"
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}.", namespace=target_namespace),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=kind, name=name, namespace=namespace, uid=uid
            ),
            reason=reason,
            message=message[:1024],
            type="Warning" if warning else "Normal",
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component="gpufleet"),
            reporting_component="gpufleet.io/operator",
            reporting_instance="gpufleet",
        )
        await asyncio.to_thread(self.core.create_namespaced_event, target_namespace, body)

    async def evict(self, namespace: str, name: str, grace_seconds: int) -> bool:
        """Evict one pod, giving it `grace_seconds` from SIGTERM (as `kubectl drain
        --grace-period`): True when the eviction was accepted, False when the pod is gone;
        EvictionRefused when the API server says not now."""
        body = client.V1Eviction(
            api_version="policy/v1",
            kind="Eviction",
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
            delete_options=client.V1DeleteOptions(grace_period_seconds=grace_seconds),
        )
        try:
            await asyncio.to_thread(self.core.create_namespaced_pod_eviction, name, namespace, body)
        except ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status == 429:
                message, budget = _refusal(exc)
                raise EvictionRefused(message, budget) from exc
            raise
        return True

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """The namespace's pods that match the selector, as JSON objects."""
        found = await asyncio.to_thread(
            self.core.list_namespaced_pod, namespace, label_selector=label_selector
        )
        serialize: Any = self.api.sanitize_for_serialization
        return [dict(serialize(pod)) for pod in found.items]

    async def list_node_names(self, label_selector: str) -> list[str]:
        found = await asyncio.to_thread(self.core.list_node, label_selector=label_selector)
        return sorted(str(node.metadata.name) for node in found.items if node.metadata)

    async def ensure_config_map(self, namespace: str, name: str) -> None:
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name=name, namespace=namespace, labels={"app.kubernetes.io/managed-by": "gpufleet"}
            )
        )
        try:
            await asyncio.to_thread(
                self.core.create_namespaced_config_map, namespace, body, field_manager=FIELD_MANAGER
            )
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def read_config_map(self, namespace: str, name: str) -> tuple[dict[str, str], str]:
        """The ConfigMap's data and resourceVersion."""
        found = await asyncio.to_thread(self.core.read_namespaced_config_map, name, namespace)
        return dict(found.data or {}), _version(found)

    async def patch_config_map_data(
        self, namespace: str, name: str, data: Mapping[str, str | None], version: str
    ) -> str:
        """Merge `data` in (None removes a key), only if the ConfigMap is still at `version`;
        its new version."""
        body = {"metadata": {"resourceVersion": version}, "data": dict(data)}
        try:
            written = await asyncio.to_thread(
                self.core.patch_namespaced_config_map,
                name,
                namespace,
                body,
                field_manager=FIELD_MANAGER,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"configmap {namespace}/{name} changed since {version}") from exc
            raise
        return _version(written)

    async def read_secret(self, namespace: str, name: str) -> tuple[dict[str, str], str]:
        """The Secret's (base64) data and resourceVersion; callers never log either."""
        found = await asyncio.to_thread(self.core.read_namespaced_secret, name, namespace)
        data = {
            k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (found.data or {}).items()
        }
        return data, _version(found)

    async def ensure_peering(self, name: str) -> None:
        """The ClusterKopfPeering kopf's leader election keeps its peers in (kopf needs it)."""
        body = {
            "apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "gpufleet"}},
        }
        try:
            await asyncio.to_thread(
                self.custom.create_cluster_custom_object,
                PEERING_GROUP,
                PEERING_VERSION,
                PEERING_PLURAL,
                body,
                field_manager=FIELD_MANAGER,
            )
        except ApiException as exc:
            if exc.status != 409:
                raise


def _refusal(exc: ApiException) -> tuple[str, bool]:
    """The API server's words for a refused eviction (they name the disruption budget), and
    whether a budget refused it; nothing else of the reply is kept."""
    try:
        status = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        status = {}
    status = status if isinstance(status, dict) else {}
    causes = (status.get("details") or {}).get("causes") or []
    budget_words = [
        str(c.get("message", ""))
        for c in causes
        if isinstance(c, dict) and c.get("reason") == "DisruptionBudget"  # metav1.StatusCause
    ]
    message = str(status.get("message") or exc.reason or "too many requests")
    budget = bool(budget_words) or "disruption budget" in message.lower()
    return "; ".join([message, *budget_words])[:512], budget


def _version(obj: Any) -> str:
    meta = getattr(obj, "metadata", None)
    return str(getattr(meta, "resource_version", "") or "")

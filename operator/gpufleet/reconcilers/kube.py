"""The few Kubernetes calls the operator makes, each in a worker thread (the client is
synchronous) and each named here, so RBAC can be checked against this list."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gpufleet.api.common import GROUP, VERSION
from gpufleet.api.labels import FIELD_MANAGER
from gpufleet.reconcilers.threads import in_lease_thread

TERM_ANNOTATION = f"{GROUP}/leader-term"  # reconcilers/leader.py


# (api group, resource, verb) of every call below; the Helm chart's RBAC is checked against it.
CALLS = (
    # Kube.scale reads the scale first: its resourceVersion (the workload's) is the write's
    # precondition, and no write is made when the size is already right.
    ("apps", "deployments/scale", "get"),
    ("apps", "statefulsets/scale", "get"),
    ("apps", "deployments/scale", "patch"),
    ("apps", "statefulsets/scale", "patch"),
    (GROUP, "servingpools/status", "patch"),
    (GROUP, "cloudproviders/status", "patch"),
    # reconcilers/burst/teardown.py: the finalizer of CloudProviders with a remote cluster
    # (metadata.finalizers only, never the spec), resourceVersion precondition.
    (GROUP, "cloudproviders", "patch"),
    (GROUP, "powerbudgets/status", "patch"),
    (GROUP, "tenantpolicies/status", "patch"),
    # reconcilers/handlers.py default_installation: kube-system's uid, by name only.
    ("", "namespaces", "get"),
    # Kube.event: in the pool's namespace; about cluster-scoped kinds, in the operator's.
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
# Only with leader election (`--leader-election`): the Lease in the operator namespace
# (reconcilers/leader.py), read, created and renewed with resourceVersion preconditions.
LEASE_CALLS = (
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
)


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


class Fence(Protocol):
    """What a write asks of leader election (reconcilers/leader.py Elector): `fresh` raises
    unless this replica renewed its term within the renew deadline (no I/O); `confirm` also
    reads the Lease back. Both return the term."""

    def fresh(self) -> int: ...

    async def confirm(self) -> int: ...

    @property
    def write_timeout(self) -> float:
        """Seconds a fenced write may take, under a third of the lease duration."""
        ...


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


CLUSTER_EVENTS_NAMESPACE = "default"
SCALE_TRIES = 5  # reads and writes of a scale subresource before a conflict is reported


class Kube:
    def __init__(self, api: ApiClient, home_namespace: str) -> None:
        self.api = api
        # The operator's own namespace (its ConfigMaps, Lease and journal live there).
        self.home_namespace = home_namespace
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        # With leader election, every write checks this replica still leads (set once the
        # Elector exists, reconcilers/leader.py); None: this process acts alone.
        self.fence: Fence | None = None

    async def _write(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a write in a worker thread, checking the term is fresh just before it goes
        out: the window in which a stalled leader can still write starts there. The client
        gives up on it after `write_timeout` (every generated call takes `_request_timeout`),
        so a write stuck on the way does not hold the tick past the term; a request the API
        server already received may still land, which the resourceVersion preconditions
        (docs/security.md "Leader hand-over") are for."""
        fence = self.fence
        if fence is not None:
            kwargs.setdefault("_request_timeout", fence.write_timeout)

        def fenced() -> Any:
            if fence is not None:
                fence.fresh()
            return call(*args, **kwargs)

        return await asyncio.to_thread(fenced)

    async def _confirm(self) -> int | None:
        return await self.fence.confirm() if self.fence is not None else None

    async def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        """Set the workload's replicas through its scale subresource, under the
        resourceVersion read just before (the Lease confirmed between the two): a leader
        deposed meanwhile gets a Conflict, never a write over its successor's."""
        if kind == "StatefulSet":
            read: Any = self.apps.read_namespaced_stateful_set_scale
            call: Any = self.apps.patch_namespaced_stateful_set_scale
        elif kind == "Deployment":
            read = self.apps.read_namespaced_deployment_scale
            call = self.apps.patch_namespaced_deployment_scale
        else:
            raise ValueError(
                f"scaleTargetRef.kind {kind} is not supported yet (Deployment, StatefulSet)"
            )
        # The workload's resourceVersion moves with every status update (pods starting),
        # so a conflict is mostly the controller's, not a successor's: read, confirm the
        # Lease and write again, a few times. Each try confirms the Lease anew, so a
        # deposed leader still stops at the confirmation.
        for attempt in range(SCALE_TRIES):
            found = await asyncio.to_thread(read, name, namespace)
            if found.spec is not None and found.spec.replicas == replicas:
                return
            await self._confirm()
            body = {
                "metadata": {"resourceVersion": _version(found)},
                "spec": {"replicas": replicas},
            }
            try:
                await self._write(call, name, namespace, body, field_manager=FIELD_MANAGER)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
                if attempt == SCALE_TRIES - 1:
                    raise Conflict(f"{kind} {namespace}/{name} changed since it was read") from exc

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
            await self._write(
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
            await self._write(
                self.custom.patch_cluster_custom_object_status,
                GROUP,
                VERSION,
                plural,
                name,
                body,
                field_manager=FIELD_MANAGER,
            )

    async def patch_finalizers(
        self, plural: str, name: str, finalizers: list[str], version: str
    ) -> None:
        """Set the cluster-scoped object's finalizers, only if it is still at `version`
        (a merge patch replaces the list whole: another writer's change must not be lost)."""
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": version}}
        try:
            await self._write(
                self.custom.patch_cluster_custom_object,
                GROUP,
                VERSION,
                plural,
                name,
                body,
                field_manager=FIELD_MANAGER,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{plural} {name} changed since {version}") from exc
            raise

    async def cluster_uid(self) -> str:
        """The uid of the kube-system namespace: the cluster's id, as long as it lives."""
        namespace = await asyncio.to_thread(self.core.read_namespace, "kube-system")
        uid = namespace.metadata.uid if namespace.metadata is not None else None
        if not uid:
            raise RuntimeError("the kube-system namespace has no uid")
        return str(uid)

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
        # The API server takes a core/v1 Event about a cluster-scoped object only in
        # `default` (any other namespace is "involvedObject.namespace does not match"), so
        # that is where CloudProvider, PowerBudget and TenantPolicy Events go; the chart
        # grants `create events` there alone when the rest is namespaced.
        target_namespace = namespace or CLUSTER_EVENTS_NAMESPACE
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
        await self._write(self.core.create_namespaced_event, target_namespace, body)

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
        await self._confirm()
        try:
            await self._write(self.core.create_namespaced_pod_eviction, name, namespace, body)
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
        # Read first: a restarted operator finds it, and then sends no write at all (a
        # create refused as a conflict is still a write request to the API server).
        try:
            await asyncio.to_thread(self.core.read_namespaced_config_map, name, namespace)
            return
        except ApiException as exc:
            if exc.status != 404:
                raise
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

    async def read_config_map_meta(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], dict[str, str], str]:
        """The ConfigMap's data, annotations and resourceVersion."""
        found = await asyncio.to_thread(self.core.read_namespaced_config_map, name, namespace)
        annotations = dict((found.metadata.annotations if found.metadata else None) or {})
        return dict(found.data or {}), annotations, _version(found)

    async def patch_config_map_data(
        self, namespace: str, name: str, data: Mapping[str, str | None], version: str
    ) -> str:
        """Merge `data` in (None removes a key), only if the ConfigMap is still at `version`;
        its new version. With a fence, the Lease is confirmed first and the ConfigMap
        carries the term it was written under (`gpufleet.io/leader-term`)."""
        metadata: dict[str, Any] = {"resourceVersion": version}
        term = await self._confirm()
        if term is not None:
            metadata["annotations"] = {TERM_ANNOTATION: str(term)}
        body = {"metadata": metadata, "data": dict(data)}
        try:
            written = await self._write(
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

    async def drop_finalizer(self, namespace: str, name: str, finalizer: str) -> None:
        """Take `finalizer` off a ConfigMap: kopf's fleet timer put one on the anchor, and
        nothing removes it any more, so deleting the anchor would hang."""
        found = await asyncio.to_thread(self.core.read_namespaced_config_map, name, namespace)
        finalizers = list((found.metadata.finalizers if found.metadata else None) or [])
        if finalizer not in finalizers:
            return
        body = {
            "metadata": {
                "resourceVersion": _version(found),
                "finalizers": [f for f in finalizers if f != finalizer],
            }
        }
        try:
            await asyncio.to_thread(
                self.core.patch_namespaced_config_map,
                name,
                namespace,
                body,
                field_manager=FIELD_MANAGER,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or another replica took it off first
                raise

    def _lease_call(self, name: str) -> Any:
        # Raw JSON in and out (_preload_content=False): the client's V1Lease would need
        # MicroTime in a form the API server does not always parse back.
        return getattr(self.coordination, name)

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease as JSON; None when there is none."""
        try:
            reply = await in_lease_thread(
                functools.partial(
                    self._lease_call("read_namespaced_lease"),
                    name,
                    namespace,
                    _preload_content=False,
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(json.loads(reply.data))

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._lease_write(
            f"lease in {namespace}: created meanwhile", "create_namespaced_lease", namespace, body
        )

    async def replace_lease(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Write the Lease whole; the body's resourceVersion is the precondition."""
        return await self._lease_write(
            f"lease {namespace}/{name} changed meanwhile",
            "replace_namespaced_lease",
            name,
            namespace,
            body,
        )

    async def _lease_write(self, conflict: str, method: str, *args: Any) -> dict[str, Any]:
        """A Lease create or replace (`args`: its name and namespace, then the body);
        `Conflict` when another writer came first."""
        *names, body = args
        call = self._lease_call(method)
        try:
            reply = await in_lease_thread(
                lambda: call(
                    *names, dict(body), field_manager=FIELD_MANAGER, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(conflict) from exc
            raise
        return dict(json.loads(reply.data))


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

"""kopf glue: settings, the watches kept as indexes, and the one fleet-wide loop.

Per-object handlers only parse and index; one loop acts for the whole fleet, because power
budgets and quotas couple the pools. The loop is the operator's own task
(reconcilers/runner.py): it starts once kopf has filled every index (no plan on a partial
view) and ticks only while this replica holds the Lease (reconcilers/leader.py); every
replica keeps its indexes warm.

The index handlers are coroutines though none awaits: kopf runs a plain function in a
thread of its own pool and awaits it through a shielded task, per watch event. In a surge
(benchmarks/fleet_scale.py) that is thousands of thread hops a second, each for a few
dictionary reads, on the interpreter the fleet loop needs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client import ApiClient

from gpufleet.api.common import GROUP, VERSION
from gpufleet.api.labels import NODE_POOL_LABEL
from gpufleet.api.parse import parse_budget, parse_pool, parse_provider, parse_tenant_policy
from gpufleet.api.pool import INFERENCE_POOL_GROUP, INFERENCE_POOL_VERSION
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.api.tenancy import PriorityClassInfo
from gpufleet.drivers.base import NodePoolDriver
from gpufleet.drivers.eks import AwsCredentials, ClientFactory
from gpufleet.drivers.registry import make_driver
from gpufleet.drivers.simulated import WatchedNodes
from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.metrics.source import PrometheusSource
from gpufleet.reconcilers.burst.lifecycle import installation_id
from gpufleet.reconcilers.burst.remote import RemoteClusters
from gpufleet.reconcilers.burst.teardown import ProviderTeardown
from gpufleet.reconcilers.cache import (
    BudgetEntry,
    PoolEntry,
    ProviderEntry,
    TenantPolicyEntry,
    View,
    inference_pool_entry,
    named_namespaces,
    node_entry,
    pod_entry,
    quota_entry,
    requests_gpu,
    workload_entry,
)
from gpufleet.reconcilers.config import RunConfig
from gpufleet.reconcilers.credentials import (
    AwsCredentialSource,
    CredentialedFactory,
    RemoteCredentialedFactory,
)
from gpufleet.reconcilers.intent import Journal
from gpufleet.reconcilers.kube import Kube
from gpufleet.reconcilers.leader import Elector, Timing
from gpufleet.reconcilers.liveness import TickWatch
from gpufleet.reconcilers.loop import FleetLoop
from gpufleet.reconcilers.pod_index import PodIndex
from gpufleet.reconcilers.reporting.gateway import GatewayConfigMap
from gpufleet.reconcilers.runner import Runner
from gpufleet.reconcilers.threads import use_io_threads

log = logging.getLogger(__name__)

# (api group, resource) of every kopf index and timer below: kopf lists and watches each.
WATCHED = (
    (GROUP, "servingpools"),
    (GROUP, "cloudproviders"),
    (GROUP, "powerbudgets"),
    ("", "nodes"),
    ("", "pods"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    (GROUP, "tenantpolicies"),
    ("scheduling.k8s.io", "priorityclasses"),
    ("", "resourcequotas"),
    (INFERENCE_POOL_GROUP, "inferencepools"),
)
# (api group, resource, verb) kopf itself calls: it watches CRDs to notice new resources.
KOPF_CALLS = (
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
)
# Only with a list of namespaces (`--namespace`): kopf lists and watches namespaces.
KOPF_NAMESPACED_CALLS = (("", "namespaces", "list"), ("", "namespaces", "watch"))


@dataclass(frozen=True)
class Election:
    """Leader election on the Lease `name` in the operator namespace: one replica holds it
    and acts; a standby takes over about `duration` seconds after the leader's last renewal
    (at once after a leader that shut down released it)."""

    name: str = "gpufleet"
    duration: float = 10.0


def identity() -> str:
    """This replica's name in the Lease and the intent record (the pod's name, `POD_ID`)."""
    return os.environ.get("POD_ID") or f"{socket.gethostname()}/{os.getpid()}"


def _build_driver(
    config: RunConfig,
    metrics: OperatorMetrics,
    aws_clients: ClientFactory | None,
    watched_nodes: WatchedNodes | None = None,
) -> Callable[[str, CloudProviderSpec, ApiClient, AwsCredentials | None], NodePoolDriver]:
    """A driver for a provider on the given cluster's ApiClient, with its AWS credentials.
    `watched_nodes`: that cluster's Nodes as the operator watches them, if it does."""

    def make(
        name: str, spec: CloudProviderSpec, api: ApiClient, aws: AwsCredentials | None
    ) -> NodePoolDriver:
        return make_driver(
            name,
            spec,
            api_client=api,
            registry=metrics.registry,
            simulated_namespace=config.simulated_namespace,
            aws_credentials=aws,
            aws_clients=aws_clients,
            watched_nodes=watched_nodes,
        )

    return make


def driver_factory(
    api: ApiClient,
    config: RunConfig,
    metrics: OperatorMetrics,
    aws_clients: ClientFactory | None = None,
    watched_nodes: WatchedNodes | None = None,
) -> CredentialedFactory:
    """Drivers for local providers. An EKS driver gets the AWS credentials its
    `credentialsSecretRef` holds: the fleet loop refreshes the factory's source each tick
    (a Secret without a namespace is in the operator's). `aws_clients`: tests' boto3 seam.
    `watched_nodes`: the local Nodes, which the fleet loop feeds from its node index."""
    build = _build_driver(config, metrics, aws_clients, watched_nodes)
    return CredentialedFactory(
        AwsCredentialSource(config.operator_namespace),
        lambda name, spec, aws: build(name, spec, api, aws),
    )


def remote_driver_factory(
    config: RunConfig, metrics: OperatorMetrics, aws_clients: ClientFactory | None = None
) -> RemoteCredentialedFactory:
    """Drivers for remote providers: built on the ApiClient of the provider's cluster; AWS
    credentials as for local ones (the Secret is in this cluster, not the remote one)."""
    return RemoteCredentialedFactory(
        AwsCredentialSource(config.operator_namespace), _build_driver(config, metrics, aws_clients)
    )


def _values(index: kopf.Index[Any, Any]) -> list[Any]:
    return [value for key in index for value in index[key]]


def register(
    registry: kopf.OperatorRegistry,
    config: RunConfig,
    api: ApiClient,
    metrics: OperatorMetrics,
    election: Election | None = None,
) -> None:
    """Attach every handler to `registry`; `gpufleet run` and the tests call this.

    With `election`, only the replica that holds the Lease ticks, and its writes are fenced
    by its term; without, this replica acts alone."""

    # Longer than any tick can take with every call's timeout: then it waits on something
    # that never returns.
    watch = TickWatch(stuck_after=max(120.0, 20 * config.period_seconds))
    _register_probe_and_login(registry, watch)
    _register_startup(registry, config, api, metrics, election, watch)
    _register_indexes(registry)
    _register_cluster_indexes(registry)
    _register_platform_indexes(registry)
    _register_fleet(registry)


def _register_probe_and_login(registry: kopf.OperatorRegistry, watch: TickWatch) -> None:
    @kopf.on.probe(id="fleet_loop", registry=registry)
    def fleet_loop(**_: Any) -> str:
        watch.check()
        return "ok"

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own starts without kopf's default login handlers.
        return kopf.login_via_client(**kwargs)


async def _fleet_loop(
    api: ApiClient, config: RunConfig, metrics: OperatorMetrics, kube: Kube, elector: Elector | None
) -> FleetLoop:
    """The fleet loop and what it acts through, as the run settings say."""
    source = (
        PrometheusSource(
            config.prometheus_url,
            max_age=config.max_sample_age_seconds,
            refresh=config.metrics_refresh_seconds,
        )
        if config.prometheus_url
        else None
    )
    remote = RemoteClusters(
        kube,
        remote_driver_factory(config, metrics),
        config.operator_namespace,
        config.namespaces,
        allow_private_servers=config.allow_private_remote_servers,
        read_seconds=config.remote_read_seconds,
        installation=installation_id(
            config.installation or await default_installation(kube, config.operator_namespace)
        ),
    )
    gateway = (
        GatewayConfigMap(kube, metrics, config.operator_namespace, config.gateway_config_map)
        if config.gateway_config_map
        else None
    )
    watched = WatchedNodes()
    return FleetLoop(
        kube,
        source,
        driver_factory(api, config, metrics, watched_nodes=watched),
        metrics,
        journal=Journal(kube, config.operator_namespace, config.anchor, identity(), fence=elector),
        remote=remote,
        teardown=ProviderTeardown(kube, remote, config.provider_deletion_timeout_seconds),
        gateway=gateway,
        power_query=config.power_query,
        namespace_label=config.query_namespace_label if config.confine_queries else None,
        series_label=config.query_namespace_label,
        pod_label_selector=config.pod_label_selector,
        sees_every_pod=not config.namespaces and not config.pod_label_selector,
        watched_nodes=watched,
    )


def _register_startup(
    registry: kopf.OperatorRegistry,
    config: RunConfig,
    api: ApiClient,
    metrics: OperatorMetrics,
    election: Election | None,
    watch: TickWatch,
) -> None:
    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
        _configure(settings, config.pod_label_selector)
        use_io_threads(asyncio.get_running_loop())
        kube = Kube(api, config.operator_namespace)
        elector = (
            Elector(
                kube,
                config.operator_namespace,
                election.name,
                identity(),
                Timing(election.duration),
            )
            if election is not None
            else None
        )
        kube.fence = elector
        memo.fleet = await _fleet_loop(api, config, metrics, kube, elector)
        await kube.ensure_config_map(config.operator_namespace, config.anchor)
        # kopf's fleet timer put its finalizer on the anchor; nothing would take it off now.
        await kube.drop_finalizer(config.operator_namespace, config.anchor, f"{GROUP}/finalizer")
        # kopf passes every index by its handler's name, to startup handlers too: the same
        # live objects the index handlers fill.
        indices = {name: kwargs[name] for name in INDEXES}
        memo.runner = Runner(
            memo.fleet,
            _Views(indices),
            watch,
            config.period_seconds,
            elector,
            freeze_heap=config.freeze_heap,
        )
        memo.runner.start()

    @kopf.on.cleanup(registry=registry)
    async def shut_down(memo: kopf.Memo, **_: Any) -> None:
        runner = getattr(memo, "runner", None)
        if runner is not None:
            await runner.stop()


class _NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf deep-copies every watched object on every event to diff it with the last one
    handled, a fifth of the operator's CPU while 1,000 pools' pods and statuses change
    (benchmarks/fleet_scale.py). Only change handlers (on.create/update/field) and daemons
    read that diff, and the operator registers neither (`tests/reconcilers` checks it):
    indexes and one event handler. So the essence is empty, and nothing is copied."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()


def _configure(settings: kopf.OperatorSettings, pod_label_selector: str | None = None) -> None:
    # Our prefix, not kopf's, on anything kopf stores; no kopf log lines posted as Events.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = _NoDiffBase(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.enabled = False
    if pod_label_selector:
        # Filtered by the API server: pods without these labels never reach the operator
        # (docs/install.md, "What the operator watches").
        settings.watching.label_selectors["v1", "pods"] = pod_label_selector
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30


def _register_indexes(registry: kopf.OperatorRegistry) -> None:
    """The three kinds, parsed once per change; errors are values (SpecValid=False)."""

    @kopf.index(GROUP, VERSION, "servingpools", id="gpufleet_pools", registry=registry)
    async def gpufleet_pools(
        namespace: str | None, name: str, body: kopf.Body, meta: kopf.Meta, **_: Any
    ) -> dict[Any, Any]:
        entry = PoolEntry(
            namespace or "",
            name,
            int(meta.get("generation") or 0),
            parse_pool(body.get("spec"), name, namespace),
            dict(body.get("status") or {}),
            str(meta.get("creationTimestamp") or ""),
            str(meta.get("uid") or ""),
        )
        return {(namespace, name): entry}

    @kopf.index(GROUP, VERSION, "cloudproviders", id="gpufleet_providers", registry=registry)
    async def gpufleet_providers(
        name: str, body: kopf.Body, meta: kopf.Meta, **_: Any
    ) -> dict[Any, Any]:
        entry = ProviderEntry(
            name,
            int(meta.get("generation") or 0),
            parse_provider(body.get("spec"), name),
            dict(body.get("status") or {}),
            str(meta.get("deletionTimestamp") or ""),
            tuple(str(f) for f in meta.get("finalizers") or ()),
            str(meta.get("resourceVersion") or ""),
            str(meta.get("uid") or ""),
        )
        return {name: entry}

    @kopf.index(GROUP, VERSION, "tenantpolicies", id="gpufleet_policies", registry=registry)
    async def gpufleet_policies(
        name: str, body: kopf.Body, meta: kopf.Meta, **_: Any
    ) -> dict[Any, Any]:
        entry = TenantPolicyEntry(
            name,
            int(meta.get("generation") or 0),
            parse_tenant_policy(body.get("spec")),
            dict(body.get("status") or {}),
            named_namespaces(body.get("spec")),
        )
        return {name: entry}

    @kopf.index(GROUP, VERSION, "powerbudgets", id="gpufleet_budgets", registry=registry)
    async def gpufleet_budgets(
        name: str, body: kopf.Body, meta: kopf.Meta, **_: Any
    ) -> dict[Any, Any]:
        entry = BudgetEntry(
            name,
            int(meta.get("generation") or 0),
            parse_budget(body.get("spec")),
            dict(body.get("status") or {}),
        )
        return {name: entry}


def _register_platform_indexes(registry: kopf.OperatorRegistry) -> None:
    """The admin's objects that decide between tenants: PriorityClasses and GPU quotas
    (TenantPolicies are with the gpufleet kinds)."""

    @kopf.index(
        "scheduling.k8s.io",
        "v1",
        "priorityclasses",
        id="gpufleet_priority_classes",
        registry=registry,
    )
    async def gpufleet_priority_classes(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        info = PriorityClassInfo(
            name, int(body.get("value") or 0), bool(body.get("globalDefault") or False)
        )
        return {name: info}

    @kopf.index("", "v1", "resourcequotas", id="gpufleet_quotas", registry=registry)
    async def gpufleet_quotas(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        entry = quota_entry(namespace or "", name, body)
        return {} if entry is None else {namespace: entry}


def _register_cluster_indexes(registry: kopf.OperatorRegistry) -> None:
    """GPU nodes, GPU pods and the workloads pools scale: only what the plan reads."""

    @kopf.index(
        "",
        "v1",
        "nodes",
        labels={NODE_POOL_LABEL: kopf.PRESENT},
        id="gpufleet_nodes",
        registry=registry,
    )
    async def gpufleet_nodes(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {name: node_entry(name, body)}

    def _gpu_pod(spec: kopf.Spec, **_: Any) -> bool:
        return requests_gpu(spec)

    @kopf.index("", "v1", "pods", when=_gpu_pod, id="gpufleet_pods", registry=registry)
    async def gpufleet_pods(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        return {namespace: pod_entry(namespace or "", name, body)}

    @kopf.index("apps", "v1", "deployments", id="gpufleet_deployments", registry=registry)
    async def gpufleet_deployments(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        return {
            (namespace, "Deployment", name): workload_entry(
                "Deployment", namespace or "", name, body
            )
        }

    # GIE's InferencePools (spec.inferencePoolRef). Where their CRD is missing kopf only logs
    # that it cannot serve them and the index stays empty; a CRD added later is watched then.
    @kopf.index(
        INFERENCE_POOL_GROUP,
        INFERENCE_POOL_VERSION,
        "inferencepools",
        id="gpufleet_inference_pools",
        registry=registry,
    )
    async def gpufleet_inference_pools(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        return {(namespace, name): inference_pool_entry(namespace or "", name, body)}

    @kopf.index("apps", "v1", "statefulsets", id="gpufleet_statefulsets", registry=registry)
    async def gpufleet_statefulsets(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        return {
            (namespace, "StatefulSet", name): workload_entry(
                "StatefulSet", namespace or "", name, body
            )
        }


INDEXES = (
    "gpufleet_pools",
    "gpufleet_providers",
    "gpufleet_budgets",
    "gpufleet_policies",
    "gpufleet_nodes",
    "gpufleet_pods",
    "gpufleet_priority_classes",
    "gpufleet_quotas",
    "gpufleet_deployments",
    "gpufleet_statefulsets",
    "gpufleet_inference_pools",
)


async def default_installation(kube: Kube, namespace: str) -> str:
    """`<operator namespace>.<cluster id>` when no `--installation` is set: unique across the
    clusters that may share a remote one (two default installs share a namespace name, never
    a cluster's kube-system uid) and stable across restarts, since both outlive the operator.
    A failed read fails the start-up: falling back to something else once would change the
    id and orphan the copies made under it."""
    uid = await kube.cluster_uid()
    return f"{namespace}.{uid[:13]}"


def _register_fleet(registry: kopf.OperatorRegistry) -> None:
    @kopf.on.event(
        "scheduling.k8s.io", "v1", "priorityclasses", id="indexes_filled", registry=registry
    )
    def indexes_filled(memo: kopf.Memo, **_: Any) -> None:
        # kopf runs no resource handler before every index has been filled from its first
        # listing. The API server keeps two PriorityClasses of its own
        # (system-node-critical, system-cluster-critical; they cannot be deleted), so this
        # handler runs on every cluster, once the indexes are complete.
        runner = getattr(memo, "runner", None)
        if runner is not None and not runner.indexed.is_set():
            runner.indexed.set()


class _Views:
    """Each tick's View, read from the indexes; the pod index is carried over from the last
    tick's where its pods are unchanged (`PodIndex`)."""

    def __init__(self, indices: dict[str, Any]) -> None:
        self._indices = indices
        self._pods: PodIndex | None = None

    def __call__(self) -> View:
        view = _view(self._indices, self._pods)
        self._pods = view.pods if isinstance(view.pods, PodIndex) else None
        return view


def _view(indices: dict[str, Any], previous_pods: PodIndex | None = None) -> View:
    """What one tick plans on, read from the indexes."""
    workloads = {
        k: v
        for index in (indices["gpufleet_deployments"], indices["gpufleet_statefulsets"])
        for k in index
        for v in index[k]
    }
    pods, quotas = indices["gpufleet_pods"], indices["gpufleet_quotas"]
    return View(
        pools=sorted(_values(indices["gpufleet_pools"]), key=lambda e: (e.namespace, e.name)),
        providers=sorted(_values(indices["gpufleet_providers"]), key=lambda e: e.name),
        budgets=sorted(_values(indices["gpufleet_budgets"]), key=lambda e: e.name),
        nodes=_values(indices["gpufleet_nodes"]),
        pods=PodIndex({ns: tuple(pods[ns]) for ns in pods}, previous_pods),
        workloads=workloads,
        tenant_policies=sorted(_values(indices["gpufleet_policies"]), key=lambda e: e.name),
        priority_classes={
            info.name: info for info in _values(indices["gpufleet_priority_classes"])
        },
        quotas={ns: list(quotas[ns]) for ns in quotas},
        inference_pools={
            (e.namespace, e.name): e for e in _values(indices["gpufleet_inference_pools"])
        },
    )

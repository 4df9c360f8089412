"""kopf glue: settings, the watches kept as indexes, and the one fleet-wide timer.

Per-object handlers only parse and index; one timer acts for the whole fleet, because power
budgets and quotas couple the pools. The timer hangs on a ConfigMap the operator owns, so
kopf runs it only after every index has been filled (no plan on a partial view) and pauses
it on a replica that is not the peering leader.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client import ApiClient

from gpufleet.api.common import GROUP, VERSION
from gpufleet.api.labels import NODE_POOL_LABEL
from gpufleet.api.parse import parse_budget, parse_pool, parse_provider
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import NodePoolDriver
from gpufleet.drivers.eks import AwsCredentials, ClientFactory
from gpufleet.drivers.registry import make_driver
from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.metrics.source import PrometheusSource
from gpufleet.reconcilers.burst.remote import RemoteClusters
from gpufleet.reconcilers.cache import (
    BudgetEntry,
    PoolEntry,
    ProviderEntry,
    View,
    node_entry,
    pod_entry,
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
from gpufleet.reconcilers.liveness import TickWatch
from gpufleet.reconcilers.loop import FleetLoop
from gpufleet.reconcilers.reporting.gateway import GatewayConfigMap

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
    ("", "configmaps"),
)
# (api group, resource, verb) kopf itself calls: it watches CRDs to notice new resources,
# and the timer's finalizer goes onto the anchor ConfigMap with a patch.
KOPF_CALLS = (
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("", "configmaps", "patch"),
)
# Only with leader election: kopf watches the ClusterKopfPeering and patches its peers in.
KOPF_PEERING_CALLS = (
    ("kopf.dev", "clusterkopfpeerings", "list"),
    ("kopf.dev", "clusterkopfpeerings", "watch"),
    ("kopf.dev", "clusterkopfpeerings", "patch"),
)
# Only with a list of namespaces (`--namespace`): kopf lists and watches namespaces.
KOPF_NAMESPACED_CALLS = (("", "namespaces", "list"), ("", "namespaces", "watch"))


@dataclass(frozen=True)
class Peering:
    """Leader election by kopf peering: the live replica of highest priority acts, the
    others are paused (no watches, no timer). A peer is presumed dead `lifetime` seconds
    after its last keep-alive, so a standby takes over within about `lifetime` seconds."""

    name: str = "gpufleet"
    priority: int = 0
    lifetime: int = 10


def identity() -> str:
    """This replica's name in the peering object and the intent record (kopf's `POD_ID`)."""
    return os.environ.get("POD_ID") or f"{socket.gethostname()}/{os.getpid()}"


def _build_driver(
    config: RunConfig, metrics: OperatorMetrics, aws_clients: ClientFactory | None
) -> Callable[[str, CloudProviderSpec, ApiClient, AwsCredentials | None], NodePoolDriver]:
    """A driver for a provider on the given cluster's ApiClient, with its AWS credentials."""

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
        )

    return make


def driver_factory(
    api: ApiClient,
    config: RunConfig,
    metrics: OperatorMetrics,
    aws_clients: ClientFactory | None = None,
) -> CredentialedFactory:
    """Drivers for local providers. An EKS driver gets the AWS credentials its
    `credentialsSecretRef` holds: the fleet loop refreshes the factory's source each tick
    (a Secret without a namespace is in the operator's). `aws_clients`: tests' boto3 seam."""
    build = _build_driver(config, metrics, aws_clients)
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
    peering: Peering | None = None,
) -> None:
    """Attach every handler to `registry`; `gpufleet run` and the tests call this.

    With `peering`, only the leader among the replicas runs the fleet timer (kopf pauses
    the others); without, this replica acts alone (kopf's standalone mode)."""

    # Longer than any tick can take with every call's timeout: then it waits on something
    # that never returns.
    watch = TickWatch(stuck_after=max(120.0, 20 * config.period_seconds))
    _register_probe_and_login(registry, watch)
    _register_startup(registry, config, api, metrics, peering)
    _register_indexes(registry)
    _register_cluster_indexes(registry)
    _register_fleet(registry, config, watch)


def _register_probe_and_login(registry: kopf.OperatorRegistry, watch: TickWatch) -> None:
    @kopf.on.probe(id="fleet_loop", registry=registry)
    def fleet_loop(**_: Any) -> str:
        watch.check()
        return "ok"

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own starts without kopf's default login handlers.
        return kopf.login_via_client(**kwargs)


def _register_startup(
    registry: kopf.OperatorRegistry,
    config: RunConfig,
    api: ApiClient,
    metrics: OperatorMetrics,
    peering: Peering | None,
) -> None:
    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        _configure(settings, peering)
        kube = Kube(api)
        if peering is not None:
            await kube.ensure_peering(peering.name)
        source = (
            PrometheusSource(config.prometheus_url, max_age=config.max_sample_age_seconds)
            if config.prometheus_url
            else None
        )
        memo.fleet = FleetLoop(
            kube,
            source,
            driver_factory(api, config, metrics),
            metrics,
            journal=Journal(kube, config.operator_namespace, config.anchor, identity()),
            remote=RemoteClusters(
                kube,
                remote_driver_factory(config, metrics),
                config.operator_namespace,
                config.namespaces,
            ),
            gateway=(
                GatewayConfigMap(
                    kube, metrics, config.operator_namespace, config.gateway_config_map
                )
                if config.gateway_config_map
                else None
            ),
        )
        await kube.ensure_config_map(config.operator_namespace, config.anchor)


def _configure(settings: kopf.OperatorSettings, peering: Peering | None) -> None:
    # Our prefix, not kopf's, on anything kopf stores; no kopf log lines posted as Events.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    if peering is not None:
        # Cluster-wide whatever the watched namespaces: one leader for the whole fleet.
        # mandatory: start paused until the peering object has been seen.
        settings.peering.standalone = False
        settings.peering.mandatory = True
        settings.peering.clusterwide = True
        settings.peering.name = peering.name
        settings.peering.priority = peering.priority
        settings.peering.lifetime = peering.lifetime
        settings.peering.stealth = True


def _register_indexes(registry: kopf.OperatorRegistry) -> None:
    """The three kinds, parsed once per change; errors are values (SpecValid=False)."""

    @kopf.index(GROUP, VERSION, "servingpools", id="gpufleet_pools", registry=registry)
    def gpufleet_pools(
        namespace: str | None, name: str, body: kopf.Body, meta: kopf.Meta, **_: Any
    ) -> dict[Any, Any]:
        entry = PoolEntry(
            namespace or "",
            name,
            int(meta.get("generation") or 0),
            parse_pool(body.get("spec")),
            dict(body.get("status") or {}),
        )
        return {(namespace, name): entry}

    @kopf.index(GROUP, VERSION, "cloudproviders", id="gpufleet_providers", registry=registry)
    def gpufleet_providers(name: str, body: kopf.Body, meta: kopf.Meta, **_: Any) -> dict[Any, Any]:
        entry = ProviderEntry(
            name,
            int(meta.get("generation") or 0),
            parse_provider(body.get("spec")),
            dict(body.get("status") or {}),
        )
        return {name: entry}

    @kopf.index(GROUP, VERSION, "powerbudgets", id="gpufleet_budgets", registry=registry)
    def gpufleet_budgets(name: str, body: kopf.Body, meta: kopf.Meta, **_: Any) -> dict[Any, Any]:
        entry = BudgetEntry(
            name,
            int(meta.get("generation") or 0),
            parse_budget(body.get("spec")),
            dict(body.get("status") or {}),
        )
        return {name: entry}


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
    def gpufleet_nodes(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {name: node_entry(name, body)}

    def _gpu_pod(spec: kopf.Spec, **_: Any) -> bool:
        return requests_gpu(spec)

    @kopf.index("", "v1", "pods", when=_gpu_pod, id="gpufleet_pods", registry=registry)
    def gpufleet_pods(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        return {namespace: pod_entry(namespace or "", name, body)}

    @kopf.index("apps", "v1", "deployments", id="gpufleet_deployments", registry=registry)
    def gpufleet_deployments(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        return {
            (namespace, "Deployment", name): workload_entry(
                "Deployment", namespace or "", name, body
            )
        }

    @kopf.index("apps", "v1", "statefulsets", id="gpufleet_statefulsets", registry=registry)
    def gpufleet_statefulsets(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        return {
            (namespace, "StatefulSet", name): workload_entry(
                "StatefulSet", namespace or "", name, body
            )
        }


def _register_fleet(registry: kopf.OperatorRegistry, config: RunConfig, watch: TickWatch) -> None:
    @kopf.timer(
        "",
        "v1",
        "configmaps",
        field="metadata.name",
        value=config.anchor,
        when=lambda namespace, **_: namespace == config.operator_namespace,
        id="fleet",
        interval=config.period_seconds,
        sharp=True,
        registry=registry,
    )
    async def fleet(memo: kopf.Memo, **kwargs: Any) -> None:
        # kopf passes every index by its handler's name.
        gpufleet_pools, gpufleet_providers, gpufleet_budgets, gpufleet_nodes, gpufleet_pods = (
            kwargs[n]
            for n in (
                "gpufleet_pools",
                "gpufleet_providers",
                "gpufleet_budgets",
                "gpufleet_nodes",
                "gpufleet_pods",
            )
        )
        gpufleet_deployments, gpufleet_statefulsets = (
            kwargs["gpufleet_deployments"],
            kwargs["gpufleet_statefulsets"],
        )
        workloads = {
            k: v
            for index in (gpufleet_deployments, gpufleet_statefulsets)
            for k in index
            for v in index[k]
        }
        view = View(
            pools=sorted(_values(gpufleet_pools), key=lambda e: (e.namespace, e.name)),
            providers=sorted(_values(gpufleet_providers), key=lambda e: e.name),
            budgets=sorted(_values(gpufleet_budgets), key=lambda e: e.name),
            nodes=_values(gpufleet_nodes),
            pods={ns: list(gpufleet_pods[ns]) for ns in gpufleet_pods},
            workloads=workloads,
        )
        watch.begin()
        try:
            await memo.fleet.tick(view)
        except Exception:  # the loop never dies: log, count, try again next tick
            memo.fleet.metrics.reconcile_errors.labels("tick").inc()
            log.exception("fleet reconcile failed")
        finally:
            watch.end()

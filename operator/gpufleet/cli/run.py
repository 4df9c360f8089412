"""`gpufleet run`: the operator, against the cluster KUBECONFIG (or in-cluster config) names."""

from __future__ import annotations

import logging
import re
from typing import Annotated

import typer

from gpufleet.reconcilers import selectors
from gpufleet.reconcilers.config import DEFAULT_POWER_QUERY

log = logging.getLogger("gpufleet")
# What a label selector is made of: keys and values, = == != , ! and set syntax.
_SELECTOR = re.compile(r"^[A-Za-z0-9./_\-=!,() ]+$")


def run(
    prometheus_url: Annotated[
        str | None,
        typer.Option(
            envvar="GPUFLEET_PROMETHEUS_URL", help="Prometheus to read queue depth and power from."
        ),
    ] = None,
    period: Annotated[
        float, typer.Option(envvar="GPUFLEET_PERIOD", help="Seconds between fleet reconciles.")
    ] = 1.0,
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            envvar="GPUFLEET_WATCH_NAMESPACES",
            help="Watch only these namespaces (repeat); default: all.",
        ),
    ] = None,
    operator_namespace: Annotated[
        str,
        typer.Option(
            envvar="GPUFLEET_NAMESPACE",
            help="Namespace the operator runs in and keeps its objects in.",
        ),
    ] = "gpufleet-system",
    metrics_port: Annotated[
        int, typer.Option(envvar="GPUFLEET_METRICS_PORT", help="Port of /metrics.")
    ] = 8080,
    metrics_auth: Annotated[
        str,
        typer.Option(
            envvar="GPUFLEET_METRICS_AUTH",
            help="kubernetes: /metrics answers only a bearer token the API server accepts "
            "(TokenReview) whose user may get /metrics (SubjectAccessReview); none: open "
            "to every client that reaches the port (docs/security.md).",
        ),
    ] = "kubernetes",
    health_port: Annotated[
        int, typer.Option(envvar="GPUFLEET_HEALTH_PORT", help="Port of /healthz.")
    ] = 8081,
    bind_address: Annotated[
        str, typer.Option(envvar="GPUFLEET_BIND_ADDRESS", help="Address the two ports listen on.")
    ] = "0.0.0.0",
    log_format: Annotated[
        str, typer.Option(envvar="GPUFLEET_LOG_FORMAT", help="json or plain.")
    ] = "json",
    leader_election: Annotated[
        bool,
        typer.Option(
            "--leader-election/--no-leader-election",
            envvar="GPUFLEET_LEADER_ELECTION",
            help="Run as one of several replicas: only the holder of the Lease --lease-name "
            "in the operator namespace acts, and every write it makes is fenced by its term "
            "(docs/security.md, Leader hand-over). Off: this process acts alone.",
        ),
    ] = False,
    lease_name: Annotated[
        str,
        typer.Option(
            "--lease-name",
            "--peering-name",
            envvar=["GPUFLEET_LEASE_NAME", "GPUFLEET_PEERING_NAME"],
            help="Name of the Lease the replicas share (--peering-name: the former name).",
        ),
    ] = "gpufleet",
    peering_priority: Annotated[
        int | None,
        typer.Option(
            envvar="GPUFLEET_PEERING_PRIORITY",
            hidden=True,
            help="Ignored: the Lease has no priorities (kopf peering had).",
        ),
    ] = None,
    lease_duration: Annotated[
        int,
        typer.Option(
            "--lease-duration",
            "--peering-lifetime",
            envvar=["GPUFLEET_LEASE_DURATION", "GPUFLEET_PEERING_LIFETIME"],
            min=2,
            max=59,
            help="Seconds a silent leader's Lease lasts: a standby takes over after about "
            "this long; the leader stops writing after two thirds of it without a renewal "
            "(--peering-lifetime: the former name).",
        ),
    ] = 10,
    gateway_config_map: Annotated[
        str | None,
        typer.Option(
            envvar="GPUFLEET_GATEWAY_CONFIG_MAP",
            help="Publish every pool's sustainable rate, by tier, in this ConfigMap of the "
            "operator namespace, one `<namespace>.<name>.json` key per pool, for a gateway "
            "to read (docs/gateway.md). Default: not published.",
        ),
    ] = None,
    power_query: Annotated[
        str,
        typer.Option(
            envvar="GPUFLEET_POWER_QUERY",
            help="PromQL giving each pod's peak draw per GPU in watts, labelled namespace and "
            "pod (docs/metrics.md). PowerBudgets count a pool's busy GPUs at its pods' "
            "measured draw, else at the node pool's wattsPerGpu. Empty: always the latter.",
        ),
    ] = DEFAULT_POWER_QUERY,
    confine_queries: Annotated[
        bool,
        typer.Option(
            "--confine-queries/--no-confine-queries",
            envvar="GPUFLEET_CONFINE_QUERIES",
            help="Each ServingPool's PromQL reads only series labelled with the pool's "
            "namespace (--query-namespace-label): a selector without that label gets it, one "
            "asking for another namespace (or a regex, !=) is QueryOutsideNamespace "
            "(docs/metrics.md). PowerBudget queries are sent as written.",
        ),
    ] = False,
    query_namespace_label: Annotated[
        str,
        typer.Option(
            envvar="GPUFLEET_QUERY_NAMESPACE_LABEL",
            help="The label that carries a series' namespace, for --confine-queries "
            "(kube-state-metrics, DCGM: namespace; some setups: exported_namespace).",
        ),
    ] = "namespace",
    pod_label_selector: Annotated[
        str,
        typer.Option(
            envvar="GPUFLEET_POD_LABEL_SELECTOR",
            help="Watch only the pods with these labels, filtered by the API server (e.g. "
            "gpufleet.io/serving=true): on a cluster of many pods the operator then receives "
            "and keeps only its pools' pods. Every pooled workload's pod template must carry "
            "them; a pool whose template does not scales nothing and says PodsNotWatched "
            "(docs/install.md). Empty: every pod (GPU pods are kept).",
        ),
    ] = "",
    metrics_refresh_seconds: Annotated[
        float,
        typer.Option(
            envvar="GPUFLEET_METRICS_REFRESH_SECONDS",
            min=0,
            max=60,
            help="Seconds each Prometheus answer (pools' queries, budgets' measurements, the "
            "power query) is kept before its query is asked again, for large fleets: Prometheus "
            "scrapes every 15 to 60 s, and asking every second reads the same samples again, at "
            "1,000 pools a quarter of a CPU in Prometheus. A new sample, or a series that "
            "vanished, then reaches the plan up to this much later. Queries come due spread over "
            "the ticks; a failed one is asked next tick. 0: every query every tick "
            "(docs/metrics.md).",
        ),
    ] = 0.0,
    remote_read_seconds: Annotated[
        float,
        typer.Option(
            envvar="GPUFLEET_REMOTE_READ_SECONDS",
            min=0,
            max=300,
            help="Seconds a remote cluster's burst copies and node pools are reused for before "
            "they are read again; a write there by the operator is followed by a fresh read. "
            "0: read every tick (docs/burst.md).",
        ),
    ] = 10.0,
    allow_private_remote_servers: Annotated[
        bool,
        typer.Option(
            "--allow-private-remote-servers",
            envvar="GPUFLEET_ALLOW_PRIVATE_REMOTE_SERVERS",
            help="Let CloudProviders' kubeconfigs (kubeconfigSecretRef) name servers on the "
            "operator's own host (loopback), link-local ones (cloud metadata) and in-cluster "
            "names (kubernetes.default, *.svc, single-label names). For test beds; default "
            "off (docs/security.md).",
        ),
    ] = False,
    installation: Annotated[
        str | None,
        typer.Option(
            envvar="GPUFLEET_INSTALLATION",
            help="This installation's id, labelled on everything it makes in remote clusters "
            "(gpufleet.io/installation): it lists, resizes and deletes only what carries it, so "
            "installations sharing a remote cluster leave each other's copies alone. Hashed to a "
            "label value if it is none. Never change it while copies run (they would be "
            "orphaned). Default: <operator namespace>.<cluster id> (the head of the kube-system "
            "namespace's uid).",
        ),
    ] = None,
    provider_deletion_timeout: Annotated[
        float,
        typer.Option(
            envvar="GPUFLEET_PROVIDER_DELETION_TIMEOUT",
            min=0,
            help="Seconds a deleted CloudProvider with a remote cluster waits for its copies "
            "there to go before its finalizer is removed anyway, with a Warning Event naming "
            "what was left (docs/burst.md).",
        ),
    ] = 600.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the operator: watch the fleet, plan every period, scale pools and node pools."""
    import kopf
    from kubernetes import config as kube_config
    from kubernetes.client import ApiClient, Configuration

    from gpufleet.metrics.auth import AUTH_MODES, CachedReviewer, KubeReviewer, serve_metrics
    from gpufleet.metrics.exporter import OperatorMetrics
    from gpufleet.reconcilers import kopf_readiness
    from gpufleet.reconcilers.config import RunConfig
    from gpufleet.reconcilers.handlers import Election, identity, register
    from gpufleet.reconcilers.threads import size_connection_pool

    if log_format not in ("json", "plain"):
        raise typer.BadParameter("log format must be json or plain")
    if metrics_auth not in AUTH_MODES:
        raise typer.BadParameter(f"metrics auth must be one of {', '.join(AUTH_MODES)}")
    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", query_namespace_label):
        raise typer.BadParameter("the query namespace label must be a Prometheus label name")
    if installation is not None and not installation.strip():
        raise typer.BadParameter("the installation id must not be empty")
    if gateway_config_map and not re.fullmatch(
        r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", gateway_config_map
    ):
        raise typer.BadParameter("gateway ConfigMap name must be a DNS subdomain name")
    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if not verbose:
        # kopf logs every timer run at INFO: once a second is noise, not news.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        kube_config.load_kube_config()  # type: ignore[no-untyped-call]
    # Every ApiClient() below copies the default: as many connections as I/O threads.
    Configuration.set_default(size_connection_pool(Configuration.get_default_copy()))
    settings = RunConfig(
        prometheus_url=prometheus_url,
        period_seconds=period,
        namespaces=tuple(namespace or ()),
        operator_namespace=operator_namespace,
        # The simulated cloud keeps its state beside the operator, where the chart grants it.
        simulated_namespace=operator_namespace,
        metrics_port=metrics_port,
        health_port=health_port,
        bind_address=bind_address,
        gateway_config_map=gateway_config_map or None,
        allow_private_remote_servers=allow_private_remote_servers,
        installation=installation or "",  # "": the operator namespace and the cluster's id
        provider_deletion_timeout_seconds=provider_deletion_timeout,
        power_query=power_query.strip() or None,
        confine_queries=confine_queries,
        query_namespace_label=query_namespace_label,
        pod_label_selector=_pod_selector(pod_label_selector),
        remote_read_seconds=remote_read_seconds,
        metrics_refresh_seconds=metrics_refresh_seconds,
        freeze_heap=True,
    )
    if settings.gateway_config_map == settings.anchor:
        raise typer.BadParameter(f"the gateway ConfigMap cannot be the anchor {settings.anchor}")
    metrics = OperatorMetrics()
    # Its own ApiClient: the reviews run in the server's threads, apart from kopf's loop.
    reviewer = CachedReviewer(KubeReviewer(ApiClient())) if metrics_auth == "kubernetes" else None
    serve_metrics(metrics.registry, metrics_port, bind_address, reviewer)
    if peering_priority is not None:
        log.warning("--peering-priority is ignored: leader election uses a Lease now")
    election = Election(lease_name, lease_duration) if leader_election else None
    registry = kopf.OperatorRegistry()
    register(registry, settings, ApiClient(), metrics, election)
    kopf_readiness.install()  # a start-up gate linear in the watched objects
    watched = [*settings.namespaces, operator_namespace] if settings.namespaces else []
    log.info(
        "starting",
        extra={
            "prometheus": prometheus_url,
            "period": period,
            "namespaces": watched or "all",
            "identity": identity(),
            "lease": None if election is None else election.name,
            "gatewayConfigMap": settings.gateway_config_map,
            "allowPrivateRemoteServers": settings.allow_private_remote_servers,
            "installation": settings.installation,
            "confineQueries": settings.query_namespace_label if confine_queries else None,
            "podLabelSelector": settings.pod_label_selector,
        },
    )
    kopf.run(
        registry=registry,
        clusterwide=not watched,
        namespaces=watched,
        # Never kopf peering: the Lease (reconcilers/leader.py) elects the leader.
        standalone=True,
        liveness_endpoint=f"http://{bind_address}:{health_port}/healthz",
    )


def _pod_selector(text: str) -> str | None:
    """The selector as the API server takes it, or a clear error before anything starts (the
    API server would refuse the watch, and the operator would wait on it forever)."""
    text = text.strip()
    if not text:
        return None
    parsed = selectors.parse(text).requirements
    if not parsed or not all(r.key for r in parsed) or not _SELECTOR.match(text):
        raise typer.BadParameter(
            f"--pod-label-selector {text!r} is not a label selector (e.g. gpufleet.io/serving=true)"
        )
    return text

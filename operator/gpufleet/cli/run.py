"""`gpufleet run`: the operator, against the cluster KUBECONFIG (or in-cluster config) names."""

from __future__ import annotations

import logging
import re
from typing import Annotated

import typer

log = logging.getLogger("gpufleet")


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
            help="Run as one of several replicas: only the elected leader acts (kopf peering "
            "in the ClusterKopfPeering --peering-name, whose CRD the chart installs). Off: "
            "this process acts alone (standalone).",
        ),
    ] = False,
    peering_name: Annotated[
        str,
        typer.Option(
            envvar="GPUFLEET_PEERING_NAME",
            help="Name of the ClusterKopfPeering the replicas share.",
        ),
    ] = "gpufleet",
    peering_priority: Annotated[
        int | None,
        typer.Option(
            envvar="GPUFLEET_PEERING_PRIORITY",
            help="Leader priority (the highest live one leads; must differ between replicas, "
            "equal ones pause each other). Default: earlier-started replicas rank higher, "
            "so a restarted replica joins as a standby.",
        ),
    ] = None,
    peering_lifetime: Annotated[
        int,
        typer.Option(
            envvar="GPUFLEET_PEERING_LIFETIME",
            min=2,
            max=59,
            help="Seconds after its last keep-alive a silent leader is presumed dead "
            "(a standby takes over after about this long).",
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the operator: watch the fleet, plan every period, scale pools and node pools."""
    import kopf
    from kubernetes import config as kube_config
    from kubernetes.client import ApiClient
    from prometheus_client import start_http_server

    from gpufleet.metrics.exporter import OperatorMetrics
    from gpufleet.reconcilers.config import RunConfig
    from gpufleet.reconcilers.handlers import Peering, identity, register

    if log_format not in ("json", "plain"):
        raise typer.BadParameter("log format must be json or plain")
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
    )
    if settings.gateway_config_map == settings.anchor:
        raise typer.BadParameter(f"the gateway ConfigMap cannot be the anchor {settings.anchor}")
    metrics = OperatorMetrics()
    start_http_server(metrics_port, addr=bind_address, registry=metrics.registry)
    peering = (
        Peering(
            peering_name,
            default_priority() if peering_priority is None else peering_priority,
            peering_lifetime,
        )
        if leader_election
        else None
    )
    registry = kopf.OperatorRegistry()
    register(registry, settings, ApiClient(), metrics, peering)
    watched = [*settings.namespaces, operator_namespace] if settings.namespaces else []
    log.info(
        "starting",
        extra={
            "prometheus": prometheus_url,
            "period": period,
            "namespaces": watched or "all",
            "identity": identity(),
            "peering": None if peering is None else peering.name,
            "priority": None if peering is None else peering.priority,
            "gatewayConfigMap": settings.gateway_config_map,
        },
    )
    kopf.run(
        registry=registry,
        clusterwide=not watched,
        namespaces=watched,
        standalone=peering is None,
        liveness_endpoint=f"http://{bind_address}:{health_port}/healthz",
    )


def default_priority() -> int:
    """Earlier start, higher priority (a replica that restarts does not take the lead back
    from the one that took over); a random tail keeps two starts in one second apart."""
    import random
    import time

    return (4_000_000_000 - int(time.time())) * 1_000_000 + random.SystemRandom().randrange(
        1_000_000
    )

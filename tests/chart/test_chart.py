"""The chart without a cluster: lint, CRDs in sync, documented and schema-checked values,
secure defaults, optional monitoring objects, and a dashboard that queries real metrics."""

from __future__ import annotations

import filecmp
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.metrics.exporter import OperatorMetrics

from .helm import CHART, MONITORING, REPO, helm, of_kind, render, render_text, template_args
from .values_table import CHART as TABLE_CHART
from .values_table import documented_keys, leaves, readme_with_table


def _deployment(values: dict[str, Any] | None = None) -> dict[str, Any]:
    (deployment,) = of_kind(render(values), "Deployment")
    return deployment


def test_helm_lint_passes_strict() -> None:
    helm("lint", str(CHART), "--strict")


def test_chart_crds_are_identical_to_the_generated_crds() -> None:
    names = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == names
    _, mismatch, errors = filecmp.cmpfiles(REPO / "crds", CHART / "crds", names, shallow=False)
    assert (mismatch, errors) == ([], []), "copy crds/*.yaml to charts/gpufleet/crds/"


def test_every_value_has_a_comment() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = documented_keys(text)
    values = leaves(yaml.safe_load(text))
    # A key is covered when it or a parent map is documented.
    undocumented = [
        key
        for key in values
        if not any(key == d or key.startswith(f"{d}.") for d in documented)
        and not isinstance(values[key], dict)
    ]
    assert undocumented == []


def test_readme_values_table_is_up_to_date() -> None:
    readme = (TABLE_CHART / "README.md").read_text()
    assert readme == readme_with_table(readme), "run python tests/chart/values_table.py --write"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"unknownKey": 1}, "additional properties 'unknownKey' not allowed"),
        ({"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
        ({"operator": {"prometheusUrl": "prometheus:9090"}}, "/operator/prometheusUrl"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"rbac": {"secretNamespaces": ["Not_A_Namespace"]}}, "/rbac/secretNamespaces/0"),
        ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
    ],
)
def test_schema_rejects_a_wrong_value(values: dict[str, Any], message: str) -> None:
    args = template_args()
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    result = helm(*args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_more_than_one_replica_without_leader_election_is_refused() -> None:
    args = template_args({"leaderElection.enabled": False})
    result = helm(*args, check=False)
    assert result.returncode != 0
    assert "needs leaderElection.enabled" in result.stderr


def test_deployment_defaults_are_two_hardened_replicas_with_probes() -> None:
    deployment = _deployment()
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert container["args"][:2] == ["run", "--operator-namespace=gpufleet-system"]


def test_operator_values_become_gpufleet_run_flags() -> None:
    args = _deployment(
        {
            "operator.prometheusUrl": "http://prometheus.monitoring:9090",
            "operator.watchNamespaces": ["team-a", "team-b"],
            "operator.periodSeconds": 2,
            "operator.verbose": True,
            "image.digest": "sha256:" + "a" * 64,
        }
    )["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--prometheus-url=http://prometheus.monitoring:9090" in args
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--period=2" in args and "--verbose" in args


def test_image_digest_wins_over_the_tag() -> None:
    digest = "sha256:" + "b" * 64
    image = _deployment({"image.digest": digest, "image.tag": "9.9.9"})["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert image == f"ghcr.io/gpufleet/gpufleet@{digest}"


def test_pdb_guards_the_replicas_and_goes_with_a_single_replica() -> None:
    (pdb,) = of_kind(render(), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert of_kind(render({"replicaCount": 1}), "PodDisruptionBudget") == []


def test_monitoring_objects_only_when_the_prometheus_operator_crds_are_served() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    docs = render(api_versions=MONITORING)
    (monitor,) = of_kind(docs, "ServiceMonitor")
    (service,) = of_kind(docs, "Service")
    labels = monitor["spec"]["selector"]["matchLabels"]
    assert labels.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_prometheus_rule_alerts_on_the_four_conditions_with_real_metrics() -> None:
    (rule,) = of_kind(render(api_versions=MONITORING), "PrometheusRule")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "GpufleetMetricsUnavailable",
        "GpufleetPowerCapReached",
        "GpufleetBurstActiveLong",
        "GpufleetReconcileErrors",
    } <= set(alerts)
    for expr in alerts.values():
        assert _metric_names(expr) <= _exported_metrics() | {"up"}, expr


def _exported_metrics() -> set[str]:
    names = set()
    for family in OperatorMetrics().registry.collect():
        names |= {family.name, f"{family.name}_total", f"{family.name}_bucket"}
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(gpufleet_\w+|up)\b(?=\s*[{\[)=>]|\s*$)", expr))


def test_dashboard_has_the_panels_and_queries_only_exported_metrics() -> None:
    (config_map,) = [
        d for d in of_kind(render(), "ConfigMap") if "dashboard" in d["metadata"]["name"]
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["gpufleet.json"])
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in ("Pools", "Replicas per provider", "GPU nodes per node pool", "Queue depth"):
        assert wanted in titles
    assert "Power against caps (kW)" in titles and "Decisions by reason" in titles
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set().union(*(set(re.findall(r"gpufleet_\w+", e)) for e in exprs))
    assert used <= _exported_metrics()


def test_network_policy_is_optional_and_limits_ingress_to_the_two_ports() -> None:
    # On by default is the ingress-only one (tests/security/test_metrics_exposure.py).
    assert of_kind(render({"networkPolicy.ingressOnly": False}), "NetworkPolicy") == []
    (policy,) = of_kind(
        render({"networkPolicy.enabled": True, "networkPolicy.apiServerCidrs": ["10.0.0.1/32"]}),
        "NetworkPolicy",
    )
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {"metrics", "health"}
    assert {"ipBlock": {"cidr": "10.0.0.1/32"}} in policy["spec"]["egress"][1]["to"]


def test_every_object_is_labelled_as_part_of_the_release() -> None:
    for doc in render(api_versions=MONITORING):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "gpufleet", doc["kind"]
        assert labels["app.kubernetes.io/part-of"] == "gpufleet", doc["kind"]


def test_rendered_text_has_no_kopf_or_wildcard_leftovers() -> None:
    text = render_text(api_versions=MONITORING)
    assert "kopf.zalando.org" not in text
    assert "'*'" not in text and '"*"' not in text


def test_dashboard_file_is_valid_json() -> None:
    json.loads(Path(CHART / "dashboards" / "gpufleet.json").read_text())


def test_leader_election_passes_the_flag_and_the_pod_name_and_installs_no_crd() -> None:
    container = _deployment({})["spec"]["template"]["spec"]["containers"][0]
    assert "--leader-election" in container["args"]
    assert "--lease-duration=10" in container["args"]
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        container["env"]
    )
    assert not [d for d in render() if d["kind"] == "CustomResourceDefinition"]
    single = render({"leaderElection.enabled": False, "replicaCount": 1})
    assert not [d for d in single if d["kind"] == "CustomResourceDefinition"]
    args = next(d for d in single if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--leader-election" not in args

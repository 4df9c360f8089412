"""Shared by the test-bed benchmarks (reaction.py, footprint.py): the test bed, the fleet
manifests, the operator under its own identity, and counters read from the API server.

Counting the operator's API calls: `apiserver_request_total` has no user label, and the
test bed's operator shares the admin kubeconfig with kubectl. So the operator gets a client
certificate of its own (user `gpufleet-bench-operator`, bound to cluster-admin), and two
FlowSchemas match that user, one for write verbs and one for the rest. API Priority and
Fairness then counts its requests by schema in
`apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}`: exact, per user, and
with no change to the API server's flags.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import ssl
import sys
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "e2e") not in sys.path:  # gpufleet_testbed without an install
    sys.path.insert(0, str(REPO / "e2e"))

from gpufleet_testbed import fleets, polling  # noqa: E402
from gpufleet_testbed import testbed as tb  # noqa: E402
from gpufleet_testbed.kubectl import Kubectl  # noqa: E402
from gpufleet_testbed.operator import OperatorProcess  # noqa: E402

OPERATOR_USER = "gpufleet-bench-operator"
WRITES_SCHEMA = "gpufleet-bench-operator-writes"
READS_SCHEMA = "gpufleet-bench-operator-reads"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
READ_VERBS = ("get", "list", "watch")
PROVIDER = "bench-cloud"
SITE = "bench-site"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def until(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    return polling.until(probe, timeout=timeout, interval=interval, what=what)


# -- the test bed ----------------------------------------------------------------------------


def start_bed(name: str) -> tb.Testbed:
    return tb.up(name, gpu_nodes=0)


def stop_bed(name: str) -> None:
    tb.down(name, quiet=True)


def install_crds(kubectl: Kubectl) -> None:
    fleets.install_crds(kubectl)


def apply_list(kubectl: Kubectl, items: list[dict[str, Any]], batch: int = 500) -> None:
    """Server-side apply in batches: one `kubectl apply` of a List per batch."""
    for start in range(0, len(items), batch):
        fleets.apply(kubectl, items[start:][:batch], field_manager="gpufleet-bench")


# -- the fleet -------------------------------------------------------------------------------


def provider(max_nodes: int, quota_gpus: int, boot_seconds: int = 1) -> dict[str, Any]:
    h100 = fleets.node_pool(
        "h100",
        gpu_type="H100",
        site=SITE,
        max_nodes=max_nodes,
        boot_seconds=boot_seconds,
        watts_per_gpu=300,
        idle_watts_per_gpu=50,
        node_overhead_watts=500,
    )
    return fleets.cloud_provider(
        PROVIDER, legal_entity="Bench Cloud GmbH", gpu_quota=quota_gpus, node_pools=[h100]
    )


def power_budget(cap_kilowatts: int) -> dict[str, Any]:
    return fleets.power_budget(SITE, cap_kilowatts=cap_kilowatts)


namespace = fleets.namespace
queue_query = fleets.queue_query


def pool(ns: str, name: str, target: str, max_replicas: int) -> dict[str, Any]:
    """A pool that reacts in one decision: no scale-down window, unbounded scale-up rate."""
    at_once = [{"type": "Pods", "value": 1000, "periodSeconds": 1}]
    behavior = {
        direction: {"stabilizationWindowSeconds": 0, "policies": at_once}
        for direction in ("scaleUp", "scaleDown")
    }
    return fleets.serving_pool(
        ns,
        name,
        target=target,
        gpu_types=["H100"],
        max_replicas=max_replicas,
        target_per_replica=1,
        behavior=behavior,
    )


def deployment(ns: str, name: str) -> dict[str, Any]:
    """One GPU per pod, only on the simulated cloud's (kwok) nodes."""
    return fleets.deployment(ns, name, node_selector={fleets.PROVIDER_LABEL: PROVIDER})


def many_pools(
    count: int, prefix: str = "bench-fp", per_namespace: int = 100
) -> tuple[list[tuple[str, str]], list[dict[str, Any]], list[dict[str, Any]]]:
    """`count` pools, each with its own Deployment, `per_namespace` to a namespace:
    (namespace, name) pairs, the Deployments and pools, and the namespaces."""
    names = [(f"{prefix}-{i // per_namespace:02d}", f"pool-{i:04d}") for i in range(count)]
    objects = [deployment(ns, name) for ns, name in names]
    objects += [pool(ns, name, name, max_replicas=4) for ns, name in names]
    namespaces = [namespace(ns) for ns in sorted({ns for ns, _ in names})]
    return names, objects, namespaces


# -- the operator under its own identity -------------------------------------------------------


def _operator_kubeconfig(bed: tb.Testbed) -> Path:
    """A client certificate for OPERATOR_USER, signed by the test bed's CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki = bed.directory / "pki"
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, OPERATOR_USER)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = pki / "bench-operator.crt", pki / "bench-operator.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    config = json.loads(bed.kubeconfig.read_text())
    config["users"][0]["user"] = {
        "client-certificate": str(cert_path),
        "client-key": str(key_path),
    }
    path = bed.directory / "bench-operator.kubeconfig"
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


def flow_schema(name: str, precedence: int, verbs: Iterable[str]) -> dict[str, Any]:
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            # Before every built-in schema but `exempt` (system:masters, which this user is not).
            "matchingPrecedence": precedence,
            "priorityLevelConfiguration": {"name": "workload-high"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [{"kind": "User", "user": {"name": OPERATOR_USER}}],
                    "resourceRules": [
                        {
                            "verbs": list(verbs),
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                    "nonResourceRules": [{"verbs": list(verbs), "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


def prepare_operator_identity(bed: tb.Testbed, kubectl: Kubectl) -> Path:
    """The operator's own user, cluster-admin, counted by two FlowSchemas. Returns its
    kubeconfig."""
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": OPERATOR_USER},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "cluster-admin",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": OPERATOR_USER}
        ],
    }
    apply_list(
        kubectl,
        [
            binding,
            flow_schema(WRITES_SCHEMA, 100, WRITE_VERBS),
            flow_schema(READS_SCHEMA, 101, READ_VERBS),
        ],
    )
    return _operator_kubeconfig(bed)


def start_operator(
    bed: tb.Testbed,
    kubeconfig: Path,
    log_name: str,
    period: float = 1.0,
    extra_args: tuple[str, ...] = (),
) -> OperatorProcess:
    return OperatorProcess(
        bed,
        bed.directory / "logs" / log_name,
        period=period,
        env={"KUBECONFIG": str(kubeconfig)},
        extra_args=extra_args,
    ).start(timeout=120)


# -- reading metrics ----------------------------------------------------------------------------


def apiserver_metrics(bed: tb.Testbed) -> str:
    pki = bed.directory / "pki"
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    with urllib.request.urlopen(f"{bed.apiserver_url}/metrics", context=context, timeout=10) as r:
        return str(r.read().decode())


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` in a Prometheus text exposition."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            found.append((dict(_LABEL.findall(match.group(2) or "")), float(match.group(3))))
    return found


def operator_requests(bed: tb.Testbed) -> dict[str, float]:
    """The operator's API requests so far, by FlowSchema: {'writes': n, 'reads': n}."""
    text = apiserver_metrics(bed)
    counts = {"writes": 0.0, "reads": 0.0}
    for labels, value in samples(text, "apiserver_flowcontrol_dispatched_requests_total"):
        if labels.get("flow_schema") == WRITES_SCHEMA:
            counts["writes"] += value
        elif labels.get("flow_schema") == READS_SCHEMA:
            counts["reads"] += value
    return counts


def write_breakdown(bed: tb.Testbed) -> dict[str, float]:
    """API-server-wide writes by resource (all clients), to tell what was written."""
    text = apiserver_metrics(bed)
    out: dict[str, float] = {}
    for labels, value in samples(text, "apiserver_request_total"):
        if labels.get("verb") in ("POST", "PUT", "PATCH", "DELETE", "APPLY"):
            resource = labels.get("resource", "")
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            key = f"{labels['verb']} {resource}"
            out[key] = out.get(key, 0.0) + value
    return out


def histogram(text: str, name: str) -> dict[str, float]:
    """Sum, count and buckets of an unlabelled histogram, from /metrics text."""
    out: dict[str, float] = {}
    for labels, value in samples(text, f"{name}_bucket"):
        out[f"le={labels.get('le')}"] = value
    for suffix in ("sum", "count"):
        for _, value in samples(text, f"{name}_{suffix}"):
            out[suffix] = value
    return out


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (no interpolation), as a latency report should be."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]

"""Command lines and readiness probes of the control-plane components.

Flags are few but real: TLS everywhere the API server is involved, RBAC and
the Node authorizer, default admission plugins, bound service-account tokens.
etcd alone speaks plain HTTP, on loopback, as in envtest.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path

from gpufleet_testbed import probe
from gpufleet_testbed.binaries import Binaries
from gpufleet_testbed.nodes import KWOK_SELECTOR
from gpufleet_testbed.pki import FRONT_PROXY_CLIENT, Pki

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
# Both control planes may share this issuer: each verifies with its own key.
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def from_list(cls, ports: list[int]) -> Ports:
        return cls(*ports)


@dataclass(frozen=True)
class Kubeconfigs:
    admin: Path
    controller_manager: Path
    scheduler: Path
    kwok: Path


def etcd(bins: Binaries, data_dir: Path, ports: Ports, name: str) -> list[str]:
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    client = f"http://127.0.0.1:{ports.etcd_client}"
    return [
        str(bins.etcd),
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={name}={peer}",
        "--initial-cluster-state=new",
        # Throwaway data: fsync only costs time on a shared 2-core machine.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver(bins: Binaries, pki: Pki, ports: Ports, cert_dir: Path) -> list[str]:
    return [
        str(bins.kube_apiserver),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--cert-dir={cert_dir}",
        f"--tls-cert-file={pki.apiserver.cert}",
        f"--tls-private-key-file={pki.apiserver.key}",
        f"--client-ca-file={pki.ca.cert}",
        "--authorization-mode=Node,RBAC",
        f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
        f"--proxy-client-key-file={pki.front_proxy_client.key}",
        # The default plugins (NamespaceLifecycle, ServiceAccount, quotas,
        # webhooks, ...) stay on; NodeRestriction is the one off by default.
        "--enable-admission-plugins=NodeRestriction",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # The "kubernetes" Service's endpoints may not be loopback addresses,
        # and nothing in the test bed dials the API server through a Service.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        "--profiling=false",
    ]


def controller_manager(
    bins: Binaries, pki: Pki, ports: Ports, kubeconfig: Path, cert_dir: Path
) -> list[str]:
    return [
        str(bins.kube_controller_manager),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.controller_manager}",
        f"--cert-dir={cert_dir}",
        "--controllers=*",
        # Each controller acts as its own service account, as in a real cluster.
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca.cert}",
        f"--cluster-signing-cert-file={pki.ca.cert}",
        f"--cluster-signing-key-file={pki.ca.key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def scheduler(bins: Binaries, ports: Ports, kubeconfig: Path, cert_dir: Path) -> list[str]:
    return [
        str(bins.kube_scheduler),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.scheduler}",
        f"--cert-dir={cert_dir}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def kwok(bins: Binaries, ports: Ports, kubeconfig: Path) -> list[str]:
    return [
        str(bins.kwok),
        f"--kubeconfig={kubeconfig}",
        f"--config={STAGES_FILE}",
        f"--manage-nodes-with-annotation-selector={KWOK_SELECTOR}",
        f"--server-address=127.0.0.1:{ports.kwok}",
        "--node-ip=10.240.0.1",
        f"--cidr={POD_CIDR}",
        "--node-lease-duration-seconds=40",
    ]


def etcd_healthy(ports: Ports) -> bool:
    _, body = probe.get(f"http://127.0.0.1:{ports.etcd_client}/health")
    return bool(json.loads(body).get("health") == "true")


def admin_tls(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    context.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
    return context


def apiserver_ready(pki: Pki, ports: Ports) -> bool:
    status, body = probe.get(f"https://127.0.0.1:{ports.apiserver}/readyz", admin_tls(pki))
    return status == 200 and body.strip() == "ok"


def secure_healthz(port: int) -> bool:
    # Controller manager and scheduler serve self-signed certificates of their
    # own, and /healthz is open to anyone: nothing to verify here.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    status, body = probe.get(f"https://127.0.0.1:{port}/healthz", context)
    return status == 200 and body.strip() == "ok"

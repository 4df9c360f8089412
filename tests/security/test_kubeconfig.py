"""A CloudProvider's kubeconfig Secret (`cluster.kubeconfigSecretRef`) cannot turn the
operator against its own host or cluster: only an allow-list of fields is accepted (https
server, embedded CA, a token or an embedded client certificate), each other field is refused
by name without quoting its data, servers on the operator's host, link-local (cloud
metadata) or in-cluster names are refused unless the operator runs with
--allow-private-remote-servers, the check holds for the address each connection reaches
(a name that resolves there later is refused too), and the client key never stays on disk."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes.client import ApiClient, CoreV1Api

from chart.helm import of_kind, render
from gpufleet.api import parse_provider
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.reconcilers.burst import client as remote_client
from gpufleet.reconcilers.burst.allowlist import KubeconfigRefused, check_kubeconfig
from gpufleet.reconcilers.burst.client import RefusedPeer
from gpufleet.reconcilers.burst.kubeconfig import Connections, client_from
from gpufleet.reconcilers.threads import IO_THREADS
from gpufleet_testbed import fleets

NAME = "cluster.example.test"  # the remote server's name in the tests' fake DNS
TOKEN = "planted-token-4f1c9a"


# --- certificates -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _issue(
    subject: str, issuer: Pem | None, *, ca: bool = False, names: tuple[str, ...] = ()
) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    signer_key = key if issuer is None else serialization.load_pem_private_key(issuer.key, None)
    issuer_name = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        if issuer is None
        else x509.load_pem_x509_certificate(issuer.cert).subject
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    assert isinstance(signer_key, ec.EllipticCurvePrivateKey)
    cert = builder.sign(signer_key, hashes.SHA256())
    return Pem(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _host_address() -> str | None:
    """A non-loopback address of this machine (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2: any routed address
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


HOST_ADDRESS = _host_address()


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = _issue("test-ca", None, ca=True)
    names = (NAME, "127.0.0.1", *((HOST_ADDRESS,) if HOST_ADDRESS else ()))
    return Pki(ca, _issue("server", ca, names=names), _issue("operator", ca))


# --- kubeconfigs --------------------------------------------------------------------------


def _kubeconfig(
    server: str = f"https://{NAME}:6443",
    cluster: dict[str, Any] | None = None,
    user: dict[str, Any] | None = None,
    ca: bytes = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    **top: Any,
) -> dict[str, Any]:
    """kubectl's shape (`kubectl config view --raw --flatten --minify`): one cluster, user
    and context."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": "remote",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": _b64(ca),
                    **(cluster or {}),
                },
            }
        ],
        "users": [{"name": "gpufleet", "user": user if user is not None else {"token": TOKEN}}],
        "contexts": [{"name": "remote", "context": {"cluster": "remote", "user": "gpufleet"}}],
        "current-context": "remote",
        **top,
    }


def _without(config: dict[str, Any], section: str, key: str) -> dict[str, Any]:
    del config[section][0][section[:-1]][key]
    return config


REFUSED = [
    pytest.param(
        _kubeconfig(cluster={"insecure-skip-tls-verify": True}),
        "clusters[0].cluster.insecure-skip-tls-verify",
        id="insecure-skip-tls-verify",
    ),
    pytest.param(
        _kubeconfig(cluster={"proxy-url": "http://10.0.0.9:3128"}),
        "clusters[0].cluster.proxy-url",
        id="proxy-url",
    ),
    pytest.param(
        _kubeconfig(server=f"http://{NAME}:8080"), "clusters[0].cluster.server", id="http-server"
    ),
    pytest.param(
        _kubeconfig(server=f"https://admin:hunter2@{NAME}"),
        "clusters[0].cluster.server",
        id="server-with-userinfo",
    ),
    pytest.param(
        _kubeconfig(server=f"https://{NAME}/?redirect=1"),
        "clusters[0].cluster.server",
        id="server-with-query",
    ),
    pytest.param(
        _kubeconfig(server="https://127.0.0.1\t.example.com:6443"),
        "clusters[0].cluster.server",
        id="server-with-tab",
    ),
    pytest.param(
        _kubeconfig(server="https://127.0.0.1\\.example.com:6443"),
        "clusters[0].cluster.server",
        id="server-with-backslash",
    ),
    pytest.param(
        _without(_kubeconfig(), "clusters", "certificate-authority-data"),
        "clusters[0].cluster.certificate-authority-data",
        id="no-embedded-ca",
    ),
    pytest.param(
        _kubeconfig(cluster={"certificate-authority": "/etc/ssl/certs/ca.pem"}),
        "clusters[0].cluster.certificate-authority",
        id="ca-file",
    ),
    pytest.param(
        _kubeconfig(cluster={"extensions": [{"name": "x", "extension": {}}]}),
        "clusters[0].cluster.extensions",
        id="unknown-cluster-field",
    ),
    pytest.param(
        _kubeconfig(user={"username": "admin", "password": "hunter2"}),
        "users[0].user.username",
        id="basic-auth",
    ),
    pytest.param(
        _kubeconfig(user={"exec": {"command": "sh", "args": ["-c", "id"]}}),
        "users[0].user.exec",
        id="exec",
    ),
    pytest.param(
        _kubeconfig(user={"auth-provider": {"name": "gcp"}}),
        "users[0].user.auth-provider",
        id="auth-provider",
    ),
    pytest.param(
        _kubeconfig(user={"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}),
        "users[0].user.tokenFile",
        id="tokenFile",
    ),
    pytest.param(
        _kubeconfig(user={"token-file": "/var/run/secrets/kubernetes.io/serviceaccount/token"}),
        "users[0].user.token-file",
        id="token-file",
    ),
    pytest.param(
        _kubeconfig(user={"client-certificate": "/tmp/c.pem", "client-key": "/tmp/k.pem"}),
        "users[0].user.client-certificate",
        id="client-certificate-files",
    ),
    pytest.param(
        _kubeconfig(user={"token": TOKEN, "as": "system:admin"}),
        "users[0].user.as",
        id="impersonation",
    ),
    pytest.param(_kubeconfig(user={}), "users[0].user", id="no-credentials"),
    pytest.param(
        _kubeconfig(user={"client-certificate-data": _b64(b"c")}),
        "users[0].user",
        id="certificate-without-key",
    ),
    pytest.param(
        _kubeconfig(user={"token": "t\r\nX-Injected: 1"}),
        "users[0].user.token",
        id="token-with-newline",
    ),
    pytest.param(
        _kubeconfig(extensions=[{"name": "x", "extension": {}}]), "extensions", id="unknown-top"
    ),
    pytest.param(
        _kubeconfig(preferences={"colors": True}), "preferences", id="non-empty-preferences"
    ),
    pytest.param(
        {**_kubeconfig(), "current-context": "elsewhere"},
        "current-context",
        id="unknown-current-context",
    ),
    pytest.param(
        {**_kubeconfig(), "current-context": ["remote"]},
        "current-context",
        id="current-context-not-a-name",
    ),
]


@pytest.mark.parametrize(("config", "field_path"), REFUSED)
def test_fields_outside_the_allow_list_are_refused_by_name(
    config: dict[str, Any], field_path: str
) -> None:
    with pytest.raises(KubeconfigRefused) as refused:
        check_kubeconfig(config)
    assert refused.value.field == field_path
    for data in (TOKEN, "hunter2", "/etc/ssl", "/var/run", "10.0.0.9", NAME, "system:admin"):
        assert data not in str(refused.value)


# Hosts that are (or are spelled as) the operator's own host, link-local, unspecified or
# in-cluster names.
PRIVATE_HOSTS = [
    pytest.param("169.254.169.254", id="aws-gcp-azure-metadata"),
    pytest.param("[fd00:ec2::254]", id="aws-metadata-ipv6"),
    pytest.param("100.100.100.200", id="alibaba-metadata"),
    pytest.param("metadata.google.internal", id="gcp-metadata-name"),
    pytest.param("169.254.10.1", id="link-local"),
    pytest.param("[fe80::1]", id="link-local-ipv6"),
    pytest.param("127.0.0.1", id="loopback"),
    pytest.param("127.1", id="loopback-short-form"),
    pytest.param("2130706433", id="loopback-as-integer"),
    pytest.param("0x7f.0.0.1", id="loopback-hex"),
    pytest.param("[::1]", id="loopback-ipv6"),
    pytest.param("[::ffff:169.254.169.254]", id="ipv4-mapped-metadata"),
    pytest.param("localhost", id="localhost"),
    pytest.param("api.localhost", id="localhost-subdomain"),
    pytest.param("LOCALHOST.", id="localhost-fqdn"),
    pytest.param("0.0.0.0", id="unspecified"),
    pytest.param("[::]", id="unspecified-ipv6"),
    pytest.param("0.1.2.3", id="this-network"),
    pytest.param("kubernetes", id="kubernetes"),
    pytest.param("kubernetes.default", id="kubernetes-default"),
    pytest.param("kubernetes.default.svc", id="svc"),
    pytest.param("prometheus.monitoring.svc.cluster.local", id="svc-cluster-local"),
    pytest.param("node-1.cluster.local", id="cluster-local"),
    pytest.param("vm", id="single-label"),
    pytest.param(
        "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54", id="fullwidth-localhost"
    ),
    pytest.param(
        "kubernetes.default.svc.cluster.\uff4c\uff4f\uff43\uff41\uff4c", id="fullwidth-suffix"
    ),
]


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_servers_on_the_operators_host_or_cluster_are_refused(host: str) -> None:
    with pytest.raises(KubeconfigRefused) as refused:
        check_kubeconfig(_kubeconfig(server=f"https://{host}:6443"))
    assert refused.value.field == "clusters[0].cluster.server"
    assert "--allow-private-remote-servers" in refused.value.rule
    assert host.strip("[]").rstrip(".").lower() not in str(refused.value).lower()


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_the_flag_lets_private_servers_through(host: str) -> None:
    target = check_kubeconfig(
        _kubeconfig(server=f"https://{host}:6443"), allow_private_servers=True
    )
    assert target.server == f"https://{host}:6443"


@pytest.mark.parametrize(
    "host",
    ["10.0.0.5", "192.168.1.20", "api.prod.example.com", "[2001:db8::5]", "203.0.113.7"],
)
def test_remote_servers_on_other_networks_are_accepted(host: str) -> None:
    assert check_kubeconfig(_kubeconfig(server=f"https://{host}:6443")).server


def test_token_and_client_certificate_kubeconfigs_build_clients(pki: Pki) -> None:
    token = _kubeconfig(ca=pki.ca.cert, cluster={"tls-server-name": NAME})
    token["contexts"][0]["context"]["namespace"] = "burst"
    certificate = _kubeconfig(
        ca=pki.ca.cert,
        user={
            "client-certificate-data": _b64(pki.client.cert),
            "client-key-data": _b64(pki.client.key),
        },
    )
    for config in (token, certificate):
        api = client_from(yaml.safe_dump(config))
        try:
            assert api.configuration.host == f"https://{NAME}:6443"
            # A connection per I/O thread, none opened and thrown away per request.
            assert api.rest_client.pool_manager.connection_pool_kw["maxsize"] == IO_THREADS
        finally:
            api.close()
    assert TOKEN not in repr(check_kubeconfig(token))


def test_kubectls_flattened_output_is_accepted() -> None:
    text = f"""apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {_b64(b"-----BEGIN CERTIFICATE-----")}
    server: https://{NAME}:6443
  name: remote
contexts:
- context:
    cluster: remote
    user: admin
  name: admin@remote
current-context: admin@remote
kind: Config
preferences: {{}}
users:
- name: admin
  user:
    client-certificate-data: {_b64(b"cert")}
    client-key-data: {_b64(b"key")}
"""
    target = check_kubeconfig(yaml.safe_load(text))
    assert (target.client_certificate, target.client_key) == (b"cert", b"key")


def test_a_key_that_does_not_load_is_refused_by_field(pki: Pki) -> None:
    config = _kubeconfig(
        ca=pki.ca.cert,
        user={
            "client-certificate-data": _b64(pki.client.cert),
            "client-key-data": _b64(pki.server.key),  # not the certificate's key
        },
    )
    with pytest.raises(KubeconfigRefused) as refused:
        client_from(yaml.safe_dump(config))
    assert refused.value.field == "users[0].user.client-key-data"


def test_the_chart_refuses_private_servers_unless_the_value_allows_them() -> None:
    def args(values: dict[str, Any] | None) -> list[str]:
        (deployment,) = of_kind(render(values), "Deployment")
        return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])

    assert "--allow-private-remote-servers" not in args(None)
    assert "--allow-private-remote-servers" in args({"operator.allowPrivateRemoteServers": True})


# --- the condition ------------------------------------------------------------------------


@dataclass
class _Secrets:
    """The Kube seam: one Secret's data."""

    data: dict[str, str]

    async def read_secret(self, namespace: str, name: str) -> tuple[dict[str, str], str]:
        return self.data, "1"


def _provider() -> CloudProviderSpec:
    h100 = fleets.node_pool(
        "h100", gpu_type="H100", site="ams1", max_nodes=4, watts_per_gpu=700, idle_watts_per_gpu=90
    )
    spec = fleets.cloud_provider(
        "remote",
        legal_entity="Burst B.V.",
        node_pools=[h100],
        role="Secondary",
        cluster={"kubeconfigSecretRef": {"name": "remote", "key": "kubeconfig"}},
    )["spec"]
    parsed = parse_provider(spec)
    assert parsed.value is not None, parsed.errors
    return parsed.value


@pytest.mark.asyncio
async def test_credentials_valid_names_secret_key_and_field_never_the_data() -> None:
    config = _kubeconfig(server="https://169.254.169.254", user={"token": TOKEN})
    text = base64.b64encode(yaml.safe_dump(config).encode()).decode()
    made: list[str] = []

    def make_driver(name: str, spec: CloudProviderSpec, api: ApiClient) -> Any:
        made.append(name)

    connections = Connections(
        _Secrets({"kubeconfig": text}),  # type: ignore[arg-type]
        make_driver,
        "gpufleet-system",
    )
    assert await connections.connect({"remote": _provider()}) == {}
    message = connections.errors["remote"]
    assert message.startswith("key kubeconfig of Secret gpufleet-system/remote: ")
    assert "clusters[0].cluster.server" in message
    assert TOKEN not in message and "169.254" not in message
    assert made == []


# --- live connections ---------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        self.server.seen.append(
            {
                "path": self.path,
                "authorization": self.headers.get("Authorization"),
                "client": subject.get("commonName"),
            }
        )
        body = json.dumps(
            {"kind": "APIResourceList", "groupVersion": "v1", "resources": []}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[dict[str, Any]]  # requests
    names: list[str | None]  # the server name (SNI) of each TLS handshake


@contextmanager
def _serve(pki: Pki, address: str, *, client_certificates: bool = False) -> Iterator[_Server]:
    """An API server stand-in: https on `address`, a certificate from the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with (
        tempfile.TemporaryDirectory() as directory,  # the test server's own files
    ):
        cert, key = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert.write_bytes(pki.server.cert)
        key.write_bytes(pki.server.key)
        context.load_cert_chain(cert, key)
    if client_certificates:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=pki.ca.cert.decode())
    server = _Server((address, 0), _Handler)
    server.seen, server.names = [], []
    context.sni_callback = lambda _socket, name, _context: server.names.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _port(server: _Server) -> int:
    return int(server.server_address[1])


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """NAME resolves to `dns["address"]` (changed by a test: rebinding); `dns["asked"]`
    records the names looked up."""
    state: dict[str, Any] = {"address": "127.0.0.1", "asked": []}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.rstrip(".") == NAME:
            state["asked"].append(host)
            return real(state["address"], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return state


def _list(api: ApiClient) -> None:
    CoreV1Api(api).get_api_resources(_request_timeout=5)


def test_a_token_reaches_a_loopback_server_only_with_the_flag(pki: Pki) -> None:
    with _serve(pki, "127.0.0.1") as server:
        config = _kubeconfig(
            f"https://127.0.0.1:{_port(server)}", ca=pki.ca.cert, cluster={"tls-server-name": NAME}
        )
        text = yaml.safe_dump(config)
        with pytest.raises(KubeconfigRefused):
            client_from(text)
        api = client_from(text, allow_private_servers=True)
        try:
            _list(api)
        finally:
            api.close()
    assert [s["authorization"] for s in server.seen] == [f"Bearer {TOKEN}"]
    assert server.names == [NAME]  # tls-server-name, not the address


def test_a_name_that_resolves_to_loopback_is_refused_when_connecting(
    pki: Pki, dns: dict[str, Any]
) -> None:
    with _serve(pki, "127.0.0.1") as server:
        api = client_from(
            yaml.safe_dump(_kubeconfig(f"https://{NAME}:{_port(server)}", ca=pki.ca.cert))
        )
        try:
            with pytest.raises(RefusedPeer, match="loopback"):
                _list(api)
        finally:
            api.close()
    assert server.seen == []  # refused before TLS: not even the token's header went out
    # Looked up as an absolute name: the operator's DNS search domains are never tried.
    assert dns["asked"] and all(name == f"{NAME}." for name in dns["asked"])


@pytest.mark.skipif(HOST_ADDRESS is None, reason="this machine has no non-loopback address")
def test_a_name_that_rebinds_to_loopback_after_admission_is_refused(
    pki: Pki, dns: dict[str, Any]
) -> None:
    assert HOST_ADDRESS is not None
    dns["address"] = HOST_ADDRESS
    with _serve(pki, "0.0.0.0") as server:  # both HOST_ADDRESS and loopback reach it
        api = client_from(
            yaml.safe_dump(_kubeconfig(f"https://{NAME}:{_port(server)}", ca=pki.ca.cert))
        )
        try:
            _list(api)  # an allowed address: connects, TLS checked against NAME
            dns["address"] = "127.0.0.1"
            api.rest_client.pool_manager.clear()  # the next request opens a new connection
            with pytest.raises(RefusedPeer, match="loopback"):
                _list(api)
        finally:
            api.close()
    assert len(server.seen) == 1
    assert server.names == [NAME]  # the trailing dot of the lookup stays out of TLS


@pytest.mark.parametrize("memfd", [True, False], ids=["memfd", "removed-temporary-file"])
def test_no_key_file_outlives_the_client(
    pki: Pki, memfd: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if memfd and not remote_client.MEMFD:
        pytest.skip("no memfd_create here")
    monkeypatch.setattr(remote_client, "MEMFD", memfd)
    # The Kubernetes client's loader and ours both write under gettempdir() if they write.
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    key_body = b"".join(pki.client.key.splitlines()[1:-1])

    def leftovers() -> list[Path]:
        files = [p for p in Path(tempfile.gettempdir()).rglob("*") if p.is_file()]
        assert not [p for p in files if key_body in p.read_bytes().replace(b"\n", b"")]
        return files

    with _serve(pki, "127.0.0.1", client_certificates=True) as server:
        config = _kubeconfig(
            f"https://127.0.0.1:{_port(server)}",
            ca=pki.ca.cert,
            user={
                "client-certificate-data": _b64(pki.client.cert),
                "client-key-data": _b64(pki.client.key),
            },
        )
        api = client_from(yaml.safe_dump(config), allow_private_servers=True)
        try:
            assert leftovers() == [] and _memory_files() == []
            _list(api)  # the handshake uses the key: it is in memory, not in a file
            assert leftovers() == [] and _memory_files() == []
        finally:
            api.close()
        del api
    assert leftovers() == [] and _memory_files() == []
    assert [s["client"] for s in server.seen] == ["operator"]


def _memory_files() -> list[str]:
    """The memory files (memfd) this process holds open for remote clients."""
    links = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            links.append(str(fd.readlink()))
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return [link for link in links if "gpufleet-remote" in link]

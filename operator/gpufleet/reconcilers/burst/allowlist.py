"""Which kubeconfigs a remote cluster's Secret may hold: an allow-list, not a deny-list.

A CloudProvider's `cluster.kubeconfigSecretRef` makes the operator dial a server of the
Secret's choosing with credentials of the Secret's choosing. So a kubeconfig may hold only
what that needs, and every other field is refused by name, known or not:

- clusters: `server` (https), `certificate-authority-data` (required: the embedded CA is the
  only one trusted), `tls-server-name`;
- users: `token`, or `client-certificate-data` with `client-key-data`;
- contexts (`cluster`, `user`, `namespace`) and `current-context` to pick them.

So no commands or plugins run in the operator (`exec`, `auth-provider`), no file of the
operator's is read (`…-file`, paths), no check is turned off (`insecure-skip-tls-verify`)
and no traffic is routed elsewhere (`proxy-url`). Unless the operator runs with
`--allow-private-remote-servers` (test beds with loopback clusters), the server may not be
the operator's own host, link-local (cloud metadata), unspecified or an in-cluster name:
this module checks the literal host; client.py checks the address each connection reaches,
whatever the name resolved to then.

Errors name the kubeconfig field (`clusters[0].cluster.proxy-url`), never its value.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_TOP_LEVEL = frozenset(
    {"apiVersion", "kind", "clusters", "contexts", "users", "current-context", "preferences"}
)
_CLUSTER = frozenset({"server", "certificate-authority-data", "tls-server-name"})
_USER = frozenset({"token", "client-certificate-data", "client-key-data"})
_CONTEXT = frozenset({"cluster", "user", "namespace"})

_READS_FILE = "reads a file of the operator's: embed the data instead"
# Refused fields whose reason is worth spelling out; any other unknown field is refused too.
_WHY_REFUSED = {
    "insecure-skip-tls-verify": "turns off the check of the server's certificate",
    "proxy-url": "sends the operator's traffic through a proxy the kubeconfig picks",
    "certificate-authority": _READS_FILE,
    "client-certificate": _READS_FILE,
    "client-key": _READS_FILE,
    "token-file": _READS_FILE,
    "tokenFile": _READS_FILE,
    "exec": "runs a command in the operator",
    "auth-provider": "runs an authentication plugin in the operator",
    "username": "basic authentication is refused: use a token or a client certificate",
    "password": "basic authentication is refused: use a token or a client certificate",
}

# Cloud metadata services that are not link-local: AWS's IPv6 one, Alibaba Cloud's.
_METADATA = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)
_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.azure.internal"})
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux dials 0.x.y.z on the local host


class CredentialsError(Exception):
    """The Secret or its kubeconfig is unusable; the message is safe to show."""


class KubeconfigRefused(CredentialsError):
    """A kubeconfig field outside the allow-list, or a value it refuses.

    `field` is the field's path (`users[0].user.exec`), `rule` why it is refused; neither
    quotes the kubeconfig's data.
    """

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


@dataclass(frozen=True)
class RemoteTarget:
    """What the current context of an allowed kubeconfig connects to, and as whom."""

    server: str  # https URL, no trailing slash
    ca_pem: str = field(repr=False)
    tls_server_name: str | None
    cluster_field: str  # `clusters[i].cluster`, for errors found while building the client
    user_field: str
    token: str | None = field(default=None, repr=False)
    client_certificate: bytes | None = field(default=None, repr=False)
    client_key: bytes | None = field(default=None, repr=False)


def check_kubeconfig(raw: Any, *, allow_private_servers: bool = False) -> RemoteTarget:
    """The target of kubeconfig `raw` (parsed YAML) if every field is allowed."""
    if not isinstance(raw, dict):
        raise CredentialsError("not a kubeconfig mapping")
    _only(raw, _TOP_LEVEL, "")
    if raw.get("apiVersion", "v1") != "v1" or raw.get("kind", "Config") != "Config":
        raise KubeconfigRefused("kind", "not a kubeconfig (apiVersion v1, kind Config)")
    if raw.get("preferences") not in (None, {}):
        raise KubeconfigRefused("preferences", "must be empty")
    clusters = _entries(raw, "clusters", "cluster", _CLUSTER)
    users = _entries(raw, "users", "user", _USER)
    contexts = _entries(raw, "contexts", "context", _CONTEXT)
    for where, cluster in clusters.values():
        _check_cluster(where, cluster, allow_private_servers)
    for where, user in users.values():
        _check_user(where, user)
    for where, context in contexts.values():
        for key in ("cluster", "user"):
            if context.get(key) not in (clusters if key == "cluster" else users):
                raise KubeconfigRefused(f"{where}.{key}", f"names no entry of {key}s")
    current = raw.get("current-context")
    if not isinstance(current, str) or current not in contexts:
        raise KubeconfigRefused("current-context", "names no entry of contexts")
    context = contexts[current][1]
    cluster_field, cluster = clusters[context["cluster"]]
    user_field, user = users[context["user"]]
    cert, key_data = user.get("client-certificate-data"), user.get("client-key-data")
    return RemoteTarget(
        server=cluster["server"].rstrip("/"),
        ca_pem=_pem(cluster_field, cluster),
        tls_server_name=cluster.get("tls-server-name"),
        cluster_field=cluster_field,
        user_field=user_field,
        token=user.get("token"),
        client_certificate=_base64(f"{user_field}.client-certificate-data", cert),
        client_key=_base64(f"{user_field}.client-key-data", key_data),
    )


def refused_host(host: str) -> str | None:
    """Why a server URL's (lower-case) host may not be dialled, or None.

    Only the literal host: no DNS lookup here. A lookup now proves nothing about the
    address dialled later (DNS rebinding, short TTLs), so client.py checks the address
    every connection reaches instead, and this check gives the early, clear refusal.
    """
    name = host.strip("[]").rstrip(".")
    if not name.isascii():
        # The resolver sees the IDNA form, where fullwidth letters are plain ASCII ones.
        try:
            name = name.encode("idna").decode("ascii").lower()
        except UnicodeError:
            return "not a valid host name"
    address = literal_address(name)
    if address is not None:
        return refused_address(address)
    if name == "localhost" or name.endswith(".localhost"):
        return "a loopback name"
    if "." not in name:
        # Resolved through the operator's DNS search domains: its own cluster's Services.
        return "a single-label name (it resolves to in-cluster Services)"
    if name == "kubernetes.default" or name.endswith((".svc", ".cluster.local")):
        return "an in-cluster Service name"
    if name in _METADATA_NAMES:
        return "a cloud metadata service name"
    return None


def refused_address(address: IPAddress) -> str | None:
    """Why the operator may not connect to `address`, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA or address == ipaddress.ip_address("169.254.169.254"):
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "an unspecified address"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, in any form the resolver reads as one (`127.1`,
    `0x7f000001` included), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _only(mapping: dict[Any, Any], allowed: frozenset[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            path = f"{where}.{key}" if where else str(key)
            raise KubeconfigRefused(path, _WHY_REFUSED.get(key, "not an allowed field"))


def _entries(
    raw: dict[str, Any], section: str, kind: str, allowed: frozenset[str]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (path, body) of a named list (`clusters: [{name, cluster}]`)."""
    entries = raw.get(section) or []
    if not isinstance(entries, list):
        raise KubeconfigRefused(section, "must be a list")
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for i, entry in enumerate(entries):
        where = f"{section}[{i}]"
        if not isinstance(entry, dict):
            raise KubeconfigRefused(where, "must be a mapping")
        _only(entry, frozenset({"name", kind}), where)
        name, body = entry.get("name"), entry.get(kind)
        if not isinstance(name, str) or not name:
            raise KubeconfigRefused(f"{where}.name", "must be a string")
        if name in out:
            raise KubeconfigRefused(f"{where}.name", f"two {section} have this name")
        if not isinstance(body, dict):
            raise KubeconfigRefused(f"{where}.{kind}", "must be a mapping")
        _only(body, allowed, f"{where}.{kind}")
        for key, value in body.items():
            if not isinstance(value, str):
                raise KubeconfigRefused(f"{where}.{kind}.{key}", "must be a string")
        out[name] = (f"{where}.{kind}", body)
    return out


def _check_cluster(where: str, cluster: dict[str, str], allow_private_servers: bool) -> None:
    if "server" not in cluster:
        raise KubeconfigRefused(f"{where}.server", "required")
    server = cluster["server"]
    # URL parsers disagree on these (urlsplit drops tabs, some read `\` as `/`): the host
    # checked here must be the host dialled.
    if not server.isprintable() or any(c.isspace() or c == "\\" for c in server):
        raise KubeconfigRefused(f"{where}.server", "holds spaces, control characters or `\\`")
    try:
        url = urlsplit(server)
        url.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise KubeconfigRefused(f"{where}.server", "not a URL") from None
    if url.scheme != "https":
        raise KubeconfigRefused(f"{where}.server", "must be an https URL")
    if url.username is not None or url.password is not None:
        raise KubeconfigRefused(f"{where}.server", "may not hold credentials")
    if url.query or url.fragment or not url.hostname:
        raise KubeconfigRefused(f"{where}.server", "must be https://host[:port][/path]")
    why = None if allow_private_servers else refused_host(url.hostname)
    if why is not None:
        raise KubeconfigRefused(
            f"{where}.server",
            f"the host is {why}; only an operator run with --allow-private-remote-servers "
            "connects to such servers",
        )
    if "certificate-authority-data" not in cluster:
        raise KubeconfigRefused(
            f"{where}.certificate-authority-data", "required: the CA that signed the server"
        )
    _pem(where, cluster)


def _check_user(where: str, user: dict[str, str]) -> None:
    token = user.get("token")
    pair = [k for k in ("client-certificate-data", "client-key-data") if k in user]
    if token is not None and pair:
        raise KubeconfigRefused(where, "a token or a client certificate, not both")
    if token is None and len(pair) < 2:
        raise KubeconfigRefused(
            where, "needs a token, or client-certificate-data and client-key-data"
        )
    # Visible ASCII only: a header value with CR or LF could smuggle headers into requests.
    if token is not None and not (token and token.isascii() and token.isprintable()):
        raise KubeconfigRefused(f"{where}.token", "not a bearer token")
    for key in pair:
        _base64(f"{where}.{key}", user[key])


def _pem(where: str, cluster: dict[str, str]) -> str:
    path = f"{where}.certificate-authority-data"
    data = _base64(path, cluster["certificate-authority-data"])
    assert data is not None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise KubeconfigRefused(path, "not a PEM certificate")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise KubeconfigRefused(path, "not a PEM certificate") from None


def _base64(path: str, value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KubeconfigRefused(path, "not base64") from None

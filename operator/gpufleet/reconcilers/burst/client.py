"""The ApiClient of a remote cluster, built from an allowed kubeconfig (allowlist.py) alone.

Not with `kubernetes.config`: its loader writes every `…-data` field (the client key
included) to a file under /tmp that stays until the process exits. Here the embedded CA goes
into an SSLContext as data, and the client certificate and key through memory-only files
(memfd) closed as soon as the context has read them: no key material on any path once the
client is built, and nothing to remove when it is dropped.

The client's connections trust that CA only, ignore the operator's proxy environment, look
the server's name up as an absolute name (never through the operator's DNS search domains,
which reach its own cluster's Services), and, unless private servers are allowed, refuse a
connection whose peer address the allow-list refuses: the check is on the address each
connection reaches, so a name that resolves (or rebinds) to 169.254.169.254 or 127.0.0.1
after the kubeconfig was admitted is refused all the same.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import urllib3
from kubernetes.client import ApiClient, Configuration
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.util.ssl_ import is_ipaddress

from gpufleet.reconcilers.burst.allowlist import KubeconfigRefused, RemoteTarget, refused_address
from gpufleet.reconcilers.threads import size_connection_pool

# Linux: files that live in memory only. Elsewhere a private temporary file, removed at once.
MEMFD = hasattr(os, "memfd_create")


class RefusedPeer(Exception):
    """A connection reached an address the allow-list refuses; the message names the kind
    of address, not the kubeconfig's data."""


class _CheckedConnection(HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A trailing dot makes the name absolute: no search domain is tried. `host` (TLS
        # name, Host header) strips it again; only the lookup sees it.
        if not is_ipaddress(self._dns_host):
            self._dns_host = self._dns_host.rstrip(".") + "."

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        peer = sock.getpeername()[0]
        why = refused_address(ipaddress.ip_address(peer))
        if why is not None:
            sock.close()
            # Not an OSError: urllib3 would retry that and hide it in a MaxRetryError.
            raise RefusedPeer(f"the remote server resolved to {why}")
        return sock


class _CheckedPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedConnection


def api_client(target: RemoteTarget, *, allow_private_servers: bool = False) -> ApiClient:
    """An ApiClient for `target`; KubeconfigRefused if its certificates do not load."""
    context = _ssl_context(target)
    configuration = Configuration(
        host=target.server,
        # Not "None": that reads HTTPS_PROXY and friends, and the peer check needs the
        # connection to reach the server itself.
        proxy="",
        tls_server_name=target.tls_server_name,
    )
    if target.token is not None:
        configuration.api_key = {"BearerToken": target.token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
    api = ApiClient(size_connection_pool(configuration))
    pools = urllib3.PoolManager(
        num_pools=4,
        maxsize=configuration.connection_pool_maxsize,
        ssl_context=context,
        cert_reqs=ssl.CERT_REQUIRED,
        server_hostname=target.tls_server_name or None,
    )
    # https only: an http URL finds no pool class and fails before it connects.
    pools.pool_classes_by_scheme = {
        "https": HTTPSConnectionPool if allow_private_servers else _CheckedPool
    }
    api.rest_client.pool_manager.clear()
    api.rest_client.pool_manager = pools
    return api


def _ssl_context(target: RemoteTarget) -> ssl.SSLContext:
    try:
        # With cadata, the system's CAs are not loaded: the embedded CA alone is trusted.
        context = ssl.create_default_context(cadata=target.ca_pem)
    except ssl.SSLError:
        raise KubeconfigRefused(
            f"{target.cluster_field}.certificate-authority-data", "not a PEM certificate"
        ) from None
    if target.client_certificate is not None and target.client_key is not None:
        try:
            with (
                _memory_file(target.client_certificate) as cert,
                _memory_file(target.client_key) as key,
            ):
                context.load_cert_chain(cert, key, password=_no_password)
        except (ssl.SSLError, _EncryptedKey):
            raise KubeconfigRefused(
                f"{target.user_field}.client-key-data",
                "not an unencrypted PEM key of client-certificate-data",
            ) from None
    return context


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt for the pass phrase on the terminal.
    raise _EncryptedKey


@contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path that reads `data`, valid inside the `with` only."""
    if MEMFD:
        fd = os.memfd_create("gpufleet-remote", os.MFD_CLOEXEC)
        try:
            _write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="gpufleet-remote-")  # mode 0600
    try:
        try:
            _write(fd, data)
        finally:
            os.close(fd)
        yield path
    finally:
        Path(path).unlink()


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

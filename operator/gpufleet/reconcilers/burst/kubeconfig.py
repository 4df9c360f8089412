"""Connections to remote clusters: CloudProviders with `cluster.kubeconfigSecretRef`.

Each tick, for every such provider: read the Secret, build an ApiClient from its kubeconfig
(cached per Secret resourceVersion) and the provider's driver on it, so its nodes live in
that cluster.

Nothing of the Secret leaves this module: errors name the Secret, key and kubeconfig field,
never its data. Only the fields allowlist.py allows are accepted (no commands, plugins, files,
proxies or unchecked certificates: a CloudProvider must not make the operator hand out its own
token or reach its own host), and client.py builds the client without writing key files.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import yaml
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import DriverError, NodePoolDriver
from gpufleet.reconcilers.burst.allowlist import CredentialsError, check_kubeconfig
from gpufleet.reconcilers.burst.client import api_client
from gpufleet.reconcilers.kube import Kube, SecretUnusable, api_reason, secret_text

log = logging.getLogger(__name__)

RemoteDriverFactory = Callable[[str, CloudProviderSpec, ApiClient], NodePoolDriver]


@dataclass
class Connection:
    version: str
    api: ApiClient
    spec: CloudProviderSpec
    driver: NodePoolDriver


def client_from(text: str, *, allow_private_servers: bool = False) -> ApiClient:
    """An ApiClient for the kubeconfig `text`, once the allow-list accepts it."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raise CredentialsError("not valid YAML") from None
    target = check_kubeconfig(raw, allow_private_servers=allow_private_servers)
    try:
        return api_client(target, allow_private_servers=allow_private_servers)
    except CredentialsError:
        raise
    except Exception as exc:  # name only: the message may quote data
        raise CredentialsError(f"unusable kubeconfig ({type(exc).__name__})") from None


@dataclass
class Connections:
    kube: Kube
    make_driver: RemoteDriverFactory
    operator_namespace: str
    # Servers on the operator's host, link-local or in-cluster names (test beds only).
    allow_private_servers: bool = False
    by_provider: dict[str, Connection] = field(default_factory=dict)
    # provider -> why its credentials are unusable (CredentialsValid=False), this tick.
    errors: dict[str, str] = field(default_factory=dict)

    def api(self, provider: str) -> ApiClient | None:
        connection = self.by_provider.get(provider)
        return connection.api if connection else None

    async def connect(
        self, providers: Mapping[str, CloudProviderSpec]
    ) -> dict[str, NodePoolDriver]:
        """Drivers of the remote providers whose kubeconfig is usable now."""
        for gone in set(self.by_provider) - set(providers):
            await self._close(self.by_provider.pop(gone))
        names = sorted(providers)
        results = await asyncio.gather(*(self._connect(n, providers[n]) for n in names))
        self.errors = {n: e for n, e in zip(names, results, strict=True) if e is not None}
        return {n: self.by_provider[n].driver for n in names if n not in self.errors}

    async def _connect(self, name: str, spec: CloudProviderSpec) -> str | None:
        try:
            return await self._connect_one(name, spec)
        except Exception as exc:  # whatever one provider's Secret holds, the others go on
            log.exception("connecting to the remote cluster of %s failed", name)
            return f"unusable kubeconfig ({type(exc).__name__})"

    async def _connect_one(self, name: str, spec: CloudProviderSpec) -> str | None:
        ref = spec.cluster.kubeconfig_secret_ref
        assert ref is not None
        namespace = ref.namespace or self.operator_namespace
        where = f"key {ref.key} of Secret {namespace}/{ref.name}"
        try:
            data, version = await self.kube.read_secret(namespace, ref.name)
        except ApiException as exc:
            return f"Secret {namespace}/{ref.name}: {api_reason(exc)}"
        except Exception as exc:
            return f"Secret {namespace}/{ref.name}: {type(exc).__name__}"
        cache_key = f"{namespace}/{ref.name}/{ref.key}@{version}"
        cached = self.by_provider.get(name)
        if cached is not None and cached.version == cache_key and cached.spec == spec:
            return None
        try:
            text = secret_text(data, ref.key, where)
            api = await asyncio.to_thread(
                client_from, text, allow_private_servers=self.allow_private_servers
            )
        except SecretUnusable as exc:
            return str(exc)
        except CredentialsError as exc:
            return f"{where}: {exc}"
        try:
            driver = self.make_driver(name, spec, api)
        except DriverError as exc:
            await asyncio.to_thread(api.close)
            return f"no driver: {exc.reason}"
        if cached is not None:
            await self._close(cached)
        self.by_provider[name] = Connection(cache_key, api, spec, driver)
        log.info("connected to the remote cluster of %s", name, extra={"provider": name})
        return None

    async def _close(self, connection: Connection) -> None:
        await asyncio.to_thread(connection.api.close)

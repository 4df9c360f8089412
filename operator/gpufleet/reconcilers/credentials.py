"""AWS credentials of EKS providers, from `spec.driver.eks.credentialsSecretRef`.

Every tick the fleet loop refreshes each driver factory's AwsCredentialSource: it reads the
Secrets the providers refer to with the operator's Kube client and parses the key as a
shared-credentials file (`drivers.eks.parse_credentials_file`). A provider whose Secret is
missing, lacks the key or holds nothing usable gets an error instead: the loop treats it as
unreachable for that tick and its `CredentialsValid` condition says why, naming the Secret
and key, never their data.

The drivers a CredentialedFactory builds follow their source: a rotated key takes effect on
the next driver call (the backend's driver is rebuilt with it), and a provider without
usable credentials fails its calls with CredentialsInvalid rather than fall back to the
operator's own (ambient) identity.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gpufleet.api.common import SecretKeyRef
from gpufleet.api.provider import CloudProviderSpec, DriverType
from gpufleet.drivers.base import DriverError, NodePoolDriver, NodePoolRef, NodePoolState
from gpufleet.drivers.eks import AwsCredentials, parse_credentials_file
from gpufleet.reconcilers.kube import SecretUnusable, api_reason, secret_text

log = logging.getLogger(__name__)


class CredentialsError(Exception):
    """The credentials Secret is unusable; the message names it and is safe to show."""


class SecretReader(Protocol):
    """What this module needs of reconcilers.kube.Kube."""

    async def read_secret(self, namespace: str, name: str) -> tuple[dict[str, str], str]: ...


def secret_ref(spec: CloudProviderSpec) -> SecretKeyRef | None:
    """The Secret key an EKS provider's credentials are in; None: the ambient identity."""
    eks = spec.driver.eks
    if spec.driver.type != DriverType.EKS or eks is None:
        return None
    return eks.credentials_secret_ref


def credentials_from_secret(data: Mapping[str, str], key: str, where: str) -> AwsCredentials:
    """Credentials from a Secret's (base64) `data`; errors name `where`, never the data."""
    try:
        text = secret_text(data, key, where)
    except SecretUnusable as exc:
        raise CredentialsError(str(exc)) from None
    try:
        return parse_credentials_file(text)
    except DriverError as exc:  # its message never quotes the text
        raise CredentialsError(f"{where}: {exc}") from None


@dataclass
class AwsCredentialSource:
    """The credentials each provider's Secret held at the last refresh."""

    # Where a reference without a namespace points: the operator's namespace.
    namespace: str
    current: dict[str, AwsCredentials] = field(default_factory=dict, repr=False)

    def get(self, provider: str) -> AwsCredentials | None:
        return self.current.get(provider)

    async def refresh(
        self, kube: SecretReader, providers: Mapping[str, CloudProviderSpec]
    ) -> dict[str, str]:
        """Reads the Secret of every provider that has one; why each unusable one is."""
        refs = {n: ref for n, spec in providers.items() if (ref := secret_ref(spec)) is not None}
        names = sorted(refs)
        results = await asyncio.gather(*(self._read(kube, refs[n]) for n in names))
        errors: dict[str, str] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, str):
                errors[name] = result
                self.current.pop(name, None)
            elif self.current.get(name) != result:
                # A fact on change, never a value: which Secret, not what it holds.
                where = f"{refs[name].namespace or self.namespace}/{refs[name].name}"
                log.info(
                    "credentials of provider %s %s from Secret %s",
                    name,
                    "changed" if name in self.current else "loaded",
                    where,
                    extra={"provider": name, "secretRef": where},
                )
                self.current[name] = result
        for gone in set(self.current) - set(names):
            del self.current[gone]
        return errors

    async def _read(self, kube: SecretReader, ref: SecretKeyRef) -> AwsCredentials | str:
        namespace = ref.namespace or self.namespace
        secret = f"Secret {namespace}/{ref.name}"
        try:
            data, _ = await kube.read_secret(namespace, ref.name)
            return credentials_from_secret(data, ref.key, f"key {ref.key} of {secret}")
        except CredentialsError as exc:
            return str(exc)
        except ApiException as exc:
            return f"{secret}: {api_reason(exc)}"
        except Exception as exc:  # the type only: a message might quote a reply
            return f"{secret}: {type(exc).__name__}"


def credential_source(factory: object) -> AwsCredentialSource | None:
    """The credential source of a driver factory, if it has one."""
    found = getattr(factory, "credentials", None)
    return found if isinstance(found, AwsCredentialSource) else None


class CredentialedDriver:
    """The driver of a provider with a credentials Secret, rebuilt when the credentials in
    the source change; a NodePoolDriver."""

    def __init__(
        self,
        provider: str,
        source: AwsCredentialSource,
        build: Callable[[AwsCredentials], NodePoolDriver],
    ) -> None:
        self._provider = provider
        self._source = source
        self._build = build
        self._built: tuple[AwsCredentials, NodePoolDriver] | None = None

    def current(self) -> NodePoolDriver:
        credentials = self._source.get(self._provider)
        if credentials is None:
            raise DriverError(
                f"provider {self._provider} has no usable credentials: see CredentialsValid",
                reason="CredentialsInvalid",
            )
        if self._built is None or self._built[0] != credentials:
            self._built = (credentials, self._build(credentials))
        return self._built[1]

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        return await self.current().get_pool(ref)

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        await self.current().set_target_size(ref, size, action_id=action_id)

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        await self.current().delete_nodes(ref, names, action_id=action_id)


def _follow(
    name: str,
    spec: CloudProviderSpec,
    source: AwsCredentialSource,
    build: Callable[[AwsCredentials | None], NodePoolDriver],
) -> NodePoolDriver:
    if secret_ref(spec) is None:
        return build(None)
    driver = CredentialedDriver(name, source, build)
    if source.get(name) is not None:
        driver.current()  # build now: a DriverError shows at once, not on the first call
    return driver


@dataclass
class CredentialedFactory:
    """The fleet loop's driver factory `(name, spec)`, with the credential source the loop
    refreshes before it builds or uses a driver."""

    credentials: AwsCredentialSource
    build: Callable[[str, CloudProviderSpec, AwsCredentials | None], NodePoolDriver]

    def __call__(self, name: str, spec: CloudProviderSpec) -> NodePoolDriver:
        return _follow(name, spec, self.credentials, lambda c: self.build(name, spec, c))


@dataclass
class RemoteCredentialedFactory:
    """The same for remote providers: `(name, spec, api)`, `api` the remote cluster's."""

    credentials: AwsCredentialSource
    build: Callable[[str, CloudProviderSpec, ApiClient, AwsCredentials | None], NodePoolDriver]

    def __call__(self, name: str, spec: CloudProviderSpec, api: ApiClient) -> NodePoolDriver:
        return _follow(name, spec, self.credentials, lambda c: self.build(name, spec, api, c))

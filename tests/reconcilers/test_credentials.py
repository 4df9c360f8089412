"""AWS credentials from an EKS CloudProvider's `credentialsSecretRef`: parsed from the
Secret, handed to the driver through the operator's factory, followed when the Secret
changes, and, when unusable, a CredentialsValid=False condition naming the Secret while the
provider is skipped for the tick. No Secret value appears in an error, a log or a status.

The Secret store is a recording stand-in for reconcilers.kube.Kube (its read_secret and
patch_status); boto3 is faked beyond the driver's client seam, as in tests/drivers."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
from botocore.exceptions import ClientError
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gpufleet.api.parse import Parsed
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import DriverError
from gpufleet.drivers.eks import AwsCredentials
from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.reconcilers.cache import ProviderEntry, View
from gpufleet.reconcilers.config import RunConfig
from gpufleet.reconcilers.credentials import (
    AwsCredentialSource,
    CredentialedDriver,
    CredentialsError,
    credentials_from_secret,
)
from gpufleet.reconcilers.handlers import driver_factory
from gpufleet.reconcilers.loop import FleetLoop
from gpufleet.reconcilers.reporting import status as st
from gpufleet_testbed import fleets

NAMESPACE = "gpufleet-system"
PLANTED = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPLANTEDSECRET"
ROTATED = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbROTATEDSECRET"


def credentials_file(secret: str, key_id: str = "AKIDEXAMPLE") -> str:
    text = f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
    return base64.b64encode(text.encode()).decode()


def eks_spec(ref: dict[str, str] | None = None) -> CloudProviderSpec:
    return CloudProviderSpec.model_validate(fleets.eks_provider_spec(credentials_secret_ref=ref))


REF = {"name": "aws", "key": "credentials"}


class Secrets:
    """The API server's Secrets and CloudProvider status, as Kube reaches them."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, str]] = {}
        self.statuses: list[dict[str, Any]] = []

    async def read_secret(self, namespace: str, name: str) -> tuple[dict[str, str], str]:
        if (namespace, name) not in self.data:
            raise ApiException(status=404, reason="Not Found")
        return dict(self.data[(namespace, name)]), "1"

    async def patch_status(self, plural: str, namespace: Any, name: str, *args: Any) -> None:
        self.statuses.append({"plural": plural, "name": name, "status": args[-1]})

    async def event(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("no Event expected")


class Boto:
    """The driver's boto3 seam: records the credentials each driver was built with; its
    EKS answers that the node group does not exist (a typed, non-retried error)."""

    def __init__(self) -> None:
        self.given: list[AwsCredentials | None] = []

    def __call__(self, region: str, credentials: AwsCredentials | None) -> tuple[Any, Any]:
        self.given.append(credentials)
        return self, None

    def describe_nodegroup(self, **_: Any) -> Any:
        reply = {"Error": {"Code": "ResourceNotFoundException", "Message": "x"}}
        raise ClientError(reply, "DescribeNodegroup")


def test_credentials_come_from_the_shared_credentials_file_in_the_key() -> None:
    got = credentials_from_secret({"credentials": credentials_file(PLANTED)}, "credentials", "w")
    assert got == AwsCredentials("AKIDEXAMPLE", PLANTED)
    assert PLANTED not in repr(got)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "key credentials of Secret gpufleet-system/aws: missing"),
        ({"credentials": f"{PLANTED}!"}, "not base64-encoded UTF-8"),
        (
            {"credentials": base64.b64encode(f"aws_secret_access_key={PLANTED}".encode()).decode()},
            "needs aws_access_key_id and aws_secret_access_key",
        ),
        (
            {"credentials": credentials_file(PLANTED, key_id="")},
            "needs aws_access_key_id and aws_secret_access_key",
        ),
        (
            {"credentials": base64.b64encode(f"[default\n{PLANTED}".encode()).decode()},
            "needs aws_access_key_id and aws_secret_access_key",
        ),
    ],
)
def test_unusable_content_is_an_error_naming_the_secret_never_its_data(
    data: dict[str, str], expected: str
) -> None:
    with pytest.raises(CredentialsError) as raised:
        credentials_from_secret(
            data, "credentials", "key credentials of Secret gpufleet-system/aws"
        )
    assert expected in str(raised.value)
    assert PLANTED not in str(raised.value) and raised.value.__cause__ is None


@pytest.mark.asyncio
async def test_refresh_reads_the_referenced_secret_in_the_operator_namespace_by_default() -> None:
    secrets = Secrets()
    secrets.data[(NAMESPACE, "aws")] = {"credentials": credentials_file(PLANTED)}
    secrets.data[("team", "aws")] = {"credentials": credentials_file(ROTATED)}
    source = AwsCredentialSource(NAMESPACE)
    errors = await source.refresh(
        secrets,
        {
            "default-ns": eks_spec(REF),
            "own-ns": eks_spec({**REF, "namespace": "team"}),
            "ambient": eks_spec(),
            "missing": eks_spec({"name": "nope", "key": "credentials"}),
        },
    )
    assert errors == {"missing": "Secret gpufleet-system/nope: Not Found (404)"}
    assert source.get("default-ns") == AwsCredentials("AKIDEXAMPLE", PLANTED)
    assert source.get("own-ns") == AwsCredentials("AKIDEXAMPLE", ROTATED)
    assert source.get("ambient") is None and source.get("missing") is None

    await source.refresh(secrets, {"own-ns": eks_spec({**REF, "namespace": "team"})})
    assert source.get("default-ns") is None  # a provider gone is forgotten


@pytest.mark.asyncio
async def test_the_driver_is_rebuilt_with_rotated_credentials_and_never_falls_back() -> None:
    secrets, boto = Secrets(), Boto()
    secrets.data[(NAMESPACE, "aws")] = {"credentials": credentials_file(PLANTED)}
    factory = driver_factory(ApiClient(), RunConfig(), OperatorMetrics(), aws_clients=boto)
    providers = {"aws": eks_spec(REF)}

    assert await factory.credentials.refresh(secrets, providers) == {}
    driver = factory("aws", providers["aws"])
    assert isinstance(driver, CredentialedDriver)
    assert boto.given == [AwsCredentials("AKIDEXAMPLE", PLANTED)]
    driver.current()
    assert len(boto.given) == 1  # the same credentials: the same driver

    secrets.data[(NAMESPACE, "aws")] = {"credentials": credentials_file(ROTATED)}
    await factory.credentials.refresh(secrets, providers)
    driver.current()
    assert boto.given[-1] == AwsCredentials("AKIDEXAMPLE", ROTATED)

    del secrets.data[(NAMESPACE, "aws")]
    assert "aws" in await factory.credentials.refresh(secrets, providers)
    with pytest.raises(DriverError) as raised:
        driver.current()
    assert raised.value.reason == "CredentialsInvalid"
    assert None not in boto.given  # never the operator's own identity


def test_a_provider_without_a_secret_gets_the_ambient_identity_directly() -> None:
    boto = Boto()
    factory = driver_factory(ApiClient(), RunConfig(), OperatorMetrics(), aws_clients=boto)
    assert not isinstance(factory("aws", eks_spec()), CredentialedDriver)
    assert boto.given == [None]


def _conditions(secrets: Secrets) -> dict[str, dict[str, Any]]:
    written = [s for s in secrets.statuses if s["plural"] == "cloudproviders"][-1]["status"]
    return {c["type"]: c for c in written["conditions"]}


@pytest.mark.asyncio
async def test_the_tick_reports_unusable_credentials_and_skips_the_provider(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets, boto, metrics = Secrets(), Boto(), OperatorMetrics()
    factory = driver_factory(ApiClient(), RunConfig(), metrics, aws_clients=boto)
    loop = FleetLoop(secrets, None, factory, metrics)  # type: ignore[arg-type]
    spec = eks_spec(REF)
    view = View([], [ProviderEntry("aws", 1, Parsed(spec))], [], [], {}, {})

    await loop.tick(view)  # no Secret yet
    conditions = _conditions(secrets)
    assert conditions["CredentialsValid"]["status"] == "False"
    assert conditions["CredentialsValid"]["reason"] == "CredentialsInvalid"
    assert "Secret gpufleet-system/aws" in conditions["CredentialsValid"]["message"]
    assert conditions["DriverReachable"]["status"] == "False"
    assert boto.given == []  # no driver, so no call with the ambient identity

    secrets.data[(NAMESPACE, "aws")] = {"credentials": credentials_file(PLANTED)}
    await loop.tick(view)
    assert _conditions(secrets)["CredentialsValid"]["reason"] == "Valid"
    assert boto.given == [AwsCredentials("AKIDEXAMPLE", PLANTED)]

    secrets.data[(NAMESPACE, "aws")] = {"credentials": credentials_file(ROTATED)}
    await loop.tick(view)
    assert boto.given[-1] == AwsCredentials("AKIDEXAMPLE", ROTATED)

    secrets.data[(NAMESPACE, "aws")] = {"credentials": base64.b64encode(PLANTED.encode()).decode()}
    await loop.tick(view)
    assert _conditions(secrets)["CredentialsValid"]["status"] == "False"
    assert len(boto.given) == 2

    shown = repr(secrets.statuses) + caplog.text
    assert PLANTED not in shown and ROTATED not in shown


def test_credentials_valid_says_valid_for_a_secret_and_no_credentials_needed_without() -> None:
    def condition(spec: CloudProviderSpec, error: str | None = None) -> dict[str, Any]:
        status = st.wire(st.provider_status(None, 1, spec, {}, {}, None, 0.0, (), error))
        return next(c for c in status["conditions"] if c["type"] == "CredentialsValid")

    assert condition(eks_spec(REF))["reason"] == "Valid"
    assert condition(eks_spec())["reason"] == "NoCredentialsNeeded"
    failed = condition(eks_spec(REF), "key credentials of Secret gpufleet-system/aws: missing")
    assert (failed["status"], failed["reason"]) == ("False", "CredentialsInvalid")

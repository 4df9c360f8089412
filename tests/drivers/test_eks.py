"""The EKS driver against moto's EKS (the fake beyond the seam) and a stub Node lister."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from kubernetes.client import ApiClient
from moto import mock_aws

from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import (
    DriverError,
    InsufficientCapacity,
    NodePoolNotFound,
    NodePoolRef,
    ProviderUnavailable,
    QuotaExceeded,
    Throttled,
)
from gpufleet.drivers.eks import (
    AwsCredentials,
    EksDriver,
    NodeGroupBounds,
    _default_clients,
    as_typed,
    parse_credentials_file,
)
from gpufleet.reconcilers.threads import IO_THREADS
from gpufleet_testbed import fleets

REGION = "eu-central-1"
CLUSTER = "gpu-cluster"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPLANTEDSECRET"
REF = NodePoolRef("aws", "gpu", "gpu-ng")


def spec() -> CloudProviderSpec:
    return CloudProviderSpec.model_validate(
        fleets.eks_provider_spec(region=REGION, cluster_name=CLUSTER)
    )


@pytest.fixture
def eks() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client(
            "eks", region_name=REGION, aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key=SECRET
        )
        client.create_cluster(
            name=CLUSTER,
            roleArn="arn:aws:iam::123456789012:role/eks",
            resourcesVpcConfig={"subnetIds": ["subnet-1"]},
        )
        client.create_nodegroup(
            clusterName=CLUSTER,
            nodegroupName="gpu-ng",
            nodeRole="arn:aws:iam::123456789012:role/node",
            subnets=["subnet-1"],
            scalingConfig={"minSize": 0, "maxSize": 4, "desiredSize": 1},
        )
        yield client


class Nodes:
    """Stands in for the cluster's Node list (CoreV1Api.list_node)."""

    def __init__(self, *nodes: Any) -> None:
        self.items = list(nodes)

    def list_node(self, label_selector: str) -> Any:
        self.selector = label_selector
        return self


def node(name: str, instance: str, ready: bool = True) -> Any:
    from kubernetes.client import V1Node

    return V1Node.model_validate(
        {
            "metadata": {"name": name, "labels": {"eks.amazonaws.com/nodegroup": "gpu-ng"}},
            "spec": {"providerID": f"aws:///{REGION}a/{instance}"},
            "status": {"conditions": [{"type": "Ready", "status": str(ready)}]},
        }
    )


def driver(eks: Any, nodes: Nodes | None = None, autoscaling: Any = None) -> EksDriver:
    made = EksDriver(
        ApiClient(),
        "aws",
        spec(),
        credentials=AwsCredentials("AKIDEXAMPLE", SECRET),
        clients=lambda region, creds: (eks, autoscaling),
    )
    made._core = nodes or Nodes()  # type: ignore[assignment]
    return made


def scaling(eks: Any) -> dict[str, int]:
    got: dict[str, int] = eks.describe_nodegroup(clusterName=CLUSTER, nodegroupName="gpu-ng")[
        "nodegroup"
    ]["scalingConfig"]
    return got


@pytest.mark.asyncio
async def test_get_pool_reads_desired_size_and_labelled_nodes(eks: Any) -> None:
    nodes = Nodes(node("ip-1", "i-1"), node("ip-2", "i-2", ready=False))
    state = await driver(eks, nodes).get_pool(REF)
    assert (state.target_size, state.ready_nodes, state.all_nodes) == (
        1,
        ("ip-1",),
        ("ip-1", "ip-2"),
    )
    assert nodes.selector == "eks.amazonaws.com/nodegroup=gpu-ng"


@pytest.mark.asyncio
async def test_set_target_size_updates_the_node_group_absolutely(eks: Any) -> None:
    made = driver(eks)
    await made.set_target_size(REF, 3, action_id="a")
    await made.set_target_size(REF, 3, action_id="a")  # a retry: no second update
    assert scaling(eks) == {"minSize": 0, "maxSize": 4, "desiredSize": 3}
    assert (await made.get_pool(REF)).target_size == 3


@pytest.mark.asyncio
async def test_above_max_size_grants_the_max_and_raises_quota(eks: Any) -> None:
    with pytest.raises(QuotaExceeded):
        await driver(eks).set_target_size(REF, 6, action_id="a")
    assert scaling(eks)["desiredSize"] == 4


@pytest.mark.asyncio
async def test_below_min_size_is_a_non_transient_error(eks: Any) -> None:
    eks.update_nodegroup_config(
        clusterName=CLUSTER, nodegroupName="gpu-ng", scalingConfig={"minSize": 1}
    )
    with pytest.raises(NodeGroupBounds) as raised:
        await driver(eks).set_target_size(REF, 0, action_id="a")
    assert not raised.value.transient


@pytest.mark.parametrize(
    ("code", "message", "error"),
    [
        ("InsufficientFreeAddresses", "subnet has no free addresses", InsufficientCapacity),
        ("AsgInstanceLaunchFailures", "InsufficientInstanceCapacity", InsufficientCapacity),
        (
            "AsgInstanceLaunchFailures",
            "You have requested more vCPU (VcpuLimitExceeded)",
            QuotaExceeded,
        ),
    ],
)
@pytest.mark.asyncio
async def test_health_issues_stop_a_scale_up_with_a_capacity_error(
    eks: Any, code: str, message: str, error: type[DriverError]
) -> None:
    from moto.eks.models import eks_backends

    group = eks_backends["123456789012"][REGION].clusters[CLUSTER].nodegroups["gpu-ng"]
    group.health = {"issues": [{"code": code, "message": message, "resourceIds": []}]}
    made = driver(eks)
    with pytest.raises(error):
        await made.set_target_size(REF, 3, action_id="a")
    assert scaling(eks)["desiredSize"] == 1
    await made.set_target_size(REF, 0, action_id="down")  # shrinking still works
    assert scaling(eks)["desiredSize"] == 0


@pytest.mark.asyncio
async def test_unknown_node_group_and_unknown_pool_raise_not_found(eks: Any) -> None:
    made = driver(eks)
    with pytest.raises(NodePoolNotFound):
        await made.get_pool(NodePoolRef("aws", "gpu", "no-such-ng"))
    with pytest.raises(NodePoolNotFound):
        await made.set_target_size(NodePoolRef("aws", "other", "gpu-ng"), 1, action_id="a")


class Autoscaling:
    def __init__(self, fail: str | None = None) -> None:
        self.terminated: list[str] = []
        self.fail = fail

    def terminate_instance_in_auto_scaling_group(self, **call: Any) -> None:
        # boto3's parameter names are AWS's CamelCase.
        assert call["ShouldDecrementDesiredCapacity"] is True
        if self.fail:
            raise ClientError({"Error": {"Code": self.fail, "Message": "x"}}, "Terminate")
        self.terminated.append(call["InstanceId"])


@pytest.mark.asyncio
async def test_delete_nodes_terminates_their_instances_with_decrement(eks: Any) -> None:
    asg = Autoscaling()
    made = driver(eks, Nodes(node("ip-1", "i-1"), node("ip-2", "i-2")), asg)
    await made.delete_nodes(REF, ["ip-2", "not-in-group"], action_id="d")
    assert asg.terminated == ["i-2"]


@pytest.mark.asyncio
async def test_deleting_an_instance_already_gone_succeeds(eks: Any) -> None:
    made = driver(eks, Nodes(node("ip-1", "i-1")), Autoscaling(fail="ValidationError"))
    await made.delete_nodes(REF, ["ip-1"], action_id="d")


def client_error(code: str, status: int = 400) -> ClientError:
    reply = {
        "Error": {"Code": code, "Message": f"arn:aws:iam::123456789012 {SECRET}"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(reply, "UpdateNodegroupConfig")


@pytest.mark.parametrize(
    ("code", "status", "error", "reason"),
    [
        ("ThrottlingException", 400, Throttled, "Throttled"),
        ("ResourceLimitExceededException", 400, QuotaExceeded, "QuotaExceeded"),
        ("ServiceQuotaExceeded", 402, QuotaExceeded, "QuotaExceeded"),
        ("ServerException", 500, ProviderUnavailable, "ProviderUnavailable"),
        ("Whatever", 503, ProviderUnavailable, "ProviderUnavailable"),
        ("ResourceNotFoundException", 404, NodePoolNotFound, "NodePoolNotFound"),
        ("ResourceInUseException", 409, DriverError, "UpdateInProgress"),
        ("AccessDeniedException", 403, DriverError, "CredentialsInvalid"),
    ],
)
def test_client_errors_map_to_typed_errors_without_their_message(
    code: str, status: int, error: type[DriverError], reason: str
) -> None:
    typed = as_typed(client_error(code, status), "update_nodegroup_config")
    assert isinstance(typed, error)
    assert typed.reason == reason
    assert SECRET not in str(typed) and "123456789012" not in str(typed)


@pytest.mark.asyncio
async def test_a_planted_secret_appears_in_no_error_or_log(
    eks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    credentials = parse_credentials_file(
        f"[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = {SECRET}\n"
    )
    assert SECRET not in repr(credentials)

    class Failing:
        def describe_nodegroup(self, **_: Any) -> Any:
            raise client_error("ThrottlingException")

    made = EksDriver(
        ApiClient(), "aws", spec(), credentials=credentials, clients=lambda r, c: (Failing(), None)
    )
    with pytest.raises(Throttled) as raised:
        await made.get_pool(REF)
    assert raised.value.__cause__ is None and raised.value.__context__ is not None
    texts = [str(raised.value), repr(raised.value), caplog.text]
    with pytest.raises(DriverError) as bad:
        parse_credentials_file(f"[default]\naws_secret_access_key = {SECRET}\n")
    texts += [str(bad.value), repr(bad.value)]
    assert all(SECRET not in text for text in texts)


def test_default_clients_use_the_given_credentials() -> None:
    from gpufleet.drivers.eks import _default_clients

    with mock_aws():
        eks, autoscaling = _default_clients(REGION, AwsCredentials("AKIDEXAMPLE", SECRET))
        assert eks.meta.region_name == REGION
        assert autoscaling.meta.service_model.service_name == "autoscaling"


def test_credentials_file_keeps_percent_signs_and_refuses_empty_values() -> None:
    got = parse_credentials_file(
        "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = a%b%%c\n"
    )
    assert got.secret_access_key == "a%b%%c"  # data, not interpolation
    for text in (
        f"[default]\naws_access_key_id =\naws_secret_access_key = {SECRET}\n",
        "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = \n",
    ):
        with pytest.raises(DriverError) as raised:
            parse_credentials_file(text)
        assert raised.value.reason == "CredentialsInvalid"
        assert SECRET not in str(raised.value)


def test_the_sdk_clients_keep_a_connection_per_io_thread() -> None:
    eks, autoscaling = _default_clients("eu-central-1", AwsCredentials("AKIDEXAMPLE", "secret"))

    assert eks.meta.config.max_pool_connections == IO_THREADS
    assert autoscaling.meta.config.max_pool_connections == IO_THREADS

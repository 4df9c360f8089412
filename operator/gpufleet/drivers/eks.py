"""The EKS driver: a node pool is an Amazon EKS managed node group.

- target size: the node group's `scalingConfig.desiredSize` (describe_nodegroup), set with
  update_nodegroup_config, absolutely; a request equal to the current size makes no call,
  so a retry never collides with the update it repeats (EKS answers ResourceInUse).
- bounds: EKS rejects a desiredSize outside [minSize, maxSize]. Above maxSize the driver
  grants maxSize and raises QuotaExceeded (the node group's maxSize is the quota the user
  set); below minSize it grants minSize and raises a non-transient DriverError.
- capacity: before a scale-up the node group's health is read; issues that mean EC2
  cannot launch (InsufficientFreeAddresses, AsgInstanceLaunchFailures, ...) raise
  InsufficientCapacity, or QuotaExceeded where the issue names an EC2 limit, without
  asking for more, so the planner's capacity back-off picks the next choice at once.
- nodes: the cluster's Nodes labelled `eks.amazonaws.com/nodegroup=<externalName>`, read
  through the injected Kubernetes client; instances still booting are not listed until
  their Node registers.
- deleting nodes: each Node's instance (from `spec.providerID`) is terminated through the
  node group's Auto Scaling group with ShouldDecrementDesiredCapacity, the way the
  Cluster Autoscaler removes a chosen node; EKS carries the ASG's desired capacity into
  the node group's scalingConfig. An instance that is gone already succeeds.

boto3 is synchronous: every call runs in a thread. Errors become the seam's typed errors
from the AWS error code alone; AWS messages (ARNs, account ids) never leave this module.
Credentials come from the caller (a Secret it read) or the ambient chain; they are held
only by the boto3 session and never appear in reprs, messages or logs.
"""

from __future__ import annotations

import asyncio
import configparser
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api

from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import (
    DriverError,
    InsufficientCapacity,
    NodePoolNotFound,
    NodePoolRef,
    NodePoolState,
    ProviderUnavailable,
    QuotaExceeded,
    Throttled,
)
from gpufleet.drivers.kube_objects import node_is_ready

NODEGROUP_LABEL = "eks.amazonaws.com/nodegroup"

# Kubernetes calls (group, resource, verb), for the chart's RBAC test; AWS calls are
# listed in AWS_CALLS for the IAM policy the docs show.
CALLS = (("", "nodes", "list"),)
READS = CALLS
AWS_CALLS = (
    "eks:DescribeNodegroup",
    "eks:UpdateNodegroupConfig",
    "autoscaling:TerminateInstanceInAutoScalingGroup",
)

THROTTLING = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
}
QUOTA = {
    "ResourceLimitExceededException",
    "ServiceQuotaExceeded",
    "ServiceQuotaExceededException",
    "LimitExceeded",
    "LimitExceededException",
}
UNAVAILABLE = {"ServerException", "ServiceUnavailableException", "InternalFailure"}
CAPACITY_ISSUES = {
    "InsufficientFreeAddresses",
    "AsgInstanceLaunchFailures",
    "Ec2SubnetInvalidConfiguration",
    "NodeCreationFailure",
}
# EC2 limit errors that AsgInstanceLaunchFailures carries in its message.
QUOTA_MARKERS = ("VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded")


class UpdateInProgress(DriverError):
    """EKS is still applying an earlier update to the node group; try again shortly."""

    reason = "UpdateInProgress"


class NodeGroupBounds(DriverError):
    """The target is below the node group's minSize; a person must change one of them."""

    reason = "NodeGroupBounds"
    transient = False


@dataclass(frozen=True)
class AwsCredentials:
    """Static credentials; repr hides the secret parts (kopf and pytest print reprs)."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def parse_credentials_file(text: str, profile: str = "default") -> AwsCredentials:
    """Credentials from a shared-credentials-file text (what credentialsSecretRef holds)."""
    # No interpolation: a "%" in a key is data, not a reference to another option.
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
        section = parser[profile]
        key_id = section["aws_access_key_id"].strip()
        secret = section["aws_secret_access_key"].strip()
        if not key_id or not secret:
            raise KeyError("empty")  # the same answer as a missing option
        return AwsCredentials(
            key_id, secret, (section.get("aws_session_token") or "").strip() or None
        )
    except (configparser.Error, KeyError):
        # Never echo the text: it is a secret.
        raise DriverError(
            f"the credentials Secret needs aws_access_key_id and aws_secret_access_key "
            f"in profile [{profile}]",
            reason="CredentialsInvalid",
        ) from None


def error_code(error: BaseException) -> tuple[str, int | None]:
    """(AWS error code, HTTP status) of a botocore ClientError; ('', None) otherwise."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return "", None
    code = str((response.get("Error") or {}).get("Code") or "")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


def as_typed(error: Exception, call: str) -> DriverError:
    """The seam's error for a boto3 failure, built from the code only, never the message."""
    if isinstance(error, DriverError):
        return error
    code, status = error_code(error)
    name = type(error).__name__
    summary = f"{call} failed: {code or name}" + (f" (HTTP {status})" if status else "")
    if code in THROTTLING or status == 429:
        return Throttled(summary)
    if code in QUOTA:
        return QuotaExceeded(summary)
    if code == "ResourceNotFoundException":
        return NodePoolNotFound(summary)
    if code == "ResourceInUseException":
        return UpdateInProgress(summary)
    if code in UNAVAILABLE or (status is not None and status >= 500):
        return ProviderUnavailable(summary)
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):
        return ProviderUnavailable(summary)
    if name in ("NoCredentialsError", "PartialCredentialsError") or code in (
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "AccessDeniedException",
    ):
        return DriverError(summary, reason="CredentialsInvalid")
    return DriverError(summary)


# A connection per thread the operator runs blocking calls in (reconcilers/threads.py's
# IO_THREADS; botocore keeps 10): beyond its pool, urllib3 opens one per call and drops it.
POOL_CONNECTIONS = 32


def _default_clients(region: str, credentials: AwsCredentials | None) -> tuple[Any, Any]:
    # Imported here: only providers of type EKS pay for botocore's start-up.
    import boto3
    from botocore.config import Config

    if credentials is None:
        session = boto3.session.Session(region_name=region)  # the ambient chain (IRSA, ...)
    else:
        session = boto3.session.Session(
            region_name=region,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
        )
    config = Config(max_pool_connections=POOL_CONNECTIONS)
    return session.client("eks", config=config), session.client("autoscaling", config=config)


ClientFactory = Callable[[str, AwsCredentials | None], tuple[Any, Any]]


class EksDriver:
    """NodePoolDriver for `driver.type: EKS`; see the module docstring."""

    def __init__(
        self,
        api_client: ApiClient,
        provider: str,
        spec: CloudProviderSpec,
        *,
        credentials: AwsCredentials | None = None,
        clients: ClientFactory = _default_clients,
    ) -> None:
        settings = spec.driver.eks
        if settings is None:  # the API's validation makes this unreachable
            raise DriverError("driver.eks is required for driver type EKS")
        self._core = CoreV1Api(api_client)
        self._provider = provider
        self._spec = spec
        self._cluster = settings.cluster_name
        self._eks, self._autoscaling = clients(settings.region, credentials)

    # -- the Protocol ---------------------------------------------------------------

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        group = await self._nodegroup(ref)
        nodes = await self._nodes(ref)
        return NodePoolState(
            target_size=int(group["scalingConfig"].get("desiredSize", 0)),
            ready_nodes=tuple(sorted(n.metadata.name for n in nodes if node_is_ready(n))),
            all_nodes=tuple(sorted(n.metadata.name for n in nodes)),
        )

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        if size < 0:
            raise DriverError(f"target size must not be negative, got {size}", reason="InvalidSize")
        group = await self._nodegroup(ref)
        scaling = group["scalingConfig"]
        current = int(scaling.get("desiredSize", 0))
        low, high = int(scaling.get("minSize", 0)), int(scaling.get("maxSize", size))
        if size > current:
            _raise_for_health(group)
        granted = min(max(size, low), high)
        if granted != current:
            await self._call(
                "update_nodegroup_config",
                self._eks.update_nodegroup_config,
                clusterName=self._cluster,
                nodegroupName=ref.external_name,
                scalingConfig={"desiredSize": granted},
            )
        if size > high:
            raise QuotaExceeded(f"node group {ref.external_name} allows at most {high} nodes")
        if size < low:
            raise NodeGroupBounds(f"node group {ref.external_name} keeps at least {low} nodes")

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        await self._nodegroup(ref)  # NodePoolNotFound before any termination
        wanted = set(names)
        for node in await self._nodes(ref):
            if node.metadata.name not in wanted:
                continue  # not ours, or gone already: counts nothing
            instance = _instance_id(node.spec.provider_id if node.spec else None)
            if instance is None:
                continue
            try:
                await asyncio.to_thread(
                    self._autoscaling.terminate_instance_in_auto_scaling_group,
                    InstanceId=instance,
                    ShouldDecrementDesiredCapacity=True,
                )
            except Exception as error:
                # AWS answers ValidationError for an instance already terminated (and out
                # of its group): the goal is reached.
                if error_code(error)[0] != "ValidationError":
                    raise as_typed(error, "terminate_instance_in_auto_scaling_group") from None

    # -- AWS and Kubernetes calls --------------------------------------------------------

    def _check_pool(self, ref: NodePoolRef) -> None:
        known = ref.provider == self._provider and any(
            p.name == ref.node_pool for p in self._spec.node_pools
        )
        if not known:
            raise NodePoolNotFound(f"provider {self._provider} has no node pool {ref.node_pool!r}")

    async def _call(self, name: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(method, **kwargs)
        except Exception as error:
            raise as_typed(error, name) from None  # no chained AWS text in tracebacks

    async def _nodegroup(self, ref: NodePoolRef) -> dict[str, Any]:
        self._check_pool(ref)
        reply = await self._call(
            "describe_nodegroup",
            self._eks.describe_nodegroup,
            clusterName=self._cluster,
            nodegroupName=ref.external_name,
        )
        group: dict[str, Any] = reply["nodegroup"]
        return group

    async def _nodes(self, ref: NodePoolRef) -> list[Any]:
        listed = await asyncio.to_thread(
            self._core.list_node, label_selector=f"{NODEGROUP_LABEL}={ref.external_name}"
        )
        return list(listed.items)


def _raise_for_health(group: dict[str, Any]) -> None:
    for issue in (group.get("health") or {}).get("issues") or []:
        code = str(issue.get("code") or "")
        if code not in CAPACITY_ISSUES:
            continue
        message = str(issue.get("message") or "")
        quota = next((m for m in QUOTA_MARKERS if m in message), None)
        if quota is not None:
            raise QuotaExceeded(f"node group reports {code} ({quota})")
        raise InsufficientCapacity(f"node group reports {code}")


def _instance_id(provider_id: str | None) -> str | None:
    """`aws:///eu-central-1a/i-0abc` -> `i-0abc`."""
    if not provider_id or not provider_id.startswith("aws://"):
        return None
    last = provider_id.rsplit("/", 1)[-1]
    return last if last.startswith("i-") else None

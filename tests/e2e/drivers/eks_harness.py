"""Harness for the EKS driver: moto plays the AWS APIs, a thread plays what AWS does.

moto (in process, `mock_aws`) serves EKS, Auto Scaling and EC2 in one region; its state is
process-wide, so the driver's worker threads and the played controller see one cloud. What
an AWS account does beyond answering the APIs is played by PlayedEks, a background thread,
touching only what AWS would:

- EKS keeps the managed node group's `scalingConfig.desiredSize` and the Auto Scaling group
  the node group names (`resources.autoScalingGroups`) in step, both ways: an
  update_nodegroup_config drives the group's desired capacity, and an instance terminated
  with ShouldDecrementDesiredCapacity lowers the node group's desired size.
- Auto Scaling launches and terminates EC2 instances (moto does this itself).
- each instance in service boots and registers a Node on the test bed's API server the way
  EKS's kubelet does: named after the instance (`<instance-id>.<region>.compute.internal`),
  `spec.providerID` `aws:///<zone>/<instance-id>`, EKS's labels plus the node group's labels
  and taints, `nvidia.com/gpu` capacity by instance type; kwok keeps it Ready. A terminated
  instance's Node goes. Boots end when the harness moves its clock (`finish_boot`), once the
  node group and its instances are in step.

The driver is built the way the operator builds it: through the reconcilers' factory, with
AWS credentials read from a Secret on the test bed (`credentialsSecretRef`), so every
contract test also checks that path; the boto3 client factory (the driver's seam) refuses
credentials other than the Secret's. It wraps moto's Auto Scaling client where moto answers
unlike AWS (see AutoScalingAsAws). Capacity failures are the node group's health issues,
as EKS reports them after an Auto Scaling group failed to launch: `inject` sets them in
moto's node group.

Not played: launch failures that happen only after a scale-up was accepted (the driver
cannot see those synchronously; EKS reports them as health issues later), EKS's update
rejections while an update is in progress (ResourceInUseException), throttling, and node
group min/max changes by hand.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError
from driver_harness import ExpectedNode, FakeClock, eventually
from kubernetes.client import ApiClient, CoreV1Api, V1Node
from kubernetes.client.exceptions import ApiException
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.eks.models import eks_backends
from upstream_harness import HARNESS_LABEL, PlayedController

from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import NodePoolDriver, NodePoolRef
from gpufleet.drivers.eks import NODEGROUP_LABEL, AwsCredentials
from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.reconcilers.config import RunConfig
from gpufleet.reconcilers.handlers import driver_factory
from gpufleet.reconcilers.kube import Kube
from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.nodes import GpuNode, Taint

REGION = "eu-central-1"
INSTANCE_TYPE = "p5.48xlarge"
IMAGE = "ami-0123456789abcdef0"  # an EKS GPU AMI; moto launches it without an image record
GPUS_BY_INSTANCE_TYPE = {"p5.48xlarge": 8}
BOOT_SECONDS = 120
SECRET_KEY = "credentials"
# EKS's taint effects -> the Node's.
EFFECTS = {
    "NO_SCHEDULE": "NoSchedule",
    "NO_EXECUTE": "NoExecute",
    "PREFER_NO_SCHEDULE": "PreferNoSchedule",
}
# What EKS reports on the node group when its Auto Scaling group cannot launch.
HEALTH_ISSUES = {
    "InsufficientCapacity": "Could not launch On-Demand Instances. InsufficientInstanceCapacity"
    f" - We currently do not have sufficient {INSTANCE_TYPE} capacity in the Availability"
    " Zone you requested.",
    "QuotaExceeded": "Could not launch On-Demand Instances. VcpuLimitExceeded - You have"
    " requested more vCPU capacity than your current vCPU limit of 192 allows.",
}


def _run(coroutine: Any) -> Any:
    """Runs a coroutine to its end from sync code, on a loop of its own in a worker thread
    (the harness is made in a sync fixture, beside the test's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class AutoScalingAsAws:
    """moto's Auto Scaling client where it answers unlike AWS: terminating an instance that
    is in no group any more is a ValidationError on AWS (moto raises StopIteration)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def terminate_instance_in_auto_scaling_group(self, **call: Any) -> Any:
        try:
            return self._client.terminate_instance_in_auto_scaling_group(**call)
        except StopIteration:
            reply = {
                "Error": {
                    "Code": "ValidationError",
                    "Message": "Instance Id not found - No managed instance found for "
                    f"instance ID: {call['InstanceId']}",
                },
                "ResponseMetadata": {"HTTPStatusCode": 400},
            }
            raise ClientError(reply, "TerminateInstanceInAutoScalingGroup") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@dataclass
class EksHarness:
    api_client: ApiClient
    kubectl: Kubectl
    namespace: str
    kind: str = "EKS"
    provider: str = field(default_factory=lambda: f"eks-{uuid.uuid4().hex[:6]}")
    clock: FakeClock = field(default_factory=FakeClock)

    def __post_init__(self) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.cluster = f"contract-{suffix}"
        self.secret = f"aws-{self.provider}"
        # Made up per harness: what the Secret holds and the only credentials moto accepts.
        self.credentials = AwsCredentials(f"AKIDCONTRACT{suffix.upper()}", uuid.uuid4().hex)
        # No namespace in the reference: the operator's (here the driver namespace).
        self.spec = CloudProviderSpec.model_validate(
            fleets.eks_provider_spec(
                region=REGION,
                cluster_name=self.cluster,
                credentials_secret_ref={"name": self.secret, "key": SECRET_KEY},
                external_name=f"gpu-{suffix}",
                gpus_per_node=GPUS_BY_INSTANCE_TYPE[INSTANCE_TYPE],
                site="test",
                legal_entity="Contract Suite",
            )
        )
        pool = self.spec.node_pools[0]
        assert pool.external_name is not None
        self.ref = NodePoolRef(self.provider, pool.name, pool.external_name)
        self.unknown_ref = NodePoolRef(self.provider, "no-such-pool", "no-such-pool")
        self.expected = ExpectedNode(
            labels={
                NODEGROUP_LABEL: self.ref.external_name,
                "eks.amazonaws.com/capacityType": "ON_DEMAND",
                "node.kubernetes.io/instance-type": INSTANCE_TYPE,
                "topology.kubernetes.io/region": REGION,
                HARNESS_LABEL: self.provider,
                "gpufleet.io/contract": "yes",
            },
            taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
            gpus=GPUS_BY_INSTANCE_TYPE[INSTANCE_TYPE],
        )
        self.node_selector = {HARNESS_LABEL: self.provider}
        self.core = CoreV1Api(self.api_client)
        self._mock = mock_aws()
        self._mock.start()
        try:
            self._create_cloud()
            self._create_secret()
            self.factory = driver_factory(
                self.api_client,
                RunConfig(operator_namespace=self.namespace),
                OperatorMetrics(),
                aws_clients=self._clients,
            )
            # What the fleet loop does each tick before it builds or calls drivers.
            errors = _run(
                self.factory.credentials.refresh(
                    Kube(self.api_client, self.namespace), {self.provider: self.spec}
                )
            )
            assert errors == {}, errors
        except BaseException:
            self._mock.stop()
            raise
        self.controller = PlayedEks(self)
        self.controller.start()

    def _session(self) -> Any:
        return boto3.session.Session(
            region_name=REGION,
            aws_access_key_id=self.credentials.access_key_id,
            aws_secret_access_key=self.credentials.secret_access_key,
        )

    def _create_cloud(self) -> None:
        session = self._session()
        ec2, eks = session.client("ec2"), session.client("eks")
        autoscaling = session.client("autoscaling")
        subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]]
        template = f"{self.ref.external_name}-nodes"
        ec2.create_launch_template(
            LaunchTemplateName=template,
            LaunchTemplateData={"InstanceType": INSTANCE_TYPE, "ImageId": IMAGE},
        )
        eks.create_cluster(
            name=self.cluster,
            roleArn=f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/eks-cluster",
            resourcesVpcConfig={"subnetIds": subnets},
        )
        group = eks.create_nodegroup(
            clusterName=self.cluster,
            nodegroupName=self.ref.external_name,
            nodeRole=f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/eks-node",
            subnets=subnets,
            scalingConfig={"minSize": 0, "maxSize": 4, "desiredSize": 0},
            launchTemplate={"name": template},
            capacityType="ON_DEMAND",
            labels={HARNESS_LABEL: self.provider, "gpufleet.io/contract": "yes"},
            taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}],
        )["nodegroup"]
        self.asg = group["resources"]["autoScalingGroups"][0]["name"]
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=self.asg,
            MinSize=0,
            MaxSize=4,
            DesiredCapacity=0,
            LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
            VPCZoneIdentifier=",".join(subnets),
            Tags=[
                {"Key": "eks:cluster-name", "Value": self.cluster, "PropagateAtLaunch": True},
                {
                    "Key": "eks:nodegroup-name",
                    "Value": self.ref.external_name,
                    "PropagateAtLaunch": True,
                },
            ],
        )

    def _create_secret(self) -> None:
        text = (
            "[default]\n"
            f"aws_access_key_id = {self.credentials.access_key_id}\n"
            f"aws_secret_access_key = {self.credentials.secret_access_key}\n"
        )
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.secret, "namespace": self.namespace},
            "data": {SECRET_KEY: base64.b64encode(text.encode()).decode()},
        }
        self.core.create_namespaced_secret(self.namespace, body)

    def _clients(self, region: str, credentials: AwsCredentials | None) -> tuple[Any, Any]:
        """The driver's boto3 seam: moto's clients, for the Secret's credentials only."""
        if credentials != self.credentials:
            raise AssertionError("the EKS driver did not get the credentials of its Secret")
        assert region == REGION
        session = self._session()
        return session.client("eks"), AutoScalingAsAws(session.client("autoscaling"))

    def new_driver(self) -> NodePoolDriver:
        driver: NodePoolDriver = self.factory(self.provider, self.spec)
        return driver

    async def finish_boot(self) -> None:
        # Boots are timed from when the played EKS saw the instance: wait until it has seen
        # every instance the node group asked for, then let them all boot.
        start = self.controller.ticks

        async def in_step() -> bool:
            return self.controller.ticks >= start + 2 and self.controller.in_step

        await eventually(in_step, what="the node group's instances launched")
        self.clock.advance(BOOT_SECONDS)

    async def inject(self, failure: str) -> None:
        message = HEALTH_ISSUES.get(failure)
        if message is None:
            raise ValueError(f"the EKS harness cannot inject {failure}")
        cluster = eks_backends[DEFAULT_ACCOUNT_ID][REGION].clusters[self.cluster]
        issue = {"code": "AsgInstanceLaunchFailures", "message": message, "resourceIds": [self.asg]}
        # Assigned, not mutated: moto's default health is one dict shared by every group.
        cluster.nodegroups[self.ref.external_name].health = {"issues": [issue]}

    def cleanup(self) -> None:
        self.controller.stop()
        self._mock.stop()
        self.kubectl.run(
            "delete", "nodes", "-l", f"{HARNESS_LABEL}={self.provider}", "--wait=false"
        )
        self.kubectl.run(
            "delete", "secret", self.secret, "-n", self.namespace, "--ignore-not-found"
        )


class PlayedEks(PlayedController):
    """EKS, Auto Scaling's effects and the kubelets of one node group; see the module."""

    def __init__(self, harness: EksHarness) -> None:
        super().__init__()
        self.h = harness
        session = harness._session()  # clients made here, used only by the thread
        self.eks, self.autoscaling = session.client("eks"), session.client("autoscaling")
        self.core = CoreV1Api(harness.api_client)
        self.synced = 0  # the desired size both sides last agreed on
        self.seen: dict[str, float] = {}  # instance id -> the clock when first in service
        self.ticks = 0
        self.in_step = False

    def tick(self) -> None:
        h = self.h
        group = self.eks.describe_nodegroup(
            clusterName=h.cluster, nodegroupName=h.ref.external_name
        )["nodegroup"]
        asg = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[h.asg])[
            "AutoScalingGroups"
        ][0]
        wanted, capacity = int(group["scalingConfig"]["desiredSize"]), int(asg["DesiredCapacity"])
        if wanted != self.synced:  # the node group was updated: its ASG follows
            self.autoscaling.set_desired_capacity(
                AutoScalingGroupName=h.asg, DesiredCapacity=wanted, HonorCooldown=False
            )
            self.synced = wanted
        elif capacity != self.synced:  # an instance terminated with decrement
            self.eks.update_nodegroup_config(
                clusterName=h.cluster,
                nodegroupName=h.ref.external_name,
                scalingConfig={"desiredSize": capacity},
            )
            self.synced = capacity
        instances = {
            i["InstanceId"]: i for i in asg["Instances"] if i["LifecycleState"] == "InService"
        }
        now = h.clock()
        self.seen = {i: self.seen.get(i, now) for i in instances}
        listed = self._nodes()
        for instance_id, instance in instances.items():
            if (
                now >= self.seen[instance_id] + BOOT_SECONDS
                and _node_name(instance_id) not in listed
            ):
                self._register(group, instance)
        for name, instance_id in listed.items():
            if instance_id not in instances:
                _delete_node(self.core, name)
        self.in_step = wanted == capacity == len(instances) == self.synced
        self.ticks += 1

    def _nodes(self) -> dict[str, str | None]:
        """The node group's Nodes: name -> instance id."""
        listed = self.core.list_node(label_selector=f"{HARNESS_LABEL}={self.h.provider}")
        return {
            n.metadata.name: ((n.spec.provider_id or "").rsplit("/", 1)[-1] or None)
            for n in listed.items
        }

    def _register(self, group: dict[str, Any], instance: dict[str, Any]) -> None:
        instance_type = instance.get("InstanceType") or INSTANCE_TYPE
        zone = instance["AvailabilityZone"]
        labels = {
            NODEGROUP_LABEL: group["nodegroupName"],
            "eks.amazonaws.com/capacityType": group.get("capacityType", "ON_DEMAND"),
            "eks.amazonaws.com/nodegroup-image": IMAGE,
            "node.kubernetes.io/instance-type": instance_type,
            "topology.kubernetes.io/region": REGION,
            "topology.kubernetes.io/zone": zone,
            **(group.get("labels") or {}),
        }
        taints = tuple(
            Taint(t["key"], t.get("value", ""), EFFECTS[t["effect"]])
            for t in group.get("taints") or []
        )
        name = _node_name(instance["InstanceId"])
        manifest = GpuNode(
            name, gpus=GPUS_BY_INSTANCE_TYPE[instance_type], labels=labels, taints=taints
        ).manifest()
        manifest["spec"]["providerID"] = f"aws:///{zone}/{instance['InstanceId']}"
        try:
            self.core.create_node(V1Node.model_validate(manifest))
        except ApiException as error:
            if error.status != 409:
                raise


def _node_name(instance_id: str) -> str:
    return f"{instance_id}.{REGION}.compute.internal"  # EKS's resource-name hostnames


def _delete_node(core: CoreV1Api, name: str) -> None:
    try:
        core.delete_node(name)
    except ApiException as error:
        if error.status != 404:
            raise

"""CloudProvider: one cloud or cluster, its subprocessor facts, driver and GPU node pools."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, field_validator, model_validator

from gpufleet.api.common import (
    LIST_MAX,
    NAME_MAX,
    SHORT_MAX,
    TEXT_MAX,
    Conditions,
    Label,
    Model,
    Name,
    SecretKeyRef,
    Taint,
    cel,
    extra,
)
from gpufleet.api.names import LabelValueName
from gpufleet.api.pool import DataClass, GpuType, Jurisdiction
from gpufleet.api.tenancy import SYSTEM_PREFIX


class Role(StrEnum):
    PRIMARY = "Primary"
    SECONDARY = "Secondary"


class CapacityType(StrEnum):
    ON_DEMAND = "OnDemand"
    SPOT = "Spot"


class DriverType(StrEnum):
    SIMULATED = "Simulated"
    CLUSTER_API = "ClusterAPI"
    KARPENTER = "Karpenter"
    EKS = "EKS"


class ClusterApiKind(StrEnum):
    """Which Cluster API object a node pool's `externalName` names."""

    MACHINE_DEPLOYMENT = "MachineDeployment"
    MACHINE_POOL = "MachinePool"


class PodSecurityLevel(StrEnum):
    """A Pod Security Standards level a burst copy must meet (reconcilers/burst/podsecurity.py)."""

    BASELINE = "Baseline"
    RESTRICTED = "Restricted"


class ClusterAccess(Model):
    """Where the provider's nodes and burst workloads live."""

    model_config = Model.model_config | {
        "json_schema_extra": extra(
            **{
                "x-kubernetes-validations": [
                    cel(
                        "!has(self.allowedPriorityClasses) || "
                        "self.allowedPriorityClasses.all(c, !c.startsWith('system-'))",
                        "`allowedPriorityClasses` must not name system-* classes: they are the "
                        "remote cluster's own",
                        ".allowedPriorityClasses",
                    ),
                ]
            }
        )
    }

    kubeconfig_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a kubeconfig for a remote cluster. Absent: the cluster "
        "the operator runs in.",
    )
    # The remote cluster is the admin's, not the tenants': what a pool's template may carry
    # there, and as whom it runs, is decided here, never by the template.
    pod_security_level: PodSecurityLevel = Field(
        default=PodSecurityLevel.BASELINE,
        description="Pod Security Standards level burst copies in the remote cluster must meet "
        "(Baseline or Restricted); a pool whose template does not gets no copy (BurstActive="
        "False, BurstRefused). Namespaces gpufleet creates there enforce it.",
    )
    allowed_service_accounts: list[Name] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="ServiceAccount names a copy may run under, with its token mounted as the "
        "template says. Others run as the namespace's default ServiceAccount, without a token.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )
    # The remote cluster's PriorityClasses are its admin's ladder: a tenant's class name
    # there may mean a preempting, near-system priority, so a copy keeps one only if listed.
    allowed_priority_classes: list[Name] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="PriorityClasses a copy may keep from its template (never system-*). "
        "Others run at the remote cluster's default priority.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )
    existing_namespaces: list[Name] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="Namespaces of the remote cluster, not created by gpufleet, that copies may "
        "go into. A copy for any other existing namespace is refused (BurstRefused).",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )

    @model_validator(mode="after")
    def _no_system_classes(self) -> Self:
        system = [c for c in self.allowed_priority_classes if c.startswith(SYSTEM_PREFIX)]
        if system:
            raise ValueError(
                "`allowedPriorityClasses` must not name system-* classes: they are the remote "
                f"cluster's own: {system}"
            )
        return self


class Subprocessor(Model):
    """Legal facts about the provider as a processor of the pools' data."""

    legal_entity: str = Field(
        min_length=1, max_length=NAME_MAX, description="The company that processes the data."
    )
    jurisdiction: Jurisdiction = Field(
        description="Where the data is processed: country or region code."
    )
    approved: bool = Field(
        default=False, description="Whether the subprocessor is approved by the data controller."
    )
    agreement_ref: str | None = Field(
        default=None,
        max_length=TEXT_MAX,
        description="Reference to the data-processing agreement (an id or URL).",
    )
    data_classes: list[DataClass] = Field(
        default_factory=list,
        max_length=4,
        description="Data classes the provider may process. Empty allows none but Public.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )


class SimulatedDriver(Model):
    """Settings of the simulated cloud, which makes kwok Nodes after each pool's boot time."""

    node_name_prefix: str | None = Field(
        default=None,
        max_length=SHORT_MAX,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Prefix of created Node names; defaults to the provider's name.",
    )


class ClusterApiDriver(Model):
    """Settings of the Cluster API driver: node pools map to MachineDeployments or MachinePools."""

    namespace: Name = Field(description="Namespace of the MachineDeployments or MachinePools.")
    cluster_name: Name = Field(description="The Cluster API Cluster that owns them.")
    kind: ClusterApiKind = Field(
        default=ClusterApiKind.MACHINE_DEPLOYMENT,
        description="What each node pool's externalName names: MachineDeployment (Cluster API "
        "creates a Machine per node) or MachinePool (the infrastructure provider runs the group, "
        "for example a GKE node pool through CAPG's GCPManagedMachinePool; scale-down removes "
        "nodes of the provider's choosing).",
    )


class KarpenterDriver(Model):
    """Settings of the Karpenter driver: node pools map to Karpenter NodePools."""

    node_class_ref_name: Name | None = Field(
        default=None, description="NodeClass that gpufleet-created NodePools refer to."
    )


class EksDriver(Model):
    """Settings of the Amazon EKS driver: node pools map to managed node groups."""

    region: str = Field(
        min_length=1,
        max_length=SHORT_MAX,
        pattern=r"^[a-z]{2}(-[a-z]+)+-\d$",
        description="AWS region, for example eu-central-1.",
    )
    cluster_name: Name = Field(description="EKS cluster name.")
    credentials_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key with AWS credentials in the shared credentials file format. "
        "Absent: the ambient identity (IRSA, instance profile).",
    )


class Driver(Model):
    """How gpufleet actuates the provider: a union, set exactly the member named by type."""

    model_config = Model.model_config | {
        "json_schema_extra": extra(
            **{
                "x-kubernetes-validations": [
                    cel(
                        "self.type == 'Simulated' ? !has(self.clusterAPI) && !has(self.karpenter) && !has(self.eks)"
                        " : self.type == 'ClusterAPI' ? has(self.clusterAPI) && !has(self.simulated) && !has(self.karpenter) && !has(self.eks)"
                        " : self.type == 'Karpenter' ? !has(self.simulated) && !has(self.clusterAPI) && !has(self.eks)"
                        " : has(self.eks) && !has(self.simulated) && !has(self.clusterAPI) && !has(self.karpenter)",
                        "set exactly the driver settings named by `type` (simulated, clusterAPI, karpenter or eks)",
                    )
                ]
            }
        )
    }

    type: DriverType = Field(description="Simulated, ClusterAPI, Karpenter or EKS.")
    simulated: SimulatedDriver | None = Field(
        default=None, description="Settings when type is Simulated."
    )
    cluster_api: ClusterApiDriver | None = Field(
        default=None, alias="clusterAPI", description="Settings when type is ClusterAPI."
    )
    karpenter: KarpenterDriver | None = Field(
        default=None, description="Settings when type is Karpenter."
    )
    eks: EksDriver | None = Field(default=None, description="Settings when type is EKS.")

    @model_validator(mode="after")
    def _one_member(self) -> Self:
        members = {
            DriverType.SIMULATED: self.simulated,
            DriverType.CLUSTER_API: self.cluster_api,
            DriverType.KARPENTER: self.karpenter,
            DriverType.EKS: self.eks,
        }
        others = [t.value for t, m in members.items() if m is not None and t != self.type]
        required = self.type in (DriverType.CLUSTER_API, DriverType.EKS)
        if others or (required and members[self.type] is None):
            raise ValueError(
                "set exactly the driver settings named by `type` (simulated, clusterAPI, karpenter or eks)"
            )
        return self


class NodePool(Model):
    """A group of identical GPU nodes the driver can resize."""

    model_config = Model.model_config | {
        "json_schema_extra": extra(
            **{
                "x-kubernetes-validations": [
                    cel(
                        "self.minNodes <= self.maxNodes",
                        "`minNodes` must be less than or equal to `maxNodes`",
                        ".minNodes",
                    ),
                    cel(
                        "self.idleWattsPerGpu <= self.wattsPerGpu",
                        "`idleWattsPerGpu` must be less than or equal to `wattsPerGpu`",
                        ".idleWattsPerGpu",
                    ),
                ]
            }
        )
    }

    name: LabelValueName = Field(
        description="Name of the node pool, unique within the provider; the value of label "
        "gpufleet.io/node-pool on its nodes, so at most 63 characters."
    )
    external_name: Name | None = Field(
        default=None,
        description="Name of the pool in the backend (MachineDeployment or MachinePool, "
        "Karpenter NodePool, EKS node group); defaults to name.",
    )
    gpu_type: GpuType = Field(description="GPU type of every node, for example H100.")
    gpus_per_node: int = Field(ge=1, le=64, description="GPUs on each node.")
    watts_per_gpu: int = Field(ge=1, le=5000, description="Power per GPU at full load, in watts.")
    idle_watts_per_gpu: int = Field(ge=0, le=5000, description="Power per GPU when idle, in watts.")
    node_overhead_watts: int = Field(
        default=0, ge=0, le=20_000, description="Power of the rest of the node (CPUs, fans, NICs)."
    )
    hourly_price_cents: int = Field(
        default=0, ge=0, le=100_000_000, description="Price of one node for one hour, in cents."
    )
    capacity_type: CapacityType = Field(
        default=CapacityType.ON_DEMAND, description="OnDemand or Spot."
    )
    min_nodes: int = Field(default=0, ge=0, le=100_000, description="Never fewer nodes than this.")
    max_nodes: int = Field(ge=0, le=100_000, description="Never more nodes than this.")
    boot_seconds: int = Field(
        default=300, ge=0, le=7200, description="Time from requesting a node to it being Ready."
    )
    scale_down_delay_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86400,
        description="How long a node stays after demand stops needing it, serving warm "
        "spares meanwhile except for its last 120 s (at most half the delay), when the "
        "spares leave first. Unset: bootSeconds (a node needed again within its boot time "
        "costs less kept than booted again); 0 removes unneeded nodes at once.",
    )
    site: str = Field(
        min_length=1,
        max_length=SHORT_MAX,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Site (data centre) the nodes draw power from; PowerBudgets select by it.",
    )
    labels: list[Label] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="Labels every node carries.",
        json_schema_extra=extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["key"]}
        ),
    )
    taints: list[Taint] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="Taints every node carries.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "atomic"}),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.min_nodes > self.max_nodes:
            raise ValueError("`minNodes` must be less than or equal to `maxNodes`")
        if self.idle_watts_per_gpu > self.watts_per_gpu:
            raise ValueError("`idleWattsPerGpu` must be less than or equal to `wattsPerGpu`")
        return self


class CloudProviderSpec(Model):
    """Desired state of a cloud or cluster that supplies GPU nodes."""

    role: Role = Field(
        default=Role.PRIMARY,
        description="Primary providers are filled first; Secondary ones take burst overflow.",
    )
    order: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Preference among providers of the same role; lower first.",
    )
    cluster: ClusterAccess = Field(
        default_factory=ClusterAccess, description="Where the provider's capacity lives."
    )
    subprocessor: Subprocessor = Field(description="Data-processing facts the data policies check.")
    driver: Driver = Field(description="How node pools are resized.")
    gpu_quota: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="Most GPUs the provider grants across node pools.",
    )
    namespaces: list[Name] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="Namespaces whose pools may use this provider; empty allows every "
        "namespace. The platform's rule, above any pool's data policy or burst settings.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )
    node_pools: list[NodePool] = Field(
        min_length=1,
        max_length=256,
        description="GPU node pools; names are unique.",
        json_schema_extra=extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
        ),
    )

    @field_validator("node_pools")
    @classmethod
    def _unique(cls, pools: list[NodePool]) -> list[NodePool]:
        names = [p.name for p in pools]
        if len(set(names)) != len(names):
            raise ValueError("`nodePools[].name` must be unique")
        return pools


class NodePoolStatus(Model):
    """Observed and desired size of one node pool."""

    name: Name = Field(description="Node pool name.")
    desired_nodes: int = Field(ge=0, description="Nodes the plan wants.")
    ready_nodes: int = Field(ge=0, description="Nodes observed Ready.")
    gpus_allocated: int = Field(
        default=0, ge=0, description="GPUs requested by the plan's replicas."
    )


class CloudProviderStatus(Model):
    """What gpufleet observed of the provider."""

    observed_generation: int = Field(default=0, ge=0, description="Generation the status is for.")
    ready_nodes: int = Field(default=0, ge=0, description="Ready nodes across node pools.")
    gpus_in_use: int = Field(default=0, ge=0, description="GPUs on nodes the plan keeps.")
    node_pools: list[NodePoolStatus] = Field(
        default_factory=list,
        max_length=256,
        description="Per node pool.",
        json_schema_extra=extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
        ),
    )
    conditions: Conditions


class CloudProvider(Model):
    model_config = Model.model_config | {"extra": "ignore"}

    api_version: str
    kind: str
    spec: CloudProviderSpec
    status: CloudProviderStatus | None = None

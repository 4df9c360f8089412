"""ServingPool: one served model, the queue that drives it, and where it may run."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator

from gpufleet.api.common import (
    LIST_MAX,
    NAME_MAX,
    QUERY_MAX,
    SHORT_MAX,
    Conditions,
    Model,
    Name,
    cel,
    extra,
)

# The value of label gpufleet.io/gpu-type on nodes: shaped like a label value.
GpuType = Annotated[
    str,
    Field(
        min_length=1,
        max_length=SHORT_MAX,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
    ),
]
Jurisdiction = Annotated[
    str,
    Field(
        min_length=2,
        max_length=12,
        pattern=r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$",
        description="ISO 3166 country or region code such as DE, US-CA, or EU.",
    ),
]


class Mode(StrEnum):
    ACTIVE = "Active"
    DRY_RUN = "DryRun"


class DataClass(StrEnum):
    PUBLIC = "Public"
    INTERNAL = "Internal"
    CONFIDENTIAL = "Confidential"
    RESTRICTED = "Restricted"


class TargetKind(StrEnum):
    """The kinds the operator watches and scales (reconcilers/handlers.py indexes them)."""

    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"


# The one API version each kind is watched at; another would name a workload never seen.
TARGET_API_VERSIONS = {TargetKind.DEPLOYMENT: "apps/v1", TargetKind.STATEFUL_SET: "apps/v1"}


def _api_version_message(kind: TargetKind) -> str:
    return f"`scaleTargetRef.apiVersion` must be {TARGET_API_VERSIONS[kind]} for kind {kind}"


class ScaleTargetRef(Model):
    """The workload whose replicas gpufleet sets, through its scale subresource (as the HPA)."""

    model_config = Model.model_config | {
        "json_schema_extra": extra(
            **{
                "x-kubernetes-validations": [
                    cel(
                        f"self.kind != '{kind}' || self.apiVersion == '{version}'",
                        _api_version_message(kind),
                        ".apiVersion",
                    )
                    for kind, version in TARGET_API_VERSIONS.items()
                ]
            }
        )
    }

    api_version: str = Field(
        default="apps/v1",
        min_length=1,
        max_length=NAME_MAX,
        description="API version of the target: apps/v1.",
    )
    kind: TargetKind = Field(
        default=TargetKind.DEPLOYMENT, description="Kind of the target: Deployment or StatefulSet."
    )
    name: Name = Field(description="Name of the target, in the pool's namespace.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.api_version != TARGET_API_VERSIONS[self.kind]:
            raise ValueError(_api_version_message(self.kind))
        return self


class InferencePoolRef(Model):
    """A Gateway API Inference Extension InferencePool (inference.networking.k8s.io/v1) that
    routes to the workload. It has no scale subresource: scaleTargetRef is still what is
    scaled. Its selector says which of the workload's pods serve, and its endpoint picker's
    metrics give the queue when queue.query is unset (docs/gateway.md)."""

    name: Name = Field(description="Name of the InferencePool, in the pool's namespace.")


# The one API version InferencePools are watched at (reconcilers/handlers.py).
INFERENCE_POOL_GROUP = "inference.networking.k8s.io"
INFERENCE_POOL_VERSION = "v1"


class QueueSignal(Model):
    """The queue-depth signal, read from Prometheus."""

    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=QUERY_MAX,
        description="PromQL returning the pool's total queue depth (requests waiting) as one "
        "sample. A missing, empty, NaN or stale result holds capacity; it never scales down. "
        "Required unless inferencePoolRef is set; then, unset, the queue is the endpoint "
        "picker's: inference_pool_average_queue_size times inference_pool_ready_pods of that "
        "InferencePool, in the pool's namespace.",
    )
    target_per_replica: int = Field(
        ge=1,
        le=100_000,
        description="Queue depth one replica should carry; desired replicas = "
        "ceil(queue / targetPerReplica), as KEDA's queue scalers do.",
    )
    activation_threshold: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="A pool at zero replicas scales up only when the queue exceeds this.",
    )
    arrival_rate_query: str | None = Field(
        default=None,
        max_length=QUERY_MAX,
        description="Optional PromQL returning arrivals per second. With serviceRates it "
        "enables the queueing model (replicas sized for the wait SLO) and the forecast.",
    )


class ServiceRate(Model):
    """How fast one replica serves on one GPU type."""

    gpu_type: GpuType = Field(description="GPU type, as in a node pool's gpuType.")
    requests_per_minute: int = Field(
        ge=1, le=1_000_000, description="Requests one replica completes per minute at full load."
    )
    watts_per_gpu: int | None = Field(
        default=None,
        ge=1,
        le=5000,
        description="A floor on the power one GPU draws while this model keeps it busy. "
        "PowerBudgets count this pool's busy GPUs at the node pool's wattsPerGpu until the "
        "operator measures the pool's own draw (DCGM_FI_DEV_POWER_USAGE of its pods), then "
        "at the measurement; this figure may raise that estimate, never lower it. "
        "status.power says which figure counted.",
    )


class PolicyType(StrEnum):
    PODS = "Pods"
    PERCENT = "Percent"


class SelectPolicy(StrEnum):
    MAX = "Max"
    MIN = "Min"
    DISABLED = "Disabled"


class ScalingPolicy(Model):
    """A limit on how much may change within a period, as in the HPA's behavior."""

    type: PolicyType = Field(
        description="Pods (an absolute count) or Percent (of current replicas)."
    )
    value: int = Field(ge=1, le=100_000, description="The amount of change allowed in one period.")
    period_seconds: int = Field(
        ge=1, le=1800, description="The window the change is counted over, in seconds."
    )


class ScalingRules(Model):
    """Stabilization and rate limits for one direction."""

    stabilization_window_seconds: int | None = Field(
        default=None,
        ge=0,
        le=3600,
        description="Recommendations over this window are considered and the most "
        "conservative one is used. Defaults: 0 for scale up, 300 for scale down.",
    )
    select_policy: SelectPolicy = Field(
        default=SelectPolicy.MAX,
        description="Which policy wins when several apply: Max, Min, or Disabled (no change).",
    )
    policies: list[ScalingPolicy] = Field(
        default_factory=list,
        max_length=8,
        description="Rate limits; empty means the HPA defaults for this direction.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "atomic"}),
    )


class Behavior(Model):
    """Scaling behaviour in the shape of the HPA's spec.behavior."""

    scale_up: ScalingRules | None = Field(default=None, description="Rules for scaling up.")
    scale_down: ScalingRules | None = Field(default=None, description="Rules for scaling down.")


class Slo(Model):
    """The service level the pool is sized for."""

    queue_wait_seconds: int = Field(
        ge=1, le=86_400, description="A request should wait no longer than this in the queue."
    )
    target_percent: int = Field(
        default=99,
        ge=50,
        le=100,
        description="Share of requests that must meet queueWaitSeconds.",
    )


class DataPolicy(Model):
    """Where the pool's data may be processed; burst targets must satisfy all of it."""

    data_class: DataClass = Field(
        default=DataClass.INTERNAL,
        description="Sensitivity of the requests: Public, Internal, Confidential or Restricted. "
        "A provider must list it in subprocessor.dataClasses.",
    )
    allowed_jurisdictions: list[Jurisdiction] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="Jurisdictions where the data may be processed. Empty allows any. EU "
        "matches every EU member state code.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )
    approved_subprocessors_only: bool = Field(
        default=True,
        description="Only use providers whose subprocessor.approved is true.",
    )


class Tier(Model):
    """A class of requests; tiers are listed highest first and throttled lowest first."""

    name: str = Field(
        min_length=1,
        max_length=SHORT_MAX,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Tier name as the gateway knows it, for example paid or free.",
    )
    share_percent: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Expected share of the pool's arrivals, used when arrivalRateQuery is unset.",
    )
    arrival_rate_query: str | None = Field(
        default=None,
        max_length=QUERY_MAX,
        description="PromQL returning this tier's arrivals per second.",
    )


class Burst(Model):
    """Whether and where the pool may overflow beyond primary providers."""

    enabled: bool = Field(
        default=False, description="Allow placing replicas on secondary providers."
    )
    providers: list[Name] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="CloudProviders the pool may burst to, in order of preference. Empty "
        "means any secondary that the data policy allows.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )
    max_replicas: int | None = Field(
        default=None, ge=0, le=100_000, description="Upper bound on replicas placed by burst."
    )
    max_lead_seconds: int | None = Field(
        default=None,
        ge=0,
        le=7200,
        description="Burst also when a primary node pool's lead time (bootSeconds plus "
        "modelLoadSeconds) exceeds this and a secondary one is faster. Unset: boot time alone "
        "never triggers burst.",
    )


class Preemption(Model):
    """How the pool yields GPUs that higher-priority pools need on the existing nodes."""

    drain_timeout_seconds: int = Field(
        default=120,
        ge=0,
        le=3600,
        description="Seconds a preempted replica is given, from SIGTERM, to finish its "
        "in-flight requests before it is killed. Replaces the pod's "
        "terminationGracePeriodSeconds for that eviction; 0 stops it at once (sent as 1, "
        "never a forced delete). PodDisruptionBudgets are honoured either way.",
    )


class WarmSpares(Model):
    """Extra replicas on GPUs left idle on the nodes the fleet keeps for demand."""

    enabled: bool = Field(
        default=False,
        description="Run replicas on GPUs that the nodes kept for demand leave idle, after "
        "every pool's demand is placed (highest priority first). They add no node and hold "
        "every power budget; they serve a spike at once instead of after a model load, and "
        "are the first replicas a higher-priority pool takes back. They leave a node in the "
        "last part of its scale-down delay, before the node goes.",
    )
    max_replicas: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description="At most this many spare replicas; unset: as many as the idle GPUs "
        "and maxReplicas allow.",
    )


_QUERY_REQUIRED = "`queue.query` is required unless `inferencePoolRef` is set"


class ServingPoolSpec(Model):
    """Desired behaviour of a serving pool."""

    model_config = Model.model_config | {
        "json_schema_extra": extra(
            **{
                "x-kubernetes-validations": [
                    cel(
                        "self.minReplicas <= self.maxReplicas",
                        "`minReplicas` must be less than or equal to `maxReplicas`",
                        ".minReplicas",
                    ),
                    cel(
                        "!has(self.serviceRates) || self.serviceRates.all(r, r.gpuType in self.gpuTypes)",
                        "every `serviceRates[].gpuType` must be listed in `gpuTypes`",
                        ".serviceRates",
                    ),
                    cel(
                        "!has(self.burst) || !has(self.burst.maxReplicas) || self.burst.maxReplicas <= self.maxReplicas",
                        "`burst.maxReplicas` must be less than or equal to `maxReplicas`",
                        ".burst.maxReplicas",
                    ),
                    cel(
                        "has(self.queue.query) || has(self.inferencePoolRef)",
                        _QUERY_REQUIRED,
                        ".queue.query",
                    ),
                ]
            }
        )
    }

    scale_target_ref: ScaleTargetRef = Field(description="The workload gpufleet scales.")
    inference_pool_ref: InferencePoolRef | None = Field(
        default=None,
        description="The Gateway API Inference Extension InferencePool in front of the "
        "workload, if any: its selector finds the serving pods, and its endpoint picker's "
        "queue is the signal when queue.query is unset. The workload's pod template must "
        "carry the selector's labels, and no other workload's pods may match it.",
    )
    gpus_per_replica: int = Field(default=1, ge=1, le=64, description="GPUs each replica requests.")
    gpu_types: list[GpuType] = Field(
        min_length=1,
        max_length=16,
        description="GPU types the model can run on, matched against node pools' gpuType.",
        json_schema_extra=extra(**{"x-kubernetes-list-type": "set"}),
    )
    queue: QueueSignal = Field(description="The queue-depth signal that drives scaling.")
    service_rates: list[ServiceRate] = Field(
        default_factory=list,
        max_length=16,
        description="Measured service rate per replica by GPU type, if known.",
        json_schema_extra=extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["gpuType"]}
        ),
    )
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=100_000,
        description="Never fewer replicas than this (0 allows scale to zero).",
    )
    max_replicas: int = Field(ge=1, le=100_000, description="Never more replicas than this.")
    behavior: Behavior | None = Field(
        default=None, description="Stabilization windows and rate limits, as in the HPA."
    )
    slo: Slo | None = Field(default=None, description="Queue-wait objective the pool is sized for.")
    model_load_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="Time for a new replica to load its model once its node is ready.",
    )
    allow_spot: bool = Field(
        default=False,
        description="Allow Spot node pools; they are then preferred over OnDemand ones.",
    )
    data_policy: DataPolicy = Field(
        default_factory=DataPolicy, description="Where the pool's data may be processed."
    )
    burst: Burst = Field(default_factory=Burst, description="Overflow to secondary providers.")
    preemption: Preemption = Field(
        default_factory=Preemption,
        description="How replicas drain when higher-priority pools need the GPUs they hold.",
    )
    warm_spares: WarmSpares = Field(
        default_factory=WarmSpares,
        description="Spare replicas on idle GPUs of nodes already paid for (off by default).",
    )
    mode: Mode = Field(
        default=Mode.ACTIVE,
        description="Active actuates the plan; DryRun plans and reports but changes nothing.",
    )
    tiers: list[Tier] = Field(
        default_factory=list,
        max_length=8,
        description="Request tiers, highest first. When the fleet cannot carry the demand, the "
        "sustainable rate is split in this order and published for the gateway to enforce.",
        json_schema_extra=extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError("`minReplicas` must be less than or equal to `maxReplicas`")
        unknown = [r.gpu_type for r in self.service_rates if r.gpu_type not in self.gpu_types]
        if unknown:
            raise ValueError(
                f"every `serviceRates[].gpuType` must be listed in `gpuTypes`: {unknown}"
            )
        if self.burst.max_replicas is not None and self.burst.max_replicas > self.max_replicas:
            raise ValueError("`burst.maxReplicas` must be less than or equal to `maxReplicas`")
        if self.queue.query is None and self.inference_pool_ref is None:
            raise ValueError(_QUERY_REQUIRED)
        return self

    @field_validator("gpu_types")
    @classmethod
    def _distinct(cls, gpu_types: list[str]) -> list[str]:
        if len(set(gpu_types)) != len(gpu_types):
            raise ValueError("`gpuTypes` must not repeat a type")
        return gpu_types


class ProviderReplicas(Model):
    """Replicas of the pool on one provider."""

    provider: Name = Field(description="CloudProvider name.")
    desired_replicas: int = Field(ge=0, description="Replicas the plan places there.")
    current_replicas: int = Field(ge=0, description="Replicas observed there.")


class ReferenceKind(StrEnum):
    SECRET = "Secret"
    CONFIG_MAP = "ConfigMap"
    PERSISTENT_VOLUME_CLAIM = "PersistentVolumeClaim"
    SERVICE_ACCOUNT = "ServiceAccount"


class BurstReference(Model):
    """An object a burst copy names but does not carry: the remote cluster must provide it."""

    kind: ReferenceKind = Field(
        description="Secret, ConfigMap, PersistentVolumeClaim or ServiceAccount."
    )
    name: Name = Field(description="Its name, in the copy's namespace.")


class TierStatus(Model):
    """What one tier may send while the pool is throttled."""

    name: str = Field(max_length=SHORT_MAX, description="Tier name.")
    demand_requests_per_minute: int = Field(ge=0, description="Arrivals seen for the tier.")
    allowed_requests_per_minute: int = Field(ge=0, description="Arrivals the gateway should admit.")


class Throttle(Model):
    """The rate the planned capacity sustains at the SLO, set only while demand exceeds it."""

    sustainable_requests_per_minute: int = Field(ge=0, description="Whole pool, at its SLO.")
    demand_requests_per_minute: int = Field(ge=0, description="Arrivals seen.")
    tiers: list[TierStatus] = Field(
        default_factory=list,
        max_length=8,
        description="Per tier, highest first.",
        json_schema_extra=extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
        ),
    )


class RateSource(StrEnum):
    """Which service rate sized the pool."""

    DECLARED = "Declared"  # no busy stretch observed yet (or long ago)
    OBSERVED = "Observed"  # the queue's measurement, believed in full
    BLENDED = "Blended"  # part way from the declared rate to the observed one


class ServiceRateStatus(Model):
    """Requests a minute one replica serves on the pool's slowest GPU type."""

    declared_requests_per_minute: int = Field(ge=0, description="From spec.serviceRates.")
    observed_requests_per_minute: int | None = Field(
        default=None,
        ge=0,
        description="Measured while requests waited: arrivals less the queue's growth, over "
        "the serving replicas. Unset until a busy stretch was seen.",
    )
    used_requests_per_minute: int = Field(ge=0, description="What sized the pool.")
    source: RateSource = Field(description="Declared, Observed, or Blended between them.")


class PowerSource(StrEnum):
    """Which figure PowerBudgets counted a pool's busy GPUs at."""

    NAMEPLATE = "Nameplate"  # the node pool's wattsPerGpu: the pool's draw is not measured
    MEASURED = "Measured"  # the pool's pods' peak draw, within the node pool's idle..nameplate
    DECLARED = "Declared"  # the pool's serviceRates[].wattsPerGpu, above the other figure


class PowerStatus(Model):
    """The watts PowerBudgets counted one busy GPU of the pool at, on one GPU type."""

    gpu_type: GpuType = Field(description="GPU type, as in a node pool's gpuType.")
    watts_per_gpu: int = Field(ge=0, description="Watts counted per busy GPU.")
    source: PowerSource = Field(
        description="Nameplate (the node pool's wattsPerGpu), Measured (the pods' peak draw) "
        "or Declared (serviceRates[].wattsPerGpu, which may only raise the others)."
    )


class PriorityStatus(Model):
    """The priority the pool is planned at: its pods' PriorityClass, where the namespace's
    TenantPolicy allows it, else the cluster's default."""

    value: int = Field(ge=-2_147_483_648, le=1_000_000_000, description="Priority value.")
    priority_class_name: str | None = Field(
        default=None,
        max_length=NAME_MAX,
        description="The class whose value it is; unset: no class (0).",
    )


class ServingPoolStatus(Model):
    """What gpufleet observed and decided for the pool."""

    observed_generation: int = Field(default=0, ge=0, description="Generation the status is for.")
    desired_replicas: int = Field(
        default=0, ge=0, description="Replicas the plan wants, all providers."
    )
    current_replicas: int = Field(default=0, ge=0, description="Replicas observed, all providers.")
    queue_depth: int | None = Field(default=None, ge=0, description="Last queue depth read.")
    providers: list[ProviderReplicas] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="Replicas per provider.",
        json_schema_extra=extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["provider"]}
        ),
    )
    burst_percent: int = Field(
        default=0, ge=0, le=100, description="Share of desired replicas on burst providers."
    )
    power_watts: int = Field(
        default=0, ge=0, description="Estimated power drawn by the pool's GPUs."
    )
    power: list[PowerStatus] = Field(
        default_factory=list,
        max_length=LIST_MAX,
        description="Per GPU type, the watts PowerBudgets counted a busy GPU at, and why.",
        json_schema_extra=extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["gpuType"]}
        ),
    )
    last_scale_time: datetime | None = Field(
        default=None, description="When the plan's answer last changed."
    )
    throttle: Throttle | None = Field(
        default=None,
        description="Set while the fleet cannot carry the demand: what the gateway should admit.",
    )
    energy_per_request_milliwatt_hours: int | None = Field(
        default=None, ge=0, description="Estimated energy per served request, in mWh."
    )
    service_rate: ServiceRateStatus | None = Field(
        default=None,
        description="The service rate the pool was sized with, and what the queue showed.",
    )
    priority: PriorityStatus | None = Field(
        default=None,
        description="The priority the plan gives the pool, from the platform's PriorityClasses.",
    )
    burst_references: list[BurstReference] | None = Field(
        default=None,
        max_length=LIST_MAX,
        description="What the pool's burst copies name but do not carry (Secrets, ConfigMaps, "
        "claims, an allowed ServiceAccount): create them in each remote cluster it bursts to.",
        json_schema_extra=extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["kind", "name"]}
        ),
    )
    conditions: Conditions


class ServingPool(Model):
    """The pool as a whole object; used for parsing, tests and examples."""

    model_config = Model.model_config | {"extra": "ignore"}

    api_version: str
    kind: str
    spec: ServingPoolSpec
    status: ServingPoolStatus | None = None

"""Fleets for the e2e tests and benchmarks: the manifests of simulated clouds, power
budgets, pools and their workloads, and applying them. Keyword arguments carry what
differs between callers; the defaults are what most of them use."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.layout import repo_root

API_VERSION = "gpufleet.io/v1alpha1"
OPERATOR_NAMESPACE = "gpufleet-system"
PROVIDER_LABEL = "gpufleet.io/provider"
GPU_TYPE_LABEL = "gpufleet.io/gpu-type"
SERVER_IMAGE = "example.com/server:1"


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def queue_query(namespace: str, pool: str) -> str:
    """The PromQL of a pool's queue depth, as the test bed's exporter labels it."""
    return f'sum(inference_queue_depth{{namespace="{namespace}",pool="{pool}"}})'


def node_pool(
    name: str,
    *,
    gpu_type: str,
    site: str,
    max_nodes: int,
    watts_per_gpu: int,
    idle_watts_per_gpu: int,
    node_overhead_watts: int | None = None,
    boot_seconds: int = 1,
    gpus_per_node: int = 8,
) -> dict[str, Any]:
    """One entry of a CloudProvider's `nodePools`."""
    overhead = {} if node_overhead_watts is None else {"nodeOverheadWatts": node_overhead_watts}
    return {
        "name": name,
        "gpuType": gpu_type,
        "gpusPerNode": gpus_per_node,
        "wattsPerGpu": watts_per_gpu,
        "idleWattsPerGpu": idle_watts_per_gpu,
        **overhead,
        "maxNodes": max_nodes,
        "bootSeconds": boot_seconds,
        "site": site,
    }


def cloud_provider(
    name: str,
    *,
    legal_entity: str,
    node_pools: Sequence[Mapping[str, Any]],
    jurisdiction: str = "DE",
    approved: bool = True,
    gpu_quota: int | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A simulated cloud; `spec` adds fields (`role`, `cluster`, ...) as they are."""
    quota = {} if gpu_quota is None else {"gpuQuota": gpu_quota}
    return {
        "apiVersion": API_VERSION,
        "kind": "CloudProvider",
        "metadata": {"name": name},
        "spec": {
            "subprocessor": {
                "legalEntity": legal_entity,
                "jurisdiction": jurisdiction,
                "approved": approved,
                "dataClasses": ["Internal"],
            },
            "driver": {"type": "Simulated"},
            **quota,
            "nodePools": [dict(p) for p in node_pools],
            **spec,
        },
    }


def eks_provider_spec(
    *,
    region: str = "eu-central-1",
    cluster_name: str = "gpu-cluster",
    credentials_secret_ref: Mapping[str, str] | None = None,
    external_name: str = "gpu-ng",
    gpus_per_node: int = 8,
    site: str = "fra1",
    legal_entity: str = "Example",
) -> dict[str, Any]:
    """The spec of an EKS provider with one managed node group of H100 nodes (`gpu`, the
    group `external_name`); without `credentials_secret_ref`, the operator's identity."""
    eks: dict[str, Any] = {"region": region, "clusterName": cluster_name}
    if credentials_secret_ref is not None:
        eks["credentialsSecretRef"] = dict(credentials_secret_ref)
    return {
        "subprocessor": {"legalEntity": legal_entity, "jurisdiction": "DE"},
        "driver": {"type": "EKS", "eks": eks},
        "nodePools": [
            {
                "name": "gpu",
                "externalName": external_name,
                "gpuType": "H100",
                "gpusPerNode": gpus_per_node,
                "wattsPerGpu": 700,
                "idleWattsPerGpu": 90,
                "maxNodes": 4,
                "site": site,
            }
        ],
    }


def power_budget(
    site: str, *, cap_kilowatts: int, headroom_percent: int | None = None
) -> dict[str, Any]:
    """A PowerBudget named after the one site it caps."""
    headroom = {} if headroom_percent is None else {"headroomPercent": headroom_percent}
    return {
        "apiVersion": API_VERSION,
        "kind": "PowerBudget",
        "metadata": {"name": site},
        "spec": {"capKilowatts": cap_kilowatts, **headroom, "scope": {"sites": [site]}},
    }


def behavior(*, scale_down_window_seconds: int | None = None) -> dict[str, Any]:
    """Scale up by up to 100 pods a second; scale down after the window (if none is given,
    after the operator's default)."""
    scale_up = {"scaleUp": {"policies": [{"type": "Pods", "value": 100, "periodSeconds": 1}]}}
    if scale_down_window_seconds is None:
        return scale_up
    return {**scale_up, "scaleDown": {"stabilizationWindowSeconds": scale_down_window_seconds}}


def serving_pool(
    namespace: str,
    name: str,
    *,
    gpu_types: Sequence[str],
    max_replicas: int,
    behavior: Mapping[str, Any],
    min_replicas: int = 1,
    target: str | None = None,
    target_kind: str | None = None,
    target_per_replica: int = 2,
    arrival_rate_query: str | None = None,
    jurisdictions: Sequence[str] = ("DE",),
    model_load_seconds: int = 1,
    **spec: Any,
) -> dict[str, Any]:
    """A pool scaled on its queue depth (`queue_query`); its target is the Deployment (or
    `target_kind`) named `target`, by default the pool's own name. `spec` adds fields
    (`mode`, `burst`, `tiers`, ...) as they are."""
    kind = {} if target_kind is None else {"kind": target_kind}
    queue: dict[str, Any] = {
        "query": queue_query(namespace, name),
        "targetPerReplica": target_per_replica,
    }
    if arrival_rate_query is not None:
        queue["arrivalRateQuery"] = arrival_rate_query
    return {
        "apiVersion": API_VERSION,
        "kind": "ServingPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {**kind, "name": target or name},
            "gpuTypes": list(gpu_types),
            "queue": queue,
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "modelLoadSeconds": model_load_seconds,
            "dataPolicy": {"allowedJurisdictions": list(jurisdictions)},
            "behavior": dict(behavior),
            **spec,
        },
    }


def gpu_pod_spec(
    *,
    node_selector: Mapping[str, str] | None = None,
    affinity: Mapping[str, Any] | None = None,
    container: str = "server",
    image: str = SERVER_IMAGE,
    volume_mounts: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A pod that asks for one GPU and tolerates the GPU nodes' taint."""
    server: dict[str, Any] = {
        "name": container,
        "image": image,
        "resources": {"limits": {"nvidia.com/gpu": 1}},
    }
    if volume_mounts:
        server["volumeMounts"] = [dict(m) for m in volume_mounts]
    placement: dict[str, Any] = {}
    if affinity is not None:
        placement["affinity"] = dict(affinity)
    if node_selector is not None:
        placement["nodeSelector"] = dict(node_selector)
    return {
        **placement,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "containers": [server],
    }


def deployment(
    namespace: str,
    name: str,
    *,
    replicas: int = 1,
    node_selector: Mapping[str, str] | None = None,
    affinity: Mapping[str, Any] | None = None,
    container: str = "server",
    image: str = SERVER_IMAGE,
    priority_class: str | None = None,
) -> dict[str, Any]:
    """A Deployment of `gpu_pod_spec` pods, labelled `app: <name>`, running with
    `priority_class` if given (which sets its pool's priority)."""
    pod = gpu_pod_spec(
        node_selector=node_selector, affinity=affinity, container=container, image=image
    )
    if priority_class is not None:
        pod["priorityClassName"] = priority_class
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod},
        },
    }


def apply(
    kubectl: Kubectl, items: Sequence[Mapping[str, Any]], *, field_manager: str | None = None
) -> None:
    """Server-side apply of `items` as one List, under `field_manager` (kubectl's own if
    none is given)."""
    manager = () if field_manager is None else (f"--field-manager={field_manager}",)
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)})
    kubectl.run("apply", "--server-side", *manager, "-f", "-", stdin=manifest)


def install_crds(kubectl: Kubectl, *manifests: str) -> None:
    """Applies the repository's CRDs and `manifests` (YAML or JSON text), waits until every
    CRD is established, and creates the operator's namespace."""
    kubectl.run("apply", "--server-side", "-f", str(repo_root() / "crds"))
    for manifest in manifests:
        kubectl.run("apply", "--server-side", "-f", "-", stdin=manifest)
    kubectl.run("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    kubectl.run("create", "namespace", OPERATOR_NAMESPACE, check=False)


def install_gie_crds(kubectl: Kubectl) -> None:
    """GIE's InferencePool CRD, as pinned under e2e/tools/; applying it twice changes
    nothing."""
    from gpufleet_testbed.crds_upstream import crd_files

    for path in crd_files("gateway-api-inference-extension"):
        kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(path))
    kubectl.run(
        "wait",
        "--for=condition=Established",
        "crd/inferencepools.inference.networking.k8s.io",
        "--timeout=30s",
    )


def inference_pool(namespace: str, name: str, **labels: str) -> dict[str, Any]:
    """A GIE InferencePool selecting pods by `labels`; its endpoint picker runs nowhere (the
    test bed's exporter plays its metrics)."""
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": labels},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": f"{name}-epp", "port": {"number": 9002}},
        },
    }


def delete(kubectl: Kubectl, items: Sequence[Mapping[str, Any]]) -> None:
    """A teardown: deletes the cluster-scoped objects among `items` (a namespace takes what
    is in it along), in order, without waiting and ignoring errors."""
    for item in items:
        metadata = item["metadata"]
        if "namespace" not in metadata:
            kind = str(item["kind"]).lower()
            kubectl.run("delete", kind, metadata["name"], "--wait=false", check=False)


def priority_class(name: str, value: int) -> dict[str, Any]:
    """A PriorityClass that never preempts in the scheduler: gpufleet's drain does that, with
    the pool's drain timeout and the PodDisruptionBudgets (docs/preemption.md)."""
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name},
        "value": value,
        "preemptionPolicy": "Never",
    }


def tenant_policy(
    name: str, namespaces: Sequence[str], priority_classes: Sequence[str] = (), **spec: Any
) -> dict[str, Any]:
    """A TenantPolicy granting `namespaces` the classes; `spec` adds fields as they are."""
    return {
        "apiVersion": API_VERSION,
        "kind": "TenantPolicy",
        "metadata": {"name": name},
        "spec": {
            "namespaces": list(namespaces),
            "priorityClasses": list(priority_classes),
            **spec,
        },
    }


def priority_ladder(namespace: str, values: Mapping[str, int]) -> list[dict[str, Any]]:
    """A class per pool (`<namespace>-<pool>`, cluster-wide names) and the TenantPolicy that
    lets `namespace` use them: pass `priority_class=ladder_class(namespace, pool)` to the
    pools' Deployments."""
    classes = [priority_class(ladder_class(namespace, pool), v) for pool, v in values.items()]
    names = [c["metadata"]["name"] for c in classes]
    return [*classes, tenant_policy(namespace, [namespace], names)]


def ladder_class(namespace: str, pool: str) -> str:
    return f"{namespace}-{pool}"


def kubeconfig_secret(remote: Kubectl, name: str) -> dict[str, Any]:
    """A Secret (in the operator's namespace, key `kubeconfig`) holding `remote`'s admin
    kubeconfig with its certificates embedded: a Secret holds no file paths."""
    config = remote.run("config", "view", "--raw", "--flatten", "--minify").stdout
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE},
        "stringData": {"kubeconfig": config},
    }

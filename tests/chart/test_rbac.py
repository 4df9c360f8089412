"""The chart's RBAC grants exactly the calls the code lists, no wildcards, and Secrets only
where configured. The lists: reconcilers/kube.py CALLS (writes), reconcilers/handlers.py
WATCHED and KOPF_CALLS (kopf's list/watch and finalizer), drivers/simulated.py CALLS."""

from __future__ import annotations

from typing import Any

from gpufleet.drivers import clusterapi, eks, karpenter, simulated
from gpufleet.reconcilers import handlers, kube

from .helm import render

Triple = tuple[str, str, str]
# Cluster-scoped kinds; a grant on them only works from a ClusterRole.
CLUSTER_SCOPED = {
    "nodes",
    "namespaces",
    "customresourcedefinitions",
    "nodepools",
    "nodeclaims",
    "clusterkopfpeerings",
} | {f"{p}{s}" for p in ("cloudproviders", "powerbudgets") for s in ("", "/status")}


def required(
    *,
    simulated_driver: bool = True,
    namespaced: bool = False,
    cluster_api: bool = False,
    karpenter_driver: bool = False,
    leader_election: bool = True,
) -> set[Triple]:
    calls: set[Triple] = set(kube.CALLS) | set(handlers.KOPF_CALLS)
    calls |= {(g, r, v) for g, r in handlers.WATCHED for v in ("list", "watch")}
    # The EKS driver's only Kubernetes call (list nodes) is always granted.
    calls |= set(eks.CALLS)
    if simulated_driver:
        calls |= set(simulated.CALLS)
    if cluster_api:
        calls |= set(clusterapi.CALLS)
    if karpenter_driver:
        calls |= set(karpenter.CALLS)
    if namespaced:
        calls |= set(handlers.KOPF_NAMESPACED_CALLS)
    if leader_election:
        calls |= set(handlers.KOPF_PEERING_CALLS) | set(kube.PEERING_CALLS)
    return calls


def grants(docs: list[dict[str, Any]]) -> dict[Triple, set[tuple[str, str | None]]]:
    """(group, resource, verb) -> {(kind of role, namespace)} over every Role and ClusterRole."""
    found: dict[Triple, set[tuple[str, str | None]]] = {}
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in doc.get("rules") or []:
            assert "resourceNames" not in rule or rule["resourceNames"]
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        where = (doc["kind"], doc["metadata"].get("namespace"))
                        found.setdefault((group, resource, verb), set()).add(where)
    return found


def test_default_rbac_grants_exactly_the_calls_the_code_makes() -> None:
    assert set(grants(render())) == required()


def test_rbac_without_the_simulated_driver_drops_node_writes_and_its_configmap_access() -> None:
    found = set(grants(render({"drivers.simulated.enabled": False})))
    assert found == required(simulated_driver=False)
    assert ("", "nodes", "create") not in found
    assert ("", "configmaps", "update") not in found


def test_rbac_with_watch_namespaces_adds_namespace_watch_and_binds_per_namespace() -> None:
    docs = render({"operator.watchNamespaces": ["team-a", "team-b"]})
    assert set(grants(docs)) == required(namespaced=True)
    bindings = [
        d for d in docs if d["kind"] == "RoleBinding" and "namespaced" in d["roleRef"]["name"]
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == [
        "gpufleet-system",
        "team-a",
        "team-b",
    ]
    assert not [
        d
        for d in docs
        if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"].endswith("-namespaced")
    ]


def test_rbac_has_no_wildcards_and_no_secret_access_by_default() -> None:
    for (group, resource, verb), _ in grants(render()).items():
        assert "*" not in (group, resource, verb)
        assert resource != "secrets"


def test_configmap_writes_are_granted_only_in_the_release_namespace() -> None:
    found = grants(render())
    for verb in ("get", "create", "update", "patch"):
        assert found[("", "configmaps", verb)] == {("Role", "gpufleet-system")}, verb


def test_cluster_scoped_kinds_are_granted_by_cluster_roles() -> None:
    for (_, resource, _), where in grants(render({"operator.watchNamespaces": ["a"]})).items():
        if resource in CLUSTER_SCOPED:
            assert {kind for kind, _ in where} == {"ClusterRole"}, resource


def test_secret_reads_are_get_only_in_the_configured_namespaces() -> None:
    found = grants(render({"rbac.secretNamespaces": ["clouds", "gpufleet-system"]}))
    secrets = {k: v for k, v in found.items() if k[1] == "secrets"}
    assert set(secrets) == set(kube.SECRET_CALLS)
    assert secrets == {("", "secrets", "get"): {("Role", "clouds"), ("Role", "gpufleet-system")}}


def test_rbac_create_false_renders_no_roles() -> None:
    kinds = {d["kind"] for d in render({"rbac.create": False})}
    assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


def test_every_role_is_bound_to_the_chart_service_account() -> None:
    docs = render({"rbac.secretNamespaces": ["clouds"], "operator.watchNamespaces": ["a"]})
    roles = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"].endswith("Role")}
    bound = set()
    for doc in docs:
        if doc["kind"].endswith("Binding"):
            assert doc["subjects"] == [
                {"kind": "ServiceAccount", "name": "gpufleet", "namespace": "gpufleet-system"}
            ]
            bound.add((doc["roleRef"]["kind"], doc["roleRef"]["name"]))
    assert roles == bound


def test_rbac_with_the_cluster_api_and_karpenter_drivers_grants_their_calls() -> None:
    values = {"drivers.clusterAPI.enabled": True, "drivers.simulated.enabled": False}
    assert set(grants(render(values))) == required(simulated_driver=False, cluster_api=True)
    values = {"drivers.karpenter.enabled": True}
    assert set(grants(render(values))) == required(karpenter_driver=True)
    both = {"drivers.clusterAPI.enabled": True, "drivers.karpenter.enabled": True}
    found = grants(render(both))
    assert set(found) == required(cluster_api=True, karpenter_driver=True)
    assert found[("cluster.x-k8s.io", "machinedeployments/scale", "patch")] == {
        ("ClusterRole", None)
    }
    assert ("cluster.x-k8s.io", "machinedeployments", "update") not in found


def test_rbac_without_leader_election_drops_the_peering_grants() -> None:
    values = {"leaderElection.enabled": False, "replicaCount": 1}
    found = set(grants(render(values)))
    assert found == required(leader_election=False)
    assert not any(group == "kopf.dev" for group, _, _ in found)


EVICT: Triple = ("", "pods/eviction", "create")


def roles_granting(docs: list[dict[str, Any]], triple: Triple) -> set[tuple[str, str]]:
    """(kind, name) of every Role and ClusterRole with a rule for `triple`."""
    return {(d["kind"], d["metadata"]["name"]) for d in docs if triple in grants([d])}


def bound_scopes(docs: list[dict[str, Any]], triple: Triple) -> set[str | None]:
    """Where the bindings let the service account make `triple`: a namespace, or None for
    cluster-wide (a ClusterRoleBinding)."""
    roles = roles_granting(docs, triple)
    return {
        d["metadata"]["namespace"] if d["kind"] == "RoleBinding" else None
        for d in docs
        if d["kind"].endswith("Binding") and (d["roleRef"]["kind"], d["roleRef"]["name"]) in roles
    }


def test_pod_evictions_are_granted_only_in_the_watched_namespaces_when_set() -> None:
    docs = render({"operator.watchNamespaces": ["team-a", "team-b"]})
    assert roles_granting(docs, EVICT) == {("ClusterRole", "gpufleet-namespaced")}
    assert bound_scopes(docs, EVICT) == {"gpufleet-system", "team-a", "team-b"}


def test_pod_evictions_are_granted_cluster_wide_without_watch_namespaces() -> None:
    docs = render()
    assert roles_granting(docs, EVICT) == {("ClusterRole", "gpufleet-namespaced")}
    assert bound_scopes(docs, EVICT) == {None}

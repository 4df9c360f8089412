"""The chart's RBAC grants exactly the calls the code lists, no wildcards, and Secrets only
where configured. The lists: reconcilers/kube.py CALLS (writes), reconcilers/handlers.py
WATCHED and KOPF_CALLS (kopf's list/watch and finalizer), drivers/simulated.py CALLS,
metrics/auth.py CALLS (the reviews behind /metrics)."""

from __future__ import annotations

from typing import Any

from gpufleet.drivers import clusterapi, eks, karpenter, simulated
from gpufleet.metrics import auth
from gpufleet.reconcilers import handlers, kube

from .helm import helm, render, template_args

Triple = tuple[str, str, str]
# Cluster-scoped kinds; a grant on them only works from a ClusterRole.
CLUSTER_SCOPED = {
    "nodes",
    "namespaces",
    "customresourcedefinitions",
    "nodepools",
    "nodeclaims",
    "priorityclasses",
    "tokenreviews",
    "subjectaccessreviews",
} | {
    f"{p}{s}" for p in ("cloudproviders", "powerbudgets", "tenantpolicies") for s in ("", "/status")
}


def required(
    *,
    simulated_driver: bool = True,
    namespaced: bool = False,
    cluster_api: bool = False,
    karpenter_driver: bool = False,
    leader_election: bool = True,
    metrics_auth: bool = True,
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
        calls |= set(kube.LEASE_CALLS)
    if metrics_auth:
        calls |= set(auth.CALLS)
    return calls


def grants(docs: list[dict[str, Any]]) -> dict[Triple, set[tuple[str, str | None]]]:
    """(group, resource, verb) -> {(kind of role, namespace)} over every Role and ClusterRole."""
    found: dict[Triple, set[tuple[str, str | None]]] = {}
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in doc.get("rules") or []:
            if "nonResourceURLs" in rule:
                continue  # the scrapers' metrics-reader role (test_metrics_auth_grants_*)
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
    # The metrics reader is for scrapers to bind; the operator never holds it.
    roles.discard(("ClusterRole", READER))
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


def test_rbac_without_leader_election_drops_the_lease_grants() -> None:
    values = {"leaderElection.enabled": False, "replicaCount": 1}
    found = set(grants(render(values)))
    assert found == required(leader_election=False)
    assert not any(group in ("kopf.dev", "coordination.k8s.io") for group, _, _ in found)


def test_the_lease_is_granted_in_the_release_namespace_and_read_or_renewed_by_name_only() -> None:
    docs = render()
    found = grants(docs)
    for verb in ("get", "create", "update"):
        assert found[("coordination.k8s.io", "leases", verb)] == {("Role", "gpufleet-system")}
    rules = [
        rule
        for doc in docs
        if doc["kind"] == "Role"
        for rule in doc["rules"]
        if "leases" in rule["resources"]
    ]
    named = [r for r in rules if {"get", "update"} & set(r["verbs"])]
    assert named and all(r.get("resourceNames") == ["gpufleet"] for r in named)
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--lease-name=gpufleet" in args


def test_configmaps_are_neither_listed_nor_watched_anywhere() -> None:
    found = grants(render({"operator.watchNamespaces": ["team-a"]}))
    assert ("", "configmaps", "list") not in found
    assert ("", "configmaps", "watch") not in found


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


READER = "gpufleet-metrics-reader"
PODS_LIST: Triple = ("", "pods", "list")
PODS_WATCH: Triple = ("", "pods", "watch")
EVENTS: Triple = ("", "events", "create")
SECRET_GET: Triple = ("", "secrets", "get")
WATCHED = {"gpufleet-system", "team-a", "team-b"}  # the two watched and the release namespace


def cluster_wide_namespaced_grants(docs: list[dict[str, Any]]) -> set[Triple]:
    """Calls on namespaced kinds that a ClusterRoleBinding lets the operator make anywhere."""
    return {
        triple
        for triple in grants(docs)
        if triple[1] not in CLUSTER_SCOPED and None in bound_scopes(docs, triple)
    }


def test_pods_and_events_are_granted_only_in_the_watched_namespaces_when_set() -> None:
    docs = render(
        {"operator.watchNamespaces": ["team-a", "team-b"], "drivers.simulated.enabled": False}
    )
    for triple in (PODS_LIST, PODS_WATCH):
        assert bound_scopes(docs, triple) == WATCHED, triple
    # Events about cluster-scoped kinds: the API server takes them only in `default`.
    assert bound_scopes(docs, EVENTS) == WATCHED | {"default"}


def test_with_watch_namespaces_no_namespaced_kind_is_granted_cluster_wide() -> None:
    docs = render(
        {"operator.watchNamespaces": ["team-a", "team-b"], "drivers.simulated.enabled": False}
    )
    assert cluster_wide_namespaced_grants(docs) == set()


def test_the_simulated_driver_alone_keeps_a_cluster_wide_pod_list() -> None:
    docs = render({"operator.watchNamespaces": ["team-a", "team-b"]})
    assert cluster_wide_namespaced_grants(docs) == set(simulated.CLUSTER_WIDE_CALLS)
    assert bound_scopes(docs, PODS_WATCH) == WATCHED
    assert bound_scopes(docs, EVENTS) == WATCHED | {"default"}


def test_pods_and_events_are_granted_cluster_wide_without_watch_namespaces() -> None:
    docs = render()
    for triple in (PODS_LIST, PODS_WATCH, EVENTS):
        assert bound_scopes(docs, triple) == {None}, triple


def secret_rules(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {
        d["metadata"]["namespace"]: d["rules"]
        for d in docs
        if d["kind"] == "Role" and d["metadata"]["name"] == "gpufleet-secrets"
    }


def test_named_secrets_are_readable_by_name_and_no_other_secret_is() -> None:
    docs = render(
        {
            "rbac.secrets": [
                {"namespace": "clouds", "name": "eu-kubeconfig"},
                {"namespace": "clouds", "name": "aws-keys"},
                {"namespace": "burst", "name": "us-kubeconfig"},
            ]
        }
    )
    get = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    assert secret_rules(docs) == {
        "clouds": [{**get, "resourceNames": ["aws-keys", "eu-kubeconfig"]}],
        "burst": [{**get, "resourceNames": ["us-kubeconfig"]}],
    }
    assert bound_scopes(docs, SECRET_GET) == {"clouds", "burst"}


def test_a_secret_namespace_grants_every_secret_there_even_beside_named_ones() -> None:
    docs = render(
        {
            "rbac.secrets": [{"namespace": "clouds", "name": "eu-kubeconfig"}],
            "rbac.secretNamespaces": ["clouds", "legacy"],
        }
    )
    get = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    assert secret_rules(docs) == {"clouds": [get], "legacy": [get]}


def test_a_named_secret_needs_its_namespace_and_name() -> None:
    result = helm(*template_args({"rbac.secrets": [{"namespace": "clouds"}]}), check=False)
    assert result.returncode != 0
    assert "name" in result.stderr


def test_metrics_auth_grants_the_two_reviews_and_a_reader_role_for_scrapers() -> None:
    docs = render()
    for triple in auth.CALLS:
        assert bound_scopes(docs, triple) == {None}, triple
    (reader,) = [d for d in docs if d["metadata"]["name"] == READER]
    assert reader["kind"] == "ClusterRole"
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    assert not [d for d in docs if d["kind"].endswith("Binding") and READER in str(d["roleRef"])]

    readers = [{"namespace": "monitoring", "name": "prometheus"}]
    docs = render({"metrics.readers": readers})
    (binding,) = [d for d in docs if d["kind"].endswith("Binding") and READER in str(d["roleRef"])]
    assert binding["kind"] == "ClusterRoleBinding"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}
    ]


def test_open_metrics_need_no_reviews_and_render_no_reader_role() -> None:
    docs = render({"metrics.auth": "none", "metrics.readers": [{"namespace": "m", "name": "p"}]})
    assert set(grants(docs)) == required(metrics_auth=False)
    assert not [d for d in docs if READER in d["metadata"]["name"]]

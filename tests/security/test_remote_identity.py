"""The remote identity reads no Secret (issue 18). A CloudProvider's kubeconfig identity acts in
the remote cluster for every namespace a copy may go to, so its grants are cluster-wide; a
grant to list Secrets (or ConfigMaps) returns their data whatever the request asks for. So
gpufleet never lists them: before it deletes a namespace it created, a ResourceQuota it put
there (`gpufleet-contents`) says how many it holds, and only the cluster's own (no Secret,
the ConfigMap `kube-root-ca.crt`) lets it go. Doubt never deletes: no quota yet, a status
that has not counted, a quota that no longer counts a kind.

The pure rules first; then, on the secondary test bed, a namespace created, a copy applied and
the namespace deleted by an identity bound to exactly `REMOTE_CALLS`, which is refused every
Secret."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpufleet.api.labels import CREATED_BY_LABEL, FIELD_MANAGER, INSTALLATION_LABEL, PROVIDER_LABEL
from gpufleet.api.provider import ClusterAccess
from gpufleet.planner.types import PoolKey
from gpufleet.reconcilers.burst.contents import COUNTED, QUOTA_NAME, quota_manifest
from gpufleet.reconcilers.burst.copies import CONTENT, KINDS, Fate, copy_manifest, namespace_fate
from gpufleet.reconcilers.burst.kubeconfig import client_from
from gpufleet.reconcilers.burst.namespaces import ensure_namespace, read_quota, settle
from gpufleet.reconcilers.burst.remote import REMOTE_CALLS
from gpufleet.reconcilers.cache import workload_entry
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.polling import until
from gpufleet_testbed.testbed import Testbed

OURS = "e2e-identity"
CREATED = {"name": "team", "uid": "u", "labels": {CREATED_BY_LABEL: "gpufleet"}}
NOTHING_LISTED: dict[str, list[dict[str, Any]]] = {kind: [] for kind, _, _ in CONTENT}


def counted(configmaps: Any = "1", secrets: Any = "0") -> dict[str, Any]:
    """The namespace's quota as the quota controller leaves it, having counted these."""
    used = {"count/configmaps": configmaps, "count/secrets": secrets}
    return {**quota_manifest("team"), "status": {"hard": dict.fromkeys(used, "1M"), "used": used}}


def fate(quota: dict[str, Any] | None) -> tuple[Fate, str]:
    return namespace_fate(CREATED, NOTHING_LISTED, quota=quota)


# -- the rules --------------------------------------------------------------------------------


def test_the_remote_identity_may_neither_list_nor_read_secrets_or_configmaps() -> None:
    assert not [call for call in REMOTE_CALLS if call[1] in ("secrets", "configmaps")]
    assert ("", "resourcequotas", "get") in REMOTE_CALLS
    assert ("", "resourcequotas", "create") in REMOTE_CALLS
    # Reading the count is all it needs: no list, no change to a quota, nor to its status.
    assert {verb for _, resource, verb in REMOTE_CALLS if resource == "resourcequotas"} == {
        "get",
        "create",
    }
    assert not [call for call in REMOTE_CALLS if "/" in call[1]]


def test_the_remote_identity_may_create_what_it_applies_server_side() -> None:
    # A server-side apply of an object that does not exist yet is authorized as a create too.
    resources = {"Deployment": "deployments", "StatefulSet": "statefulsets"}
    applied = [("apps", resources[kind]) for kind in KINDS] + [("", "services")]
    for group, resource in applied:
        assert (group, resource, "patch") in REMOTE_CALLS
        assert (group, resource, "create") in REMOTE_CALLS


def test_what_is_not_listed_is_counted_by_the_quota() -> None:
    listed = {resource for _, _, resource in CONTENT}
    assert not listed & {"secrets", "configmaps"}
    hard = quota_manifest("team")["spec"]["hard"]
    assert set(hard) == {resource for _, resource, _ in COUNTED}
    assert set(hard) == {"count/secrets", "count/configmaps"}
    # Ceilings nobody reaches: the quota counts, it never refuses a Secret.
    assert all(int(ceiling) >= 100_000 for ceiling in hard.values())


def test_a_namespace_holding_only_the_clusters_own_goes() -> None:
    assert fate(counted())[0] == Fate.DELETE
    # kube-root-ca.crt not published yet (or a cluster that publishes none).
    assert fate(counted(configmaps="0"))[0] == Fate.DELETE


@pytest.mark.parametrize(
    ("configmaps", "secrets", "held"),
    [
        # Or a legacy token of the default ServiceAccount (clusters before 1.24 made one).
        ("1", "1", "1 Secret"),
        ("2", "0", "1 ConfigMap"),
        ("1", "3", "3 Secrets"),
        # A canonical quantity: 1000 is written "1k".
        ("1", "1k", "Secret count 1k"),
    ],
)
def test_a_namespace_holding_a_secret_or_configmap_of_its_own_is_kept(
    configmaps: str, secrets: str, held: str
) -> None:
    kept, why = fate(counted(configmaps, secrets))
    assert kept == Fate.KEEP
    assert held in why and QUOTA_NAME in why


def test_a_namespace_not_counted_yet_waits() -> None:
    # No quota: an earlier release made the namespace (settle creates the quota).
    assert fate(None) == (Fate.WAIT, f"no quota {QUOTA_NAME} counts its Secrets and ConfigMaps yet")
    fresh = quota_manifest("team")  # the quota controller has not seen it
    assert fate(fresh)[0] == Fate.WAIT
    half = counted()
    del half["status"]["used"]["count/secrets"]
    assert fate(half)[0] == Fate.WAIT
    lagging = counted()  # spec.hard changed, status not yet
    lagging["status"]["hard"] = {"count/configmaps": "1M"}
    assert fate(lagging)[0] == Fate.WAIT


def test_a_quota_that_no_longer_counts_a_kind_keeps_the_namespace() -> None:
    edited = counted()
    del edited["spec"]["hard"]["count/secrets"]  # someone with quota rights changed it
    kept, why = fate(edited)
    assert kept == Fate.KEEP and "count/secrets" in why


def test_the_quota_never_decides_for_a_namespace_gpufleet_did_not_create() -> None:
    theirs = {"name": "team", "labels": {}}
    assert namespace_fate(theirs, NOTHING_LISTED, quota=counted())[0] == Fate.KEEP
    other = {"name": "team", "labels": {CREATED_BY_LABEL: "gpufleet", INSTALLATION_LABEL: "x"}}
    assert namespace_fate(other, NOTHING_LISTED, OURS, quota=counted())[0] == Fate.KEEP
    # A listed object keeps it whatever the count.
    service = {**NOTHING_LISTED, "Service": [{"name": "chat"}]}
    assert namespace_fate(CREATED, service, quota=counted())[0] == Fate.KEEP


@given(
    configmaps=st.one_of(st.integers(0, 5000).map(str), st.sampled_from(["1k", "2M", "", "x"])),
    secrets=st.one_of(st.integers(0, 5000).map(str), st.sampled_from(["1k", "", "-1"])),
)
def test_only_the_baseline_counts_let_a_namespace_go(configmaps: str, secrets: str) -> None:
    deleted = fate(counted(configmaps, secrets))[0] == Fate.DELETE
    assert deleted == (configmaps in ("0", "1") and secrets == "0")


# -- on the secondary test bed ------------------------------------------------------------------

NS = "e2e-identity"  # gpufleet creates it, with its quota, as the restricted identity
OLD_NS = "e2e-identity-old"  # an earlier release created it: no quota
IDENTITY_NS = "e2e-identity-system"
ACCOUNT = "e2e-remote-identity"
PROVIDER = "e2e-identity-remote"
SECRET_VALUE = "hunter2-e2e-identity"
APPLY = "application/apply-patch+yaml"
TEMPLATE = {
    "metadata": {"labels": {"app": "chat"}},
    "spec": {"containers": [{"name": "s", "image": "s:1"}]},
}
BODY = {"spec": {"replicas": 1, "selector": {"matchLabels": {"app": "chat"}}, "template": TEMPLATE}}


def _rules() -> list[dict[str, Any]]:
    """A ClusterRole's rules granting exactly REMOTE_CALLS."""
    verbs: dict[tuple[str, str], list[str]] = {}
    for group, resource, verb in REMOTE_CALLS:
        verbs.setdefault((group, resource), []).append(verb)
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": sorted(granted)}
        for (group, resource), granted in sorted(verbs.items())
    ]


@pytest.fixture
def remote_identity(secondary_testbed: Testbed) -> Iterator[tuple[Kubectl, str]]:
    """The secondary's admin kubectl, and a kubeconfig whose identity is a ServiceAccount
    bound to exactly REMOTE_CALLS there."""
    admin = secondary_testbed.kubectl()
    name = f"{ACCOUNT}-calls"
    subject = {"kind": "ServiceAccount", "name": ACCOUNT, "namespace": IDENTITY_NS}
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
    rbac = "rbac.authorization.k8s.io/v1"
    until(
        lambda: not any(_terminating(admin, n) for n in (NS, OLD_NS, IDENTITY_NS)),
        timeout=60,
        what="an earlier run's namespaces gone",
    )
    admin.run("create", "namespace", IDENTITY_NS, check=False)
    admin.run("create", "serviceaccount", "-n", IDENTITY_NS, ACCOUNT, check=False)
    for manifest in (
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": name}, "rules": _rules()},
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "subjects": [subject],
            "roleRef": role_ref,
        },
    ):
        admin.apply(manifest, "--force-conflicts")
    token = admin.run("create", "token", "-n", IDENTITY_NS, ACCOUNT, "--duration=10m")
    config = admin.json("config", "view", "--raw", "--flatten", "--minify")
    config["users"][0]["user"] = {"token": token.stdout.strip()}
    try:
        yield admin, json.dumps(config)
    finally:
        for namespace in (NS, OLD_NS, IDENTITY_NS):
            admin.run("delete", "namespace", namespace, "--wait=false", check=False)
        admin.run("delete", "clusterrolebinding,clusterrole", name, check=False)


def _settled(api: Any, namespace: str, wanted: Fate) -> tuple[Fate, str] | None:
    found = asyncio.run(settle(api, PROVIDER, namespace, OURS))
    return found if found[0] == wanted else None


def _used(admin: Kubectl, namespace: str) -> dict[str, str]:
    quota = admin.json("get", "resourcequota", "-n", namespace, QUOTA_NAME)
    return dict((quota.get("status") or {}).get("used") or {})


def _terminating(admin: Kubectl, namespace: str) -> bool:
    found = admin.run("get", "namespace", namespace, "-o", "json", check=False)
    return found.returncode == 0 and "deletionTimestamp" in json.loads(found.stdout)["metadata"]


def _going(admin: Kubectl, namespace: str) -> bool:
    found = admin.run("get", "namespace", namespace, "-o", "json", check=False)
    return found.returncode != 0 or "deletionTimestamp" in json.loads(found.stdout)["metadata"]


@pytest.mark.e2e
def test_an_identity_bound_to_exactly_the_remote_calls_counts_and_deletes_namespaces(
    remote_identity: tuple[Kubectl, str],
) -> None:
    admin, kubeconfig = remote_identity
    api = client_from(kubeconfig, allow_private_servers=True)
    try:
        core = client.CoreV1Api(api)
        # The identity reads no Secret: not by listing, not by name.
        with pytest.raises(ApiException) as listed:
            core.list_secret_for_all_namespaces(_request_timeout=10)
        assert listed.value.status == 403
        with pytest.raises(ApiException) as listed:
            core.list_config_map_for_all_namespaces(_request_timeout=10)
        assert listed.value.status == 403

        # Created by gpufleet as that identity: the namespace, the quota that counts it, and
        # a copy, applied server-side as remote.py does (a patch that creates).
        facts = {"provider": PROVIDER}
        access = ClusterAccess()
        assert asyncio.run(ensure_namespace(api, NS, facts, access, OURS, PROVIDER))
        quota = admin.json("get", "resourcequota", "-n", NS, QUOTA_NAME)
        assert quota["metadata"]["labels"][PROVIDER_LABEL] == PROVIDER
        apps = client.AppsV1Api(api)
        workload = workload_entry("Deployment", NS, "chat", BODY)
        copy = copy_manifest(PoolKey(NS, "chat"), workload, 0, PROVIDER, access, OURS)
        apps.patch_namespaced_deployment(
            "chat", NS, copy, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY
        )
        held = asyncio.run(settle(api, PROVIDER, NS, OURS))
        assert held[0] == Fate.KEEP and "Deployment chat" in held[1]
        until(lambda: len(_used(admin, NS)) == len(COUNTED), timeout=30, what="the quota counted")

        # Someone else's Secret in it: counted, so once the copy goes the namespace is kept;
        # its data unseen.
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pull-secret", "namespace": NS},
            "stringData": {"token": SECRET_VALUE},
        }
        admin.apply(secret)
        apps.delete_namespaced_deployment("chat", NS, propagation_policy="Foreground")
        with pytest.raises(ApiException) as read:
            core.read_namespaced_secret("pull-secret", NS, _request_timeout=10)
        assert read.value.status == 403
        kept = until(lambda: _settled(api, NS, Fate.KEEP), timeout=30, what="the Secret counted")
        assert "1 Secret" in kept[1]
        assert not _going(admin, NS)
        seen = asyncio.run(read_quota(api, NS))
        assert SECRET_VALUE not in json.dumps(seen) and "pull-secret" not in json.dumps(seen)

        # The Secret gone: the count falls back and the namespace goes.
        admin.run("delete", "secret", "-n", NS, "pull-secret")
        until(
            lambda: _settled(api, NS, Fate.DELETE),
            timeout=60,
            what="the namespace deleted once its Secret went",
        )
        assert _going(admin, NS)

        # One an earlier release created has no quota: it gets one, then goes once counted.
        labels = {CREATED_BY_LABEL: "gpufleet", INSTALLATION_LABEL: OURS}
        admin.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": OLD_NS, "labels": labels},
            }
        )
        first = asyncio.run(settle(api, PROVIDER, OLD_NS, OURS))
        assert first[0] == Fate.WAIT and "no quota" in first[1]
        assert admin.json("get", "resourcequota", "-n", OLD_NS, QUOTA_NAME)
        until(
            lambda: _settled(api, OLD_NS, Fate.DELETE),
            timeout=60,
            what="the earlier release's namespace counted and deleted",
        )
        assert _going(admin, OLD_NS)
    finally:
        api.close()

"""Burst copies' lifecycle (issue 18): a deleted CloudProvider must not leave data-processing
workloads running in another company's cluster, and another gpufleet installation that
shares that cluster (even a provider name there) must not touch this one's copies, nor this
one touch its.

So everything gpufleet makes remotely carries its installation's id, and only what carries
it is resized or deleted (unlabelled copies of an earlier release are adopted, only for this
installation's own pools); and a CloudProvider with a remote cluster holds the finalizer
`gpufleet.io/remote-copies` until its copies and the namespaces made for them are gone, or
the deletion timeout has passed (an Event then says what was left).

The pure rules first; then, on two test beds, the whole operator."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from gpufleet.api.labels import INSTALLATION_LABEL, PROVIDER_LABEL, REMOTE_COPIES_FINALIZER
from gpufleet.planner.types import PoolKey
from gpufleet.reconcilers.burst.contents import quota_manifest
from gpufleet.reconcilers.burst.copies import (
    Fate,
    copy_manifest,
    copy_selector,
    held_by_other,
    namespace_fate,
    namespace_manifest,
    service_manifest,
)
from gpufleet.reconcilers.burst.lifecycle import (
    Owner,
    Remains,
    Step,
    abandoned_message,
    claims,
    created_by,
    deletion_time,
    finalizer_step,
    installation_id,
)
from gpufleet.reconcilers.cache import workload_entry
from gpufleet.reconcilers.reporting.status import provider_status, wire
from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

KEY = PoolKey("team", "chat")
OURS, THEIRS = "eu.gpufleet", "us.gpufleet"
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def _workload(kind: str = "Deployment") -> Any:
    spec: dict[str, Any] = {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "chat"}},
        "template": {
            "metadata": {"labels": {"app": "chat"}},
            "spec": {"containers": [{"name": "server", "image": "server:1"}]},
        },
    }
    if kind == "StatefulSet":
        spec["serviceName"] = "chat"
    return workload_entry(kind, "team", "chat", {"spec": spec})


# -- installation identity -------------------------------------------------------------------


def test_an_installation_id_is_a_stable_label_value() -> None:
    assert installation_id("gpufleet-system.gpufleet") == "gpufleet-system.gpufleet"
    # A Helm `<namespace>.<release>` may be longer than a label value, or not one at all.
    long = f"{'n' * 63}.{'r' * 53}"
    for setting in (long, "team/a b", "-x-"):
        made = installation_id(setting)
        assert _LABEL_VALUE.fullmatch(made), made
        assert installation_id(setting) == made  # restarts recompute the same id
    assert installation_id(long) != installation_id(f"{'n' * 63}.{'r' * 52}s")
    with pytest.raises(ValueError):
        installation_id("  ")


def test_copies_services_and_namespaces_carry_the_installation() -> None:
    copy = copy_manifest(KEY, _workload(), 2, "nl", installation=OURS)
    service = service_manifest(KEY, _workload("StatefulSet"), "nl", installation=OURS)
    namespace = namespace_manifest("team", installation=OURS, provider="nl")
    assert service is not None
    for made in (copy, service, namespace):
        assert made["metadata"]["labels"][INSTALLATION_LABEL] == OURS
    # A deleted provider's finalizer waits for the namespaces made for its copies.
    assert namespace["metadata"]["labels"][PROVIDER_LABEL] == "nl"
    assert f"{INSTALLATION_LABEL}={OURS}" in copy_selector("nl", KEY, OURS).split(",")


def test_an_installation_takes_only_its_own_copies() -> None:
    known = {KEY}
    assert claims({INSTALLATION_LABEL: OURS}, OURS, KEY, known) == Owner.OURS
    # Another installation's copy, even of a pool and provider of the same names: not ours.
    assert claims({INSTALLATION_LABEL: THEIRS}, OURS, KEY, known) is None
    assert claims({INSTALLATION_LABEL: THEIRS}, OURS, KEY, set()) is None


def test_an_upgrade_adopts_unlabelled_copies_of_its_own_pools_only() -> None:
    # Made by a release before installations were labelled: adopted if the pool is ours...
    assert claims({}, OURS, KEY, {KEY}) == Owner.UNLABELLED
    # ...never when this installation has no such pool (it might be another's, to delete).
    assert claims({}, OURS, KEY, {PoolKey("team", "other")}) is None


def test_another_installations_object_is_held_by_it() -> None:
    theirs = {"labels": {"app.kubernetes.io/managed-by": "gpufleet", PROVIDER_LABEL: "nl"}}
    theirs["labels"][INSTALLATION_LABEL] = THEIRS
    assert held_by_other("Deployment", theirs, "nl", OURS) == f"installation {THEIRS}"
    ours = {"labels": {**theirs["labels"], INSTALLATION_LABEL: OURS}}
    assert held_by_other("Deployment", ours, "nl", OURS) is None
    unlabelled = {"labels": {k: v for k, v in ours["labels"].items() if k != INSTALLATION_LABEL}}
    assert held_by_other("Deployment", unlabelled, "nl", OURS) is None  # taken over


def test_a_namespace_another_installation_created_is_never_deleted() -> None:
    def made_by(installation: str | None) -> dict[str, Any]:
        labels = {"gpufleet.io/created-by": "gpufleet"}
        if installation is not None:
            labels[INSTALLATION_LABEL] = installation
        return {"name": "team", "labels": labels}

    fate, why = namespace_fate(made_by(THEIRS), {}, OURS)
    assert fate == Fate.KEEP and THEIRS in why
    assert not created_by(made_by(THEIRS), OURS)
    counted = {"count/configmaps": "1", "count/secrets": "0"}  # its quota: the baseline
    quota = {**quota_manifest("team"), "status": {"hard": counted, "used": counted}}
    assert namespace_fate(made_by(OURS), {}, OURS, quota=quota)[0] == Fate.DELETE
    # One an earlier release made: either installation may delete it once empty.
    assert namespace_fate(made_by(None), {}, OURS, quota=quota)[0] == Fate.DELETE
    # Another installation's live copy in a namespace we made keeps it.
    copy = {"name": "x", "labels": {"app.kubernetes.io/managed-by": "gpufleet"}}
    copy["labels"][INSTALLATION_LABEL] = THEIRS
    assert namespace_fate(made_by(OURS), {"Deployment": [copy]}, OURS)[0] == Fate.KEEP


# -- the finalizer -----------------------------------------------------------------------------

T0 = 1_000_000.0
TIMEOUT = 600.0


def _step(
    remains: Remains | None,
    *,
    remote: bool | None = True,
    has: bool = True,
    since: float | None = T0,
    now: float = T0 + 10,
) -> Step:
    return finalizer_step(
        remote=remote,
        has_finalizer=has,
        deleting_since=since,
        now=now,
        timeout=TIMEOUT,
        remains=remains,
    )


def test_the_finalizer_goes_on_remote_providers_only() -> None:
    assert _step(None, has=False, since=None) == Step.ADD
    assert _step(None, has=True, since=None) == Step.NOTHING
    assert _step(None, remote=False, has=False, since=None) == Step.NOTHING
    # Its kubeconfigSecretRef removed: nothing to wait for on deletion any more.
    assert _step(None, remote=False, has=True, since=None) == Step.REMOVE
    # Being deleted once its kubeconfigSecretRef was removed: it cannot be looked at, so the
    # finalizer goes with the Warning, never as if its copies were removed.
    assert _step(None, remote=False, has=True, since=T0) == Step.ABANDON
    # An invalid spec tells nothing: the finalizer stays as it is.
    assert _step(None, remote=None, has=False, since=None) == Step.NOTHING
    assert _step(None, remote=None, has=True, since=None) == Step.NOTHING


def test_a_deleted_provider_waits_until_its_copies_and_namespaces_are_gone() -> None:
    assert _step(Remains(copies=2, pods=3)) == Step.WAIT
    assert _step(Remains(namespaces=("team",))) == Step.WAIT
    assert _step(Remains()) == Step.REMOVE
    # A namespace kept because it holds someone else's objects is left, not waited for.
    assert _step(Remains(namespaces=("team",), kept=("team",))) == Step.REMOVE
    # Deleted before it had the finalizer: nothing of ours to do.
    assert _step(Remains(copies=1), has=False) == Step.NOTHING


def test_a_deleted_provider_goes_after_the_timeout_whatever_is_left() -> None:
    gone_for_good = Remains(problem="Secret gpufleet-system/nl: Not Found (404)")
    assert _step(gone_for_good, now=T0 + TIMEOUT - 1) == Step.WAIT
    assert _step(gone_for_good, now=T0 + TIMEOUT) == Step.ABANDON
    assert _step(Remains(copies=1), now=T0 + TIMEOUT + 1) == Step.ABANDON
    assert _step(None, remote=None, now=T0 + TIMEOUT) == Step.ABANDON  # invalid spec
    message = abandoned_message(Remains(copies=1, pods=2), TIMEOUT, "nl", OURS)
    assert "1 copies (2 pods)" in message
    assert f"gpufleet.io/provider=nl, {INSTALLATION_LABEL}={OURS}" in message


def test_a_deletion_time_is_read_from_the_api_timestamp() -> None:
    assert deletion_time("1970-01-12T13:46:40Z") == T0
    assert deletion_time("") is None
    assert deletion_time("yesterday") is None


def test_a_deleted_providers_status_says_it_removes_copies() -> None:
    from gpufleet.api import parse_provider

    spec = parse_provider(_remote_provider("nl")["spec"]).value
    assert spec is not None
    status = wire(
        provider_status(None, 1, spec, {}, {}, None, T0, deleting=("RemovingCopies", "2 copies"))
    )
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "RemovingCopies"
    assert conditions["Deleting"]["status"] == "True"
    assert conditions["Deleting"]["message"] == "2 copies"
    assert "Deleting" not in {
        c["type"] for c in wire(provider_status(None, 1, spec, {}, {}, None, T0))["conditions"]
    }


class _Provider:
    """The calls a provider's finalizer step makes in this cluster, recorded."""

    def __init__(self) -> None:
        self.finalizers: list[list[str]] = []
        self.events: list[tuple[str, str, bool]] = []

    async def patch_finalizers(
        self, plural: str, name: str, finalizers: list[str], version: str
    ) -> None:
        self.finalizers.append(finalizers)

    async def event(self, *args: Any) -> None:
        _kind, _namespace, _name, _uid, reason, message, *warning = args
        self.events.append((reason, message, bool(warning and warning[0])))


def _entry(deleting: str, finalizers: tuple[str, ...]) -> Any:
    from gpufleet.api import parse_provider
    from gpufleet.reconcilers.cache import ProviderEntry

    parsed = parse_provider(_remote_provider("nl")["spec"])
    return ProviderEntry("nl", 1, parsed, {}, deleting, finalizers, "7", "uid-1")


@pytest.mark.asyncio
async def test_an_unreachable_deleted_provider_goes_after_the_timeout_with_an_event() -> None:
    from gpufleet.reconcilers.burst.remote import RemoteClusters
    from gpufleet.reconcilers.burst.teardown import ProviderTeardown

    recorded = _Provider()
    kube: Any = recorded
    # Never connected: the kubeconfig's Secret went first, say.
    remote = RemoteClusters(kube, lambda *_: kube, "gpufleet-system", installation=OURS)
    teardown = ProviderTeardown(kube, remote, timeout=TIMEOUT)
    entry = _entry("1970-01-12T13:46:40Z", ("other.io/keep", REMOTE_COPIES_FINALIZER))

    await teardown.step([entry], set(), T0 + 30)
    assert recorded.finalizers == [] and recorded.events == []
    reason, message = teardown.deleting["nl"]
    assert reason == "RemovingCopies" and "remote cluster not reachable" in message

    await teardown.step([entry], set(), T0 + TIMEOUT)
    assert recorded.finalizers == [["other.io/keep"]]  # only ours goes
    [(reason, message, warning)] = recorded.events
    assert (reason, warning) == ("RemoteCopiesLeftBehind", True)
    assert f"{INSTALLATION_LABEL}={OURS}" in message
    assert "nl" not in teardown.deleting

    # A live remote provider gets the finalizer, kept beside the others.
    await teardown.step([_entry("", ("other.io/keep",))], set(), T0)
    assert recorded.finalizers[-1] == ["other.io/keep", REMOTE_COPIES_FINALIZER]


# -- on two test beds ----------------------------------------------------------------------

GPU = "E2E-LIFECYCLE-GPU"
PROVIDER = "e2e-life-remote"
SECRET = "e2e-life-kubeconfig"
NS = "e2e-life"  # our pool's namespace: gpufleet creates it remotely for the copy
THEIR_NS = "e2e-life-theirs"  # another installation's namespace and copy, same provider name
INSTALLATION = "e2e-testbed"  # OperatorProcess's


def _remote_provider(name: str) -> dict[str, Any]:
    node_pool = fleets.node_pool(
        "life",
        gpu_type=GPU,
        site="life-site",
        max_nodes=2,
        watts_per_gpu=700,
        idle_watts_per_gpu=90,
    )
    return fleets.cloud_provider(
        name,
        legal_entity="Life B.V.",
        node_pools=[node_pool],
        role="Secondary",
        cluster={"kubeconfigSecretRef": {"name": SECRET, "key": "kubeconfig"}},
    )


def _their_objects() -> list[dict[str, Any]]:
    """What another installation made in the shared remote cluster for a provider of the
    same name: a namespace and a running copy of a pool this installation does not have
    (an earlier release deleted such a copy as one whose pool is gone)."""
    labels = {
        "app.kubernetes.io/managed-by": "gpufleet",
        "gpufleet.io/pool": f"{THEIR_NS}.chat",
        PROVIDER_LABEL: PROVIDER,
        INSTALLATION_LABEL: "e2e-theirs",
    }
    namespace = fleets.namespace(THEIR_NS)
    namespace["metadata"]["labels"] = {
        "gpufleet.io/created-by": "gpufleet",
        INSTALLATION_LABEL: "e2e-theirs",
        PROVIDER_LABEL: PROVIDER,
    }
    copy = fleets.deployment(THEIR_NS, "chat", node_selector={"no-such-node": "x"})
    copy["metadata"]["labels"] = labels
    copy["spec"]["replicas"] = 1
    return [namespace, copy]


@pytest.fixture
def lifecycle_fleet(
    testbed: Testbed, secondary_testbed: Testbed, kubectl: Kubectl
) -> Iterator[OperatorProcess]:
    secondary = secondary_testbed.kubectl()
    fleets.install_crds(kubectl)
    secondary.run("create", "namespace", "gpufleet-system", check=False)
    fleets.apply(secondary, _their_objects())
    secret = fleets.kubeconfig_secret(secondary, SECRET)
    pool = fleets.serving_pool(
        NS,
        "chat",
        gpu_types=[GPU],
        max_replicas=4,
        burst={"enabled": True},
        behavior=fleets.behavior(scale_down_window_seconds=5),
    )
    deployment = fleets.deployment(NS, "chat", node_selector={fleets.GPU_TYPE_LABEL: GPU})
    fleets.apply(
        kubectl, [secret, _remote_provider(PROVIDER), fleets.namespace(NS), deployment, pool]
    )
    exporter = testbed.exporter()
    exporter.set_queue(NS, "chat", 2)  # 1 replica; only the remote cloud has this GPU
    log = testbed.directory / "logs" / "operator-lifecycle.log"
    # The secondary test bed listens on loopback, which remote servers may not by default.
    process = OperatorProcess(testbed, log, extra_args=("--allow-private-remote-servers",))
    process.start()
    try:
        yield process
    finally:
        process.stop()
        exporter.set_queue(NS, "chat", 0)
        kubectl.run("delete", "namespace", NS, "--wait=false", check=False)
        for namespace in (NS, THEIR_NS):
            secondary.run("delete", "namespace", namespace, "--wait=false", check=False)
        # Never left hanging on a finalizer no operator removes any more.
        kubectl.run(
            "patch",
            "cloudprovider",
            PROVIDER,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )
        kubectl.run("delete", "cloudprovider", PROVIDER, "--wait=false", check=False)
        kubectl.run("delete", "secret", "-n", "gpufleet-system", SECRET, check=False)
        secondary.run("delete", "nodes", "-l", f"{PROVIDER_LABEL}={PROVIDER}", check=False)


def _get(kubectl: Kubectl, *args: str) -> dict[str, Any] | None:
    found = kubectl.run("get", *args, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def _deleting(provider: dict[str, Any] | None) -> dict[str, Any] | None:
    conditions = ((provider or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Deleting"), None)


@pytest.mark.e2e
def test_a_deleted_provider_removes_only_this_installations_copies_then_goes(
    lifecycle_fleet: OperatorProcess, secondary_testbed: Testbed, kubectl: Kubectl
) -> None:
    secondary = secondary_testbed.kubectl()
    copy = wait_for(
        lambda: (
            (c := _get(secondary, "deployment", "-n", NS, "chat")) and c["spec"]["replicas"] and c
        ),
        60,
        "our pool's copy in the remote cluster",
        lifecycle_fleet,
    )
    assert copy["metadata"]["labels"][INSTALLATION_LABEL] == INSTALLATION
    namespace = _get(secondary, "namespace", NS)
    assert namespace is not None
    assert namespace["metadata"]["labels"][INSTALLATION_LABEL] == INSTALLATION
    provider = kubectl.json("get", "cloudprovider", PROVIDER)
    assert REMOTE_COPIES_FINALIZER in provider["metadata"]["finalizers"]
    # The other installation's copy of a pool we do not have is not "a copy whose pool is gone".
    theirs = _get(secondary, "deployment", "-n", THEIR_NS, "chat")
    assert theirs is not None and "deletionTimestamp" not in theirs["metadata"]
    assert theirs["spec"]["replicas"] == 1

    kubectl.run("delete", "cloudprovider", PROVIDER, "--wait=false")
    seen: list[dict[str, Any]] = []

    def provider_gone() -> bool:
        found = _get(kubectl, "cloudprovider", PROVIDER)
        if (condition := _deleting(found)) is not None:
            seen.append(condition)
        return found is None

    wait_for(
        provider_gone, 90, "the provider gone once its copies are", lifecycle_fleet, interval=0.25
    )
    assert seen and seen[0]["status"] == "True" and seen[0]["reason"] == "RemovingCopies"
    assert _get(secondary, "deployment", "-n", NS, "chat") is None
    assert _get(secondary, "namespace", NS) is None  # gpufleet made it for the copy
    # The other installation's copy and namespace, of a provider of the same name, stay.
    theirs = _get(secondary, "deployment", "-n", THEIR_NS, "chat")
    assert theirs is not None and "deletionTimestamp" not in theirs["metadata"]
    assert theirs["spec"]["replicas"] == 1
    assert (
        "deletionTimestamp"
        not in (_get(secondary, "namespace", THEIR_NS) or {"metadata": {}})["metadata"]
    )
    # Events about a cluster-scoped object: in whichever namespace the operator posts them.
    events = kubectl.json(
        "get", "events", "-A", "--field-selector", f"involvedObject.name={PROVIDER}"
    )
    assert "RemoteCopiesRemoved" in {e["reason"] for e in events["items"]}

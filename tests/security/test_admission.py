"""Admission catches what it can: a tenant's ServingPool whose name cannot be a label value,
or whose target the operator cannot scale, is refused by the API server (CRD schema and
CEL; examples/invalid/ and tests/e2e/test_crds.py prove each refusal there) or, where CEL
cannot see, gets SpecValid=False naming the field. A pool that names a workload another
pool already scales never takes it: the oldest pool keeps it, the newcomer scales nothing
and says TargetConflict."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from gpufleet.api import parse_pool, parse_provider
from gpufleet.api.crd import KINDS, crd
from gpufleet.api.names import LABEL_VALUE_MAX, POOL_NAME_MAX
from gpufleet.planner.types import PoolKey
from gpufleet.reconcilers.cache import PoolEntry, View, workload_entry
from gpufleet.reconcilers.loop import scale_targets
from gpufleet.reconcilers.targets import TARGET_CONFLICT, claims
from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

EARLY = "2026-12-06T10:00:00Z"
LATE = "2026-12-06T10:00:05Z"


def _spec(target: str = "chat", **ref: Any) -> dict[str, Any]:
    spec: dict[str, Any] = fleets.serving_pool(
        "ns", "p", target=target, gpu_types=["H100"], max_replicas=8, behavior=fleets.behavior()
    )["spec"]
    spec["scaleTargetRef"].update(ref)
    return spec


def _entry(
    name: str,
    created: str,
    uid: str = "",
    *,
    namespace: str = "ns",
    target: str = "chat",
    spec: dict[str, Any] | None = None,
) -> PoolEntry:
    parsed = parse_pool(_spec(target) if spec is None else spec)
    return PoolEntry(namespace, name, 1, parsed, {}, created, uid or f"uid-{name}")


def _errors(parsed: Any) -> list[str]:
    return [str(e) for e in parsed.errors]


# --- names that become label values ---------------------------------------------------


def test_a_pool_name_that_fits_no_namespace_is_refused_as_the_crd_rule_refuses_it() -> None:
    (rule,) = crd(next(k for k in KINDS if k.kind == "ServingPool"))["spec"]["versions"][0][
        "schema"
    ]["openAPIV3Schema"]["x-kubernetes-validations"]

    assert parse_pool(_spec(), "p" * POOL_NAME_MAX, "a").ok
    assert _errors(parse_pool(_spec(), "p" * (POOL_NAME_MAX + 1), "a")) == [
        f"metadata.name: {rule['message']}"
    ]
    assert str(POOL_NAME_MAX) in rule["rule"]


def test_a_pool_name_too_long_for_its_own_namespace_names_the_field_and_the_room() -> None:
    namespace = "n" * 50  # `<namespace>.<name>` leaves 12 characters for the name

    assert parse_pool(_spec(), "p" * 12, namespace).ok
    (error,) = parse_pool(_spec(), "p" * 13, namespace).errors

    assert error.field == "metadata.name"
    assert "at most 12 characters in namespace" in error.message


def test_a_namespace_too_long_for_any_pool_name_says_so() -> None:
    (error,) = parse_pool(_spec(), "p", "n" * (LABEL_VALUE_MAX - 1)).errors

    assert error.field == "metadata.name"
    assert "cannot fit beside namespace" in error.message
    assert parse_pool(_spec(), "p", "n" * (LABEL_VALUE_MAX - 2)).ok


def test_a_provider_name_must_fit_the_provider_label() -> None:
    spec = fleets.cloud_provider(
        "x",
        legal_entity="Example",
        node_pools=[
            fleets.node_pool(
                "h100",
                gpu_type="H100",
                site="s",
                max_nodes=1,
                watts_per_gpu=7,
                idle_watts_per_gpu=1,
            )
        ],
    )["spec"]

    assert parse_provider(spec, "c" * LABEL_VALUE_MAX).ok
    assert [e.field for e in parse_provider(spec, "c" * 64).errors] == ["metadata.name"]
    spec["nodePools"][0]["name"] = "n" * 64
    assert [e.field for e in parse_provider(spec).errors] == ["spec.nodePools[0].name"]


@pytest.mark.parametrize("gpu_type", ["H100-", "H100.", "_H100"])
def test_a_gpu_type_must_be_shaped_like_the_label_value_it_becomes(gpu_type: str) -> None:
    spec = {**_spec(), "gpuTypes": [gpu_type]}

    assert [e.field for e in parse_pool(spec).errors] == ["spec.gpuTypes[0]"]


# --- scaleTargetRef: only what the operator watches ------------------------------------


@pytest.mark.parametrize("kind", ["ReplicaSet", "deployment", "InferencePool", "Pod"])
def test_a_kind_the_operator_does_not_scale_is_refused(kind: str) -> None:
    assert [e.field for e in parse_pool(_spec(kind=kind)).errors] == ["spec.scaleTargetRef.kind"]


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
@pytest.mark.parametrize("version", ["apps/v1beta1", "extensions/v1beta1", "v1", "apps/v2"])
def test_an_api_version_other_than_apps_v1_is_refused_naming_the_kind(
    kind: str, version: str
) -> None:
    assert _errors(parse_pool(_spec(kind=kind, apiVersion=version))) == [
        f"spec.scaleTargetRef: `scaleTargetRef.apiVersion` must be apps/v1 for kind {kind}"
    ]


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_apps_v1_deployments_and_statefulsets_are_admitted(kind: str) -> None:
    assert parse_pool(_spec(kind=kind, apiVersion="apps/v1")).ok


# --- one workload, one pool --------------------------------------------------------------


def test_the_oldest_pool_holds_a_workload_whatever_the_order_or_names() -> None:
    entries = [_entry("aaa-new", LATE), _entry("zzz-old", EARLY)]

    for listed in (entries, entries[::-1]):
        holders, conflicts = claims(listed)
        assert holders == {("ns", "Deployment", "chat"): PoolKey("ns", "zzz-old")}
        assert conflicts == {PoolKey("ns", "aaa-new"): PoolKey("ns", "zzz-old")}


def test_pools_created_in_one_second_are_ordered_by_uid_not_by_name() -> None:
    holders, conflicts = claims([_entry("a", EARLY, "uid-9"), _entry("b", EARLY, "uid-1")])

    assert holders[("ns", "Deployment", "chat")] == PoolKey("ns", "b")
    assert conflicts == {PoolKey("ns", "a"): PoolKey("ns", "b")}


def test_a_pool_without_a_creation_time_cannot_take_a_workload() -> None:
    _, conflicts = claims([_entry("unknown", ""), _entry("known", LATE)])

    assert conflicts == {PoolKey("ns", "unknown"): PoolKey("ns", "known")}


def test_timestamps_are_compared_as_times_not_as_text() -> None:
    _, conflicts = claims(
        [_entry("utc", "2026-12-06T10:00:00Z"), _entry("cet", "2026-12-06T10:30:00+01:00")]
    )

    assert conflicts == {PoolKey("ns", "utc"): PoolKey("ns", "cet")}


def test_same_names_in_other_namespaces_or_kinds_are_other_workloads() -> None:
    entries = [
        _entry("a", EARLY),
        _entry("b", LATE, namespace="other"),
        _entry("c", LATE, spec=_spec(kind="StatefulSet")),
    ]

    holders, conflicts = claims(entries)

    assert conflicts == {}
    assert len(holders) == 3


def test_a_pool_with_an_invalid_spec_claims_nothing() -> None:
    broken = _spec(kind="ReplicaSet")

    holders, conflicts = claims([_entry("broken", EARLY, spec=broken), _entry("b", LATE)])

    assert conflicts == {}
    assert holders == {("ns", "Deployment", "chat"): PoolKey("ns", "b")}


def test_the_newer_pool_is_left_out_of_the_plan_and_says_who_holds_the_target() -> None:
    workload = workload_entry("Deployment", "ns", "chat", fleets.deployment("ns", "chat"))
    view = View(
        [_entry("old", EARLY), _entry("new", LATE), _entry("third", LATE, "uid-z")],
        [],
        [],
        [],
        {},
        {("ns", "Deployment", "chat"): workload},
    )

    pools, targets, errors = scale_targets(view)

    assert set(pools) == set(targets) == {PoolKey("ns", "old")}
    for name in ("new", "third"):
        problem = errors[PoolKey("ns", name)]
        assert problem.reason == TARGET_CONFLICT
        assert "ServingPool old" in problem.message
        assert problem.message.startswith("spec.scaleTargetRef:")


# --- on the real control plane -----------------------------------------------------------

NS = "e2e-admission"
# A namespace so long that no pool name but the shortest fits the pool label beside it.
LONG_NS = "e2e-admission-" + "l" * 46
PROVIDER = "e2e-adm-cloud"
GPU = "E2E-ADM-GPU"


def _pool(name: str, namespace: str = NS) -> dict[str, Any]:
    return fleets.serving_pool(
        namespace,
        name,
        target="chat",
        gpu_types=[GPU],
        max_replicas=32,
        behavior=fleets.behavior(scale_down_window_seconds=5),
    )


@pytest.fixture(scope="module")
def admission(testbed: Testbed, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    fleets.install_crds(kubectl)
    h100 = fleets.node_pool(
        "h100", gpu_type=GPU, site="adm", max_nodes=4, watts_per_gpu=700, idle_watts_per_gpu=90
    )
    objects = [
        fleets.namespace(NS),
        fleets.namespace(LONG_NS),
        fleets.cloud_provider(PROVIDER, legal_entity="Adm GmbH", node_pools=[h100]),
        fleets.deployment(NS, "chat", node_selector={fleets.PROVIDER_LABEL: PROVIDER}),
        _pool("holder"),
        _pool("too-long-here", LONG_NS),
    ]
    fleets.apply(kubectl, objects)
    exporter = testbed.exporter()
    exporter.set_queue(NS, "holder", 6)  # 3 replicas
    exporter.set_queue(NS, "newcomer", 40)  # 20 replicas, if it scaled anything
    process = OperatorProcess(testbed, testbed.directory / "logs" / "operator-admission.log")
    try:
        yield process.start()
    finally:
        process.stop()
        fleets.delete(kubectl, [*objects, _pool("newcomer")])


def _status(kubectl: Kubectl, name: str, namespace: str = NS) -> dict[str, Any]:
    return dict(kubectl.json("get", "servingpool", "-n", namespace, name).get("status") or {})


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", ()) if c["type"] == kind), {})


def _replicas(kubectl: Kubectl) -> int:
    return int(kubectl.json("get", "deployment", "-n", NS, "chat")["spec"]["replicas"])


@pytest.mark.e2e
def test_a_newer_pool_on_a_scaled_deployment_reports_a_conflict_and_changes_nothing(
    admission: OperatorProcess, kubectl: Kubectl
) -> None:
    def holder_scaled() -> bool:
        replicas, status = _replicas(kubectl), _status(kubectl, "holder")
        assert replicas == 3, f"chat at {replicas}; holder: {status}"  # shown on time-out
        return True

    wait_for(holder_scaled, 60, "holder scales chat to 3", admission)

    fleets.apply(kubectl, [_pool("newcomer")])

    conflict = wait_for(
        lambda: (
            (c := _condition(_status(kubectl, "newcomer"), "TargetFound")).get("reason")
            == TARGET_CONFLICT
            and c
        ),
        30,
        "newcomer reports TargetConflict",
        admission,
    )
    assert conflict["status"] == "False"
    assert "ServingPool holder" in conflict["message"]
    assert _condition(_status(kubectl, "newcomer"), "Ready")["status"] == "False"
    seen = set()
    deadline = time.monotonic() + 5  # five ticks with both pools naming chat
    while time.monotonic() < deadline:
        seen.add(_replicas(kubectl))
        time.sleep(0.25)
    assert seen == {3}
    holder = _status(kubectl, "holder")
    assert _condition(holder, "TargetFound")["status"] == "True"
    assert holder["desiredReplicas"] == 3


@pytest.mark.e2e
def test_a_pool_name_too_long_beside_its_namespace_is_admitted_but_marked_invalid(
    admission: OperatorProcess, kubectl: Kubectl
) -> None:
    # CEL cannot see the namespace: the API server admits it, the operator says why not.
    valid = wait_for(
        lambda: _condition(_status(kubectl, "too-long-here", LONG_NS), "SpecValid") or None,
        30,
        "SpecValid on the long-named pool",
        admission,
    )

    assert (valid["status"], valid["reason"]) == ("False", "InvalidField")
    assert valid["message"].startswith("metadata.name: `metadata.name` must be at most 2 ")

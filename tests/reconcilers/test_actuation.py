"""Actuation as data: which changes a tick makes (pure) and the order in which they reach the
clouds and the cluster, checked against an in-memory driver and scaler, with no cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from gpufleet.api import parse_provider
from gpufleet.api.pool import Mode, ServingPoolSpec
from gpufleet.api.provider import CloudProviderSpec
from gpufleet.drivers.base import InsufficientCapacity, NodePoolRef, NodePoolState
from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.planner.types import (
    CapacityError,
    Fleet,
    FleetPlan,
    NodePoolKey,
    NodePoolPlan,
    PlannerState,
    PoolKey,
    PoolPlan,
    frozen_map,
)
from gpufleet.reconcilers.actuation import (
    WRITE_CONCURRENCY,
    ApplyCopy,
    Change,
    DeleteCopy,
    MoveReplicas,
    ResizeNodePool,
    ScaleWorkload,
    batches,
    execute,
    ordered,
)
from gpufleet.reconcilers.apply import Effects
from gpufleet.reconcilers.burst.copies import Copy, source_hash
from gpufleet.reconcilers.cache import NodeEntry, PodEntry, WorkloadEntry, workload_entry
from gpufleet.reconcilers.changes import (
    Copies,
    Inputs,
    node_pool_changes,
    plan_changes,
    removals,
)
from gpufleet.reconcilers.drain import Drainer, DrainRequest
from gpufleet.reconcilers.intent import Action, Journal, Record
from gpufleet_testbed import fleets

from .builders import minimal_pool, simulated_provider

CHAT, BATCH = PoolKey("ns", "chat"), PoolKey("ns", "batch")
GROW, SHRINK = NodePoolKey("cloud", "grow"), NodePoolKey("cloud", "shrink")
REMOTE = NodePoolKey("remote", "h100")


class MemoryDriver:
    """A NodePoolDriver that keeps sizes in a dict and logs every call."""

    def __init__(self, log: list[str], sizes: dict[str, int], fails: Exception | None = None):
        self.log, self.sizes, self.fails = log, sizes, fails

    async def get_pool(self, ref: NodePoolRef) -> NodePoolState:
        return NodePoolState(self.sizes[ref.node_pool], (), ())

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        if self.fails is not None and ref.node_pool == "grow":
            raise self.fails
        self.log.append(f"nodes {ref.node_pool} -> {size}")
        self.sizes[ref.node_pool] = size

    async def delete_nodes(self, ref: NodePoolRef, names: Sequence[str], *, action_id: str) -> None:
        self.log.append(f"delete {ref.node_pool} {list(names)}")


class MemoryKube:
    """The API server calls actuation makes (reconcilers/kube.py `Workloads`), in memory."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.pods: dict[str, list[dict[str, Any]]] = {}

    async def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        self.log.append(f"scale {name} -> {replicas}")

    async def evict(self, namespace: str, name: str, grace_seconds: int) -> bool:
        self.log.append(f"evict {name}")
        return True

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return self.pods.get(label_selector, [])

    async def list_node_names(self, label_selector: str) -> list[str]:
        return ["node-1"]

    async def event(self, *args: Any, **kwargs: Any) -> None:
        return None


class MemoryRemote:
    """The remote clusters' copies, as RemoteClusters.resize sees them."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def resize(
        self,
        provider: str,
        key: PoolKey,
        copy: Copy | None,
        workload: WorkloadEntry | None,
        size: int,
        action_id: str,
    ) -> bool:
        self.log.append(f"copy {key.name}@{provider} -> {size}")
        return True


def _workload(name: str, replicas: int) -> WorkloadEntry:
    body = {
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}},
        }
    }
    return workload_entry("Deployment", "ns", name, body)


def _remote_provider() -> CloudProviderSpec:
    h100 = fleets.node_pool(
        "h100", gpu_type="H100", site="ams1", max_nodes=4, watts_per_gpu=700, idle_watts_per_gpu=100
    )
    spec = fleets.cloud_provider(
        "remote",
        legal_entity="Burst BV",
        node_pools=[h100],
        role="Secondary",
        cluster={"kubeconfigSecretRef": {"name": "remote", "key": "kubeconfig"}},
    )["spec"]
    parsed = parse_provider(spec)
    assert parsed.value is not None, parsed.errors
    return parsed.value


def _pool_plan(key: PoolKey, placements: Mapping[NodePoolKey, int]) -> PoolPlan:
    total = sum(placements.values())
    return PoolPlan(key, total, 0, frozen_map(placements), total, 0, 0, 0.0, True, ())


def _node_plan(key: NodePoolKey, desired: int) -> NodePoolPlan:
    return NodePoolPlan(key, desired, 0, 0, ())


def _inputs(
    pools: Mapping[PoolKey, ServingPoolSpec] | None = None,
    workloads: Mapping[PoolKey, WorkloadEntry] | None = None,
    **extra: Any,
) -> Inputs:
    """chat grows 3 -> 10 and batch shrinks 8 -> 1 on node pool `grow` (2 -> 4); node pool
    `shrink` goes 5 -> 2; chat also wants 2 replicas on the remote provider."""
    pools = pools or {CHAT: minimal_pool("chat"), BATCH: minimal_pool("batch")}
    plan = FleetPlan(
        frozen_map(
            {
                CHAT: _pool_plan(CHAT, {GROW: 10, REMOTE: 2}),
                BATCH: _pool_plan(BATCH, {GROW: 1}),
            }
        ),
        frozen_map({GROW: _node_plan(GROW, 4), SHRINK: _node_plan(SHRINK, 2)}),
        frozen_map({}),
        PlannerState(),
    )
    providers = {"cloud": simulated_provider("cloud"), "remote": _remote_provider()}
    fleet = Fleet(frozen_map(pools), frozen_map(providers), frozen_map({}))
    refs = {k: NodePoolRef(k.provider, k.node_pool, k.node_pool) for k in (GROW, SHRINK)}
    base: dict[str, Any] = {
        "unreachable": (),
        "copies": Copies({}, set(pools), lambda namespace: True),
    }
    return Inputs(
        plan,
        fleet,
        workloads or {CHAT: _workload("chat", 3), BATCH: _workload("batch", 8)},
        refs,
        {GROW: 2, SHRINK: 5},
        **{**base, **extra},
    )


def _run(
    changes: Sequence[Change], journal: Journal | None = None, fails: Exception | None = None
) -> tuple[list[str], set[str] | None, Effects]:
    log: list[str] = []
    effects = Effects(
        MemoryKube(log),
        {"cloud": MemoryDriver(log, {"grow": 2, "shrink": 5}, fails)},
        Drainer(),
        MemoryRemote(log),  # type: ignore[arg-type]
        OperatorMetrics(),
        {},
        1000.0,
    )
    done = asyncio.run(execute(changes, effects, journal, 1000.0))
    return log, done, effects


def test_nodes_grow_before_replicas_and_shrink_after_them() -> None:
    changes, failed = plan_changes(_inputs())

    log, done, _ = _run(changes)

    assert not failed
    assert log == [
        "nodes grow -> 4",
        "scale batch -> 1",
        "scale chat -> 10",
        "copy chat@remote -> 2",
        "nodes shrink -> 2",
    ]
    assert done is not None and len(done) == 5


def test_a_refused_node_pool_is_not_done_and_stops_nothing() -> None:
    changes, _ = plan_changes(_inputs())

    log, done, effects = _run(changes, fails=InsufficientCapacity("no H100 in fra1"))

    assert "nodes grow -> 4" not in log
    assert log[-1] == "nodes shrink -> 2" and "scale chat -> 10" in log
    assert done is not None and not any(a.startswith("nodepool/cloud/grow") for a in done)
    assert isinstance(effects.capacity_errors[GROW], CapacityError)  # the planner backs off


def test_an_unexpected_driver_error_is_that_node_pool_only() -> None:
    changes, _ = plan_changes(_inputs())

    log, done, _ = _run(changes, fails=RuntimeError("bug"))

    assert "nodes shrink -> 2" in log and "scale batch -> 1" in log
    assert done is not None and len(done) == 4


def test_held_node_pools_grow_but_never_shrink() -> None:
    plans = {GROW: _node_plan(GROW, 4), SHRINK: _node_plan(SHRINK, 2)}
    refs = {k: NodePoolRef(k.provider, k.node_pool, k.node_pool) for k in plans}
    now = {GROW: 2, SHRINK: 5}

    held = node_pool_changes(plans, now, refs, hold_shrinks={SHRINK})
    free = node_pool_changes(plans, now, refs, hold_shrinks=())

    assert [(c.key.node_pool, c.size) for c in held] == [("grow", 4)]
    assert [(c.key.node_pool, c.size) for c in free] == [("grow", 4), ("shrink", 2)]


def _gpu_pod(name: str, node: str | None, terminating: bool = False) -> PodEntry:
    return PodEntry("ns", name, {}, node, terminating, gpus=1)


def test_a_shrink_removes_the_nodes_with_the_fewest_gpu_pods_by_name() -> None:
    """The backend's own choice (random for Cluster API, the newest for Karpenter) may take
    a node that serves while an idle one stays: a replica lost until it loads elsewhere."""
    state = NodePoolState(3, ("a", "b", "c"), ("a", "b", "c", "d"))  # d boots
    nodes = [NodeEntry(n, "cloud", "shrink", True) for n in ("a", "b", "c")]
    pods = {
        "ns": [
            _gpu_pod("p1", "a"),
            _gpu_pod("p2", "a"),
            _gpu_pod("p3", "c"),
            _gpu_pod("p4", "b", terminating=True),  # leaving: b is idle
            _gpu_pod("p5", None),
        ]
    }
    order = removals({SHRINK}, {SHRINK: state}, nodes, pods)
    refs = {SHRINK: NodePoolRef("cloud", "shrink", "shrink")}

    (change,) = node_pool_changes({SHRINK: _node_plan(SHRINK, 2)}, {SHRINK: 4}, refs, (), order)

    assert order[SHRINK] == ("d", "b", "c", "a")
    assert change.remove == ("d", "b")
    log, _, _ = _run([change])
    assert log == ["delete shrink ['d', 'b']", "nodes shrink -> 2"]


def test_a_shrink_never_names_a_node_that_would_stay() -> None:
    """Karpenter's target is a limit: 4 allowed, 2 nodes, 3 wanted removes none."""
    state = NodePoolState(4, ("a", "b"), ("a", "b"))
    nodes = [NodeEntry(n, "cloud", "shrink", True) for n in ("a", "b")]
    pods = {"ns": [_gpu_pod("p1", "a"), _gpu_pod("p2", "b")]}
    order = removals({SHRINK}, {SHRINK: state}, nodes, pods)
    refs = {SHRINK: NodePoolRef("cloud", "shrink", "shrink")}

    (keep,) = node_pool_changes({SHRINK: _node_plan(SHRINK, 3)}, {SHRINK: 4}, refs, (), order)
    (one,) = node_pool_changes({SHRINK: _node_plan(SHRINK, 1)}, {SHRINK: 4}, refs, (), order)

    assert keep.remove == () and keep.size == 3
    assert len(one.remove) == 1


def test_node_pools_whose_nodes_are_not_watched_leave_the_choice_to_their_backend() -> None:
    state = NodePoolState(2, ("r1", "r2"), ("r1", "r2"))  # a remote cluster's nodes
    local = [NodeEntry("a", "cloud", "shrink", True)]

    assert removals({SHRINK}, {SHRINK: state}, local, {}) == {}
    assert removals(set(), {SHRINK: state}, local, {}) == {}
    grow = node_pool_changes(
        {SHRINK: _node_plan(SHRINK, 3)},
        {SHRINK: 2},
        {SHRINK: NodePoolRef("cloud", "shrink", "shrink")},
        (),
        {SHRINK: ("a",)},
    )
    assert grow[0].remove == ()  # a growth removes nothing


def test_node_pools_without_a_driver_or_a_state_are_left_alone() -> None:
    seen, unseen = NodePoolKey("cloud", "seen"), NodePoolKey("cloud", "unseen")
    plans = {seen: _node_plan(seen, 3), unseen: _node_plan(unseen, 3)}
    refs = {seen: NodePoolRef("cloud", "seen", "seen")}

    found = node_pool_changes(plans, {seen: 1, unseen: 1}, refs, hold_shrinks=())

    assert [c.key for c in found] == [seen]


def test_a_dry_run_pool_changes_nothing_of_its_own() -> None:
    dry = minimal_pool("chat").model_copy(update={"mode": Mode.DRY_RUN})

    changes, _ = plan_changes(_inputs(pools={CHAT: dry, BATCH: minimal_pool("batch")}))

    assert not [c for c in changes if getattr(c, "pool", None) == CHAT]


def test_a_pool_whose_moved_replicas_wait_does_not_grow_yet() -> None:
    changes, _ = plan_changes(_inputs(waiting={CHAT}))

    assert not [c for c in changes if isinstance(c, ScaleWorkload) and c.pool == CHAT]
    assert [c for c in changes if isinstance(c, ScaleWorkload) and c.pool == BATCH]


def test_preempted_replicas_move_at_the_same_size_after_every_resize() -> None:
    drain = DrainRequest({GROW: 1}, 30, ("ns/urgent",))
    workloads = {CHAT: _workload("chat", 10), BATCH: _workload("batch", 8)}

    changes, _ = plan_changes(_inputs(workloads=workloads, drains={CHAT: drain}))

    assert isinstance(changes[-1], MoveReplicas) and changes[-1].pool == CHAT
    assert changes[-1].size == changes[-1].current == 10


def test_a_pool_whose_changes_fail_holds_every_node_pool_shrink() -> None:
    workloads = {BATCH: _workload("batch", 8)}  # chat's workload is missing: a bug, chat's own

    changes, failed = plan_changes(_inputs(workloads=workloads))

    assert list(failed) == [CHAT]
    assert [c.target for c in changes] == [
        "nodepool/cloud/grow",
        "Deployment/ns/batch",
    ]


def test_a_copy_whose_pool_is_gone_is_deleted_and_an_invalid_pools_is_held() -> None:
    gone, invalid = PoolKey("ns", "gone"), PoolKey("ns", "typo")
    found = {
        "remote": {
            gone: Copy("ns", "gone", 2, "x"),
            invalid: Copy("ns", "typo", 3, "x"),
        }
    }
    copies = Copies(found, {CHAT, BATCH, invalid}, lambda namespace: True)

    changes, _ = plan_changes(_inputs(copies=copies))

    deletes = [c for c in changes if isinstance(c, DeleteCopy)]
    assert [(c.pool, c.current, c.size) for c in deletes] == [(gone, -1, 0)]


def test_another_installations_copies_are_left_alone() -> None:
    found = {"remote": {PoolKey("theirs", "x"): Copy("theirs", "x", 2, "h")}}

    changes, _ = plan_changes(_inputs(copies=Copies(found, {CHAT, BATCH}, lambda ns: False)))

    assert not [c for c in changes if isinstance(c, DeleteCopy)]


def test_a_stale_copy_is_reapplied_at_its_size_last() -> None:
    chat = _workload("chat", 3)
    found = {"remote": {CHAT: Copy("ns", "chat", 2, "old-template")}}

    changes, _ = plan_changes(_inputs(copies=Copies(found, {CHAT, BATCH}, lambda ns: True)))
    log, done, _ = _run(changes)

    assert isinstance(changes[-1], ApplyCopy) and changes[-1].size == changes[-1].current == 2
    assert log[-1] == "copy chat@remote -> 2"
    assert done is not None and not any("remote" in d for d in done)  # not a recorded resize
    fresh = {"remote": {CHAT: Copy("ns", "chat", 2, source_hash(chat, _remote_provider().cluster))}}
    unchanged, _ = plan_changes(_inputs(copies=Copies(fresh, {CHAT, BATCH}, lambda ns: True)))
    assert not [c for c in unchanged if isinstance(c, ApplyCopy)]


def test_copies_on_an_unreachable_provider_are_held() -> None:
    changes, _ = plan_changes(_inputs(unreachable={"remote"}))

    assert not [c for c in changes if isinstance(c, ApplyCopy | DeleteCopy)]


class MemoryAnchor:
    """The anchor ConfigMap the journal reads and writes, with a resourceVersion."""

    def __init__(self, record: Record, conflict: bool = False) -> None:
        self.data = {"intent": record.dump()}
        self.version, self.conflict = 1, conflict

    async def read_config_map_meta(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], dict[str, str], str]:
        return dict(self.data), {}, str(self.version)

    async def patch_config_map_data(
        self, namespace: str, name: str, data: Mapping[str, str], version: str
    ) -> str:
        from gpufleet.reconcilers.kube import Conflict

        if self.conflict or version != str(self.version):
            raise Conflict("changed")
        self.data.update(data)
        self.version += 1
        return str(self.version)


def test_a_recorded_action_is_retried_under_its_own_id() -> None:
    recorded = Action("7.Deployment/ns/chat=10", "Deployment/ns/chat", 10)
    anchor = MemoryAnchor(Record(7, "old-leader", (recorded,)))
    journal = Journal(anchor, "gpufleet", "anchor", "me")  # type: ignore[arg-type]
    changes, _ = plan_changes(_inputs())

    _, done, _ = _run(changes, journal)

    assert done is not None and recorded.id in done
    assert all(a.done for a in Record.load(anchor.data["intent"]).actions)


def test_nothing_is_applied_when_another_writer_recorded_first() -> None:
    anchor = MemoryAnchor(Record(), conflict=True)
    journal = Journal(anchor, "gpufleet", "anchor", "me")  # type: ignore[arg-type]
    changes, _ = plan_changes(_inputs())

    log, done, _ = _run(changes, journal)

    assert done is None and log == []


class SlowKube(MemoryKube):
    """Scales that each wait on the API server: how many are in flight at once."""

    def __init__(self, log: list[str]) -> None:
        super().__init__(log)
        self.in_flight = self.most = 0

    async def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self.in_flight -= 1
        await super().scale(kind, namespace, name, replicas)


def _scales(count: int) -> list[Change]:
    return [
        ScaleWorkload(PoolKey("ns", f"p{i:03}"), _workload(f"p{i:03}", 1), 1, 2)
        for i in range(count)
    ]


def test_workload_scales_go_out_together_bounded_after_the_nodes_grow() -> None:
    grow = ResizeNodePool(GROW, NodePoolRef("cloud", "grow", "grow"), 2, 4)
    log: list[str] = []
    kube = SlowKube(log)
    effects = Effects(
        kube, {"cloud": MemoryDriver(log, {"grow": 2})}, Drainer(), None, OperatorMetrics(), {}, 0.0
    )

    done = asyncio.run(execute([*_scales(40), grow], effects, None, 0.0))

    assert done is not None and len(done) == 41
    assert log[0] == "nodes grow -> 4"  # its phase first, and alone
    assert sorted(log[1:]) == [f"scale p{i:03} -> 2" for i in range(40)]
    assert 1 < kube.most <= WRITE_CONCURRENCY


def test_only_plain_scales_of_one_phase_share_a_batch() -> None:
    drained = ScaleWorkload(CHAT, _workload("chat", 3), 3, 1, DrainRequest({}, 30))
    grow = ResizeNodePool(GROW, NodePoolRef("cloud", "grow", "grow"), 2, 4)
    shrink = ResizeNodePool(SHRINK, NodePoolRef("cloud", "shrink", "shrink"), 5, 2)
    plain = _scales(3)

    found = batches(ordered([*plain, drained, grow, shrink]))

    assert found == [(grow,), (drained,), tuple(plain), (shrink,)]

"""Leader hand-over: the Lease election and the fence on writes (reconcilers/leader.py,
reconcilers/kube.py), with an in-memory Lease and scale subresource and fake clocks.

The threat: two replicas that both believe they lead (a leader stalled past its Lease, clock
skew) write alternately, and the pool's replicas flap. The controls: expiry judged by the
candidate's own clock, a leader that stops trusting its term before anyone may take it, and
writes under the term and the resourceVersion read after confirming the Lease."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gpufleet.drivers.base import NodePoolRef
from gpufleet.metrics.exporter import OperatorMetrics
from gpufleet.planner.types import NodePoolKey
from gpufleet.reconcilers.actuation import ResizeNodePool, execute
from gpufleet.reconcilers.apply import Effects
from gpufleet.reconcilers.drain import Drainer
from gpufleet.reconcilers.intent import Journal
from gpufleet.reconcilers.kube import TERM_ANNOTATION, Conflict, Kube
from gpufleet.reconcilers.leader import (
    Deposed,
    Elector,
    Expiry,
    Held,
    LeaseStale,
    LeaseState,
    NotLeading,
    Step,
    Timing,
    check_term,
    decide,
    term_of,
)

DURATION = 9.0


class Clock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class MemoryLease:
    """One Lease with resourceVersions, as the API server keeps it."""

    def __init__(self) -> None:
        self.body: dict[str, Any] | None = None
        self.version = 0
        self.writes = 0

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.body)

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if self.body is not None:
            raise Conflict("exists")
        return self._store(body)

    async def replace_lease(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        assert self.body is not None
        if body["metadata"]["resourceVersion"] != self.body["metadata"]["resourceVersion"]:
            raise Conflict("changed")
        return self._store(body)

    def _store(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.writes += 1
        self.body = copy.deepcopy(dict(body))
        self.body["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.body)

    @property
    def state(self) -> LeaseState:
        assert self.body is not None
        return LeaseState.of(self.body)


def elector(lease: MemoryLease, me: str, clock: Clock) -> Elector:
    return Elector(lease, "gpufleet-system", "gpufleet", me, Timing(DURATION), clock=clock)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def lease_of(holder: str, version: str, transitions: int = 3) -> LeaseState:
    return LeaseState(holder, DURATION, transitions, version)


# --- the election, pure ---------------------------------------------------------------


def test_no_lease_is_created_and_a_released_one_is_taken_at_once() -> None:
    assert decide(None, "a", None, Expiry(), 0.0) is Step.CREATE
    assert decide(lease_of("", "7"), "a", None, Expiry(), 0.0) is Step.TAKE


def test_another_holders_lease_is_taken_only_after_a_whole_duration_unchanged() -> None:
    expiry = Expiry()
    assert decide(lease_of("b", "7"), "a", None, expiry, 100.0) is Step.WAIT
    assert decide(lease_of("b", "7"), "a", None, expiry, 100.0 + DURATION - 0.01) is Step.WAIT
    assert decide(lease_of("b", "7"), "a", None, expiry, 100.0 + DURATION) is Step.TAKE


def test_a_renewal_restarts_the_candidates_count() -> None:
    expiry = Expiry()
    decide(lease_of("b", "7"), "a", None, expiry, 0.0)
    assert decide(lease_of("b", "8"), "a", None, expiry, DURATION) is Step.WAIT
    assert decide(lease_of("b", "8"), "a", None, expiry, 2 * DURATION - 0.01) is Step.WAIT
    assert decide(lease_of("b", "8"), "a", None, expiry, 2 * DURATION) is Step.TAKE


def test_expiry_ignores_the_holders_renew_time_so_clock_offsets_do_not_matter() -> None:
    # A candidate whose wall clock is an hour ahead (or behind) still waits a full duration
    # from when it first saw the holder's last write: it never reads renewTime.
    for start in (-3600.0, 0.0, 3600.0):
        expiry = Expiry()
        assert decide(lease_of("b", "7"), "a", None, expiry, start) is Step.WAIT
        assert decide(lease_of("b", "7"), "a", None, expiry, start + 1) is Step.WAIT


def test_our_own_lease_is_renewed_in_our_term_and_taken_over_from_an_earlier_process() -> None:
    assert decide(lease_of("a", "7", 3), "a", 3, Expiry(), 0.0) is Step.RENEW
    assert decide(lease_of("a", "7", 3), "a", None, Expiry(), 0.0) is Step.TAKE


def test_a_newer_term_on_an_object_deposes_and_an_older_or_missing_one_does_not() -> None:
    check_term(4, None)
    check_term(4, 4)
    check_term(4, 3)
    with pytest.raises(Deposed):
        check_term(4, 5)
    assert term_of({TERM_ANNOTATION: "12"}) == 12
    assert term_of({TERM_ANNOTATION: "twelve"}) is None
    assert term_of(None) is None


def test_the_leader_stops_trusting_its_term_before_anyone_may_take_it() -> None:
    timing = Timing(DURATION)
    assert timing.renew_deadline < timing.duration
    assert timing.retry * 2 < timing.renew_deadline  # a renewal may fail twice in time


# --- the election, through rounds -----------------------------------------------------


def test_a_stalled_leader_is_replaced_after_the_duration_and_cannot_write_on_resuming() -> None:
    lease, clock_a, clock_b = MemoryLease(), Clock(), Clock(5000.0)  # unrelated clocks
    a, b = elector(lease, "a", clock_a), elector(lease, "b", clock_b)
    run(a.step())
    run(b.step())
    assert a.leading() and not b.leading() and lease.state.holder == "a"
    term = lease.state.transitions

    # a stalls (SIGSTOP, a blocked event loop): it renews no more. b keeps watching.
    for _ in range(int(DURATION) + 1):
        clock_a.now += 1
        clock_b.now += 1
        run(b.step())
    assert b.leading() and lease.state.holder == "b"
    assert lease.state.transitions == term + 1

    # a resumes: its term ran out by its own clock, and the Lease names b.
    assert not a.leading()
    with pytest.raises(LeaseStale):
        a.fresh()
    run(a.step())
    assert a.held is None and lease.state.holder == "b"


def test_a_candidate_never_takes_the_lease_while_the_leader_still_trusts_its_term() -> None:
    lease, clock_a, clock_b = MemoryLease(), Clock(), Clock()
    a, b = elector(lease, "a", clock_a), elector(lease, "b", clock_b)
    run(a.step())
    for step in range(200):  # a renews at each retry until it stalls at step 50
        t = step * 0.1
        clock_a.now = clock_b.now = t
        if step < 50 and step % 10 == 0:
            run(a.step())
        run(b.step())
        assert not (a.leading() and b.leading()), f"two leaders at {t:.1f}s"
    assert b.leading()


def test_a_released_lease_is_taken_at_the_next_round() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    run(a.step())
    run(b.step())
    run(a.release())
    assert lease.state.holder == "" and not a.leading()
    run(b.step())
    assert b.leading() and lease.state.holder == "b"


def test_confirm_deposes_a_leader_whose_lease_names_another_term() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    run(a.step())
    assert run(a.confirm()) == lease.state.transitions
    assert lease.body is not None
    lease.body["spec"]["holderIdentity"] = "b"
    lease.body["spec"]["leaseTransitions"] += 1
    with pytest.raises(Deposed):
        run(a.confirm())
    with pytest.raises(NotLeading):
        a.fresh()


# --- the fence on the scale write -----------------------------------------------------


class MemoryApps:
    """A Deployment's scale subresource whose writes honour the resourceVersion."""

    def __init__(self, replicas: int) -> None:
        self.replicas, self.version = replicas, 1
        self.between_read_and_write: list[Any] = []  # runs once, after the next read

    def read_namespaced_deployment_scale(self, name: str, namespace: str) -> Any:
        found = _Scale(self.replicas, str(self.version))
        for action in self.between_read_and_write:
            action()
        self.between_read_and_write.clear()
        return found

    def patch_namespaced_deployment_scale(
        self, name: str, namespace: str, body: Mapping[str, Any], **_: Any
    ) -> None:
        if body["metadata"]["resourceVersion"] != str(self.version):
            raise ApiException(status=409, reason="Conflict")
        self.replicas = body["spec"]["replicas"]
        self.version += 1


class _Meta:
    def __init__(self, version: str) -> None:
        self.resource_version = version


class _Spec:
    def __init__(self, replicas: int) -> None:
        self.replicas = replicas


class _Scale:
    def __init__(self, replicas: int, version: str) -> None:
        self.spec, self.metadata = _Spec(replicas), _Meta(version)


def fenced_kube(apps: MemoryApps, fence: Elector) -> Kube:
    kube = Kube(ApiClient(), "gpufleet-system")
    kube.apps = apps  # type: ignore[assignment]
    kube.fence = fence
    return kube


def test_the_leader_scales_under_the_version_it_read() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    run(a.step())
    apps = MemoryApps(4)

    run(fenced_kube(apps, a).scale("Deployment", "ns", "chat", 12))

    assert apps.replicas == 12


def test_a_deposed_leader_does_not_scale() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    run(a.step())
    run(a.release())  # b takes over, as after a stalled past its Lease
    run(b.step())
    a.held = Held(0, clock.now + 100)  # ...but a, resuming, still believes it leads term 0
    apps = MemoryApps(12)

    with pytest.raises(Deposed):
        run(fenced_kube(apps, a).scale("Deployment", "ns", "chat", 4))
    assert apps.replicas == 12 and apps.version == 1


def test_a_leader_whose_term_ran_out_does_not_scale() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    run(a.step())
    clock.now += Timing(DURATION).renew_deadline
    apps = MemoryApps(12)

    with pytest.raises(LeaseStale):
        run(fenced_kube(apps, a).scale("Deployment", "ns", "chat", 4))
    assert apps.replicas == 12


def test_a_successors_scale_between_the_read_and_the_write_refuses_the_stale_write() -> None:
    # The window the Lease cannot close: a confirmed its term, then stalled before writing;
    # meanwhile b took over and scaled. a's write carries the version it read: refused.
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    run(a.step())
    apps = MemoryApps(12)

    def successor_scales() -> None:
        # b took the Lease (a new term, its holder) and then scaled.
        assert lease.body is not None
        lease.body["spec"]["holderIdentity"] = "b"
        lease.body["spec"]["leaseTransitions"] = lease.body["spec"].get("leaseTransitions", 0) + 1
        lease.version += 1
        lease.body["metadata"]["resourceVersion"] = str(lease.version)
        apps.replicas, apps.version = 8, apps.version + 1

    apps.between_read_and_write.append(successor_scales)

    # The write under the version a read is refused; a's next try finds the Lease gone to b.
    with pytest.raises((Conflict, Deposed)):
        run(fenced_kube(apps, a).scale("Deployment", "ns", "chat", 4))
    assert apps.replicas == 8


def test_a_status_update_between_the_read_and_the_write_is_retried() -> None:
    """The workload's resourceVersion moves with its status (pods starting): a conflict
    while the Lease is still held is read again and written, not reported."""
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    run(a.step())
    apps = MemoryApps(12)

    def controller_updates_status() -> None:
        apps.version += 1

    apps.between_read_and_write.append(controller_updates_status)

    run(fenced_kube(apps, a).scale("Deployment", "ns", "chat", 4))
    assert apps.replicas == 4


def test_a_scale_already_at_its_size_writes_nothing() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    run(a.step())
    apps = MemoryApps(4)
    run(fenced_kube(apps, a).scale("Deployment", "ns", "chat", 4))
    assert apps.version == 1


# --- the anchor: the journal's record carries the term --------------------------------


class MemoryAnchor:
    def __init__(self, term: int | None) -> None:
        self.annotations = {} if term is None else {TERM_ANNOTATION: str(term)}
        self.data: dict[str, str] = {}
        self.version = 1

    async def read_config_map_meta(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], dict[str, str], str]:
        return dict(self.data), dict(self.annotations), str(self.version)

    async def patch_config_map_data(
        self, namespace: str, name: str, data: Mapping[str, str], version: str
    ) -> str:
        self.data.update(data)
        self.version += 1
        return str(self.version)


def test_an_anchor_written_under_a_newer_term_deposes_the_journals_leader() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    run(a.step())
    anchor = MemoryAnchor(term=a.fresh() + 1)
    journal = Journal(anchor, "gpufleet-system", "gpufleet-fleet", "a", fence=a)  # type: ignore[arg-type]

    with pytest.raises(Deposed):
        run(journal.begin({"Deployment/ns/chat": 4}, {"Deployment/ns/chat": 12}))
    assert anchor.data == {} and not a.leading()


def test_an_anchor_of_this_term_or_an_older_one_is_written() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    run(a.step())
    for term in (None, a.fresh()):
        anchor = MemoryAnchor(term)
        journal = Journal(anchor, "gpufleet-system", "gpufleet-fleet", "a", fence=a)  # type: ignore[arg-type]
        actions = run(journal.begin({"Deployment/ns/chat": 4}, {"Deployment/ns/chat": 12}))
        assert actions and "intent" in anchor.data


# --- a loop that stops going round, an anchor that goes -------------------------------


def test_liveness_fails_when_the_fleet_loop_stops_going_round() -> None:
    from gpufleet.reconcilers.liveness import LoopStuck, TickWatch

    clock = Clock()
    watch = TickWatch(stuck_after=120, clock=clock)
    watch.check()  # not started yet: healthy
    watch.beat()
    clock.now += 119
    watch.check()
    clock.now += 2
    with pytest.raises(LoopStuck):
        watch.check()
    watch.beat()
    watch.check()


class VanishingAnchor(MemoryAnchor):
    """An anchor someone deleted: reads find nothing until it is created again."""

    def __init__(self) -> None:
        super().__init__(None)
        self.exists, self.created = False, 0

    async def read_config_map_meta(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], dict[str, str], str]:
        if not self.exists:
            raise ApiException(status=404, reason="Not Found")
        return await super().read_config_map_meta(namespace, name)

    async def ensure_config_map(self, namespace: str, name: str) -> None:
        self.exists, self.created = True, self.created + 1


def test_a_deleted_anchor_is_recreated_and_the_intent_recorded_in_it() -> None:
    anchor = VanishingAnchor()
    journal = Journal(anchor, "gpufleet-system", "gpufleet-fleet", "a")  # type: ignore[arg-type]

    actions = run(journal.begin({"Deployment/ns/chat": 4}, {"Deployment/ns/chat": 12}))

    assert anchor.created == 1 and actions and "intent" in anchor.data


# --- drains outlive their leader ------------------------------------------------------


def test_a_new_leader_takes_over_the_evictions_and_resize_its_predecessor_recorded() -> None:
    from gpufleet.planner.types import PoolKey
    from gpufleet.reconcilers.drain import Drainer
    from gpufleet.reconcilers.intent import Record

    pool, other = PoolKey("team-a", "chat"), PoolKey("team-b", "batch")
    old = Drainer()
    old.in_flight[pool] = {"chat-1": 130.0, "chat-2": 90.0}  # chat-2's deadline has passed
    old.resized[pool] = (3, 95.0)
    old.resized[other] = (1, 10.0)  # long in the index: nothing to remember
    recorded = Record.load(Record(drains=old.memory(now=100.0)).dump())

    new = Drainer()
    new.take_over_drains(recorded.drains, now=101.0)

    assert new.in_flight == {pool: {"chat-1": 130.0}}
    assert new.resized == {pool: (3, 95.0)}  # the guard against resizing on a stale index


# --- a deleted or edited Lease ----------------------------------------------------------


def test_a_deleted_lease_is_recreated_only_after_a_whole_duration_under_a_new_term() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    run(a.step())
    run(b.step())
    term = lease.state.transitions

    lease.body = None  # `kubectl delete lease`
    run(a.step())
    assert not a.leading()  # the leader drops its term at its next round
    for _ in range(int(DURATION)):
        run(a.step())
        run(b.step())
        assert lease.body is None, f"recreated {clock.now:.0f}s after the deletion"
        clock.now += 1
    run(b.step())
    assert b.leading() and lease.state.holder == "b"
    assert lease.state.transitions == term + 1  # never term 0 again


def test_a_lease_edited_back_to_an_older_term_is_taken_after_a_duration_past_it() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    run(a.step())
    run(a.release())
    run(b.step())
    run(a.step())  # the standby's round sees term 1
    assert b.leading() and lease.state.transitions == 1
    assert lease.body is not None
    lease.body["spec"]["leaseTransitions"] = 0  # edited under the holder

    run(b.step())
    run(a.step())
    assert not b.leading() and not a.leading() and lease.state.transitions == 0
    clock.now += DURATION - 0.5
    run(a.step())
    assert not a.leading() and lease.state.transitions == 0
    clock.now += 0.5
    run(a.step())
    assert a.leading() and lease.state.transitions == 2


def test_a_lease_created_after_an_anchor_showed_a_term_starts_past_that_term() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    a.deposed_by(7)  # the journal's anchor read `gpufleet.io/leader-term: "7"`

    clock.now += DURATION  # the Lease is missing: created only after a duration
    run(a.step())
    clock.now += DURATION
    run(a.step())

    assert a.leading() and lease.state.transitions == 8


class SlowLease(MemoryLease):
    """Its next read takes `delay` seconds of the reader's clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock, self.delay = clock, 0.0

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = await super().read_lease(namespace, name)
        self.clock.now += self.delay
        self.delay = 0.0
        return found


def test_a_version_is_dated_from_when_the_read_returned_not_when_it_began() -> None:
    clock_b = Clock()
    lease = SlowLease(clock_b)
    run(elector(lease, "a", Clock()).step())
    b = elector(lease, "b", clock_b)
    lease.delay = 3.0  # the version may have been written at any time during the read
    run(b.step())

    clock_b.now = 3.0 + DURATION - 0.5
    run(b.step())
    assert not b.leading() and lease.state.holder == "a"
    clock_b.now = 3.0 + DURATION
    run(b.step())
    assert b.leading()


def test_fenced_writes_give_up_within_a_third_of_the_duration() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    run(a.step())
    sent: list[Any] = []
    kube = fenced_kube(MemoryApps(1), a)

    run(kube._write(lambda **kw: sent.append(kw["_request_timeout"])))

    assert sent and 0 < sent[0] < DURATION / 3


# --- a term lost mid-tick stops the tick -------------------------------------------------


class DeposingDriver:
    """Records each resize; `on_call` runs first (raises, or moves a clock)."""

    def __init__(self, on_call: Any) -> None:
        self.resized: list[str] = []
        self.on_call = on_call

    async def set_target_size(self, ref: NodePoolRef, size: int, *, action_id: str) -> None:
        self.on_call(len(self.resized))
        self.resized.append(ref.node_pool)


def three_resizes() -> list[ResizeNodePool]:
    keys = [NodePoolKey("cloud", name) for name in ("a", "b", "c")]
    return [
        ResizeNodePool(k, NodePoolRef(k.provider, k.node_pool, k.node_pool), 1, 2) for k in keys
    ]


def effects_with(driver: DeposingDriver) -> Effects:
    return Effects(
        None,  # type: ignore[arg-type]  # no workloads in these changes
        {"cloud": driver},  # type: ignore[dict-item]
        Drainer(),
        None,
        OperatorMetrics(),
        {},
        0.0,
    )


def test_a_deposed_applier_call_stops_the_rest_of_the_changes() -> None:
    def deposed_at_first(calls: int) -> None:
        if calls == 0:
            raise Deposed("an object carries term 9")

    driver = DeposingDriver(deposed_at_first)

    with pytest.raises(Deposed):
        run(execute(three_resizes(), effects_with(driver), None, 0.0))
    assert driver.resized == []


def test_a_term_that_goes_stale_between_changes_stops_the_rest() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    run(a.step())

    def stall(calls: int) -> None:  # the first resize takes past the renew deadline
        clock.now += Timing(DURATION).renew_deadline

    driver = DeposingDriver(stall)

    with pytest.raises(LeaseStale):
        run(execute(three_resizes(), effects_with(driver), None, 0.0, a.fresh))
    assert driver.resized == ["a"]

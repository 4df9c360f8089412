"""The intent record's rules (pure): what a tick records before acting and what it runs."""

from __future__ import annotations

from gpufleet.reconcilers.intent import Action, Move, Record, finished, reconcile

NODES = "nodepool/cloud/h100"
PODS = "Deployment/team/chat"


def test_new_changes_are_recorded_under_the_next_sequence_before_acting() -> None:
    record, run = reconcile(Record(seq=4), {NODES: 3, PODS: 7}, {NODES: 2, PODS: 5}, "a")
    assert record == Record(5, "a", run)
    assert {(a.target, a.size) for a in run} == {(NODES, 3), (PODS, 7)}
    assert all(a.id.startswith("5.") and not a.done for a in run)


def test_steady_state_records_nothing_and_runs_nothing() -> None:
    previous = Record(5, "a", (Action("5.x", NODES, 3, done=True),))
    record, run = reconcile(previous, {}, {NODES: 3}, "a")
    assert record is previous and run == ()


def test_an_unfinished_action_is_completed_under_its_own_id_by_a_new_leader() -> None:
    pending = Action("5.nodepool/cloud/h100=3", NODES, 3)
    record, run = reconcile(Record(5, "a", (pending,)), {NODES: 3}, {NODES: 2}, "b")
    assert run == (pending,)
    assert record.seq == 5 and record.leader == "b"


def test_an_unfinished_action_the_plan_no_longer_wants_is_dropped() -> None:
    pending = Action("5.Deployment/team/chat=9", PODS, 9)
    record, run = reconcile(Record(5, "a", (pending,)), {}, {PODS: 5}, "b")
    assert run == () and record.pending == ()


def test_a_new_leader_with_the_same_plan_reuses_the_recorded_id() -> None:
    pending = Action("5.nodepool/cloud/h100=3", NODES, 3)
    _, run = reconcile(Record(5, "a", (pending,)), {NODES: 3}, {NODES: 2}, "b")
    assert run == (pending,)


def test_an_action_observed_done_is_not_repeated() -> None:
    pending = Action("5.nodepool/cloud/h100=3", NODES, 3)
    record, run = reconcile(Record(5, "a", (pending,)), {}, {NODES: 3}, "b")
    assert run == () and record.pending == ()


def test_a_newer_plan_supersedes_an_unfinished_action() -> None:
    pending = Action("5.nodepool/cloud/h100=3", NODES, 3)
    record, run = reconcile(Record(5, "a", (pending,)), {NODES: 4}, {NODES: 2}, "b")
    assert [(a.id, a.size) for a in run] == [("6.nodepool/cloud/h100=4", 4)]
    assert record.seq == 6


def test_an_action_on_a_target_that_went_away_is_dropped() -> None:
    pending = Action("5.Deployment/team/gone=3", "Deployment/team/gone", 3)
    _, run = reconcile(Record(5, "a", (pending,)), {}, {}, "b")
    assert run == ()


def test_a_failed_action_is_retried_under_its_id_without_a_new_record() -> None:
    pending = Action("5.nodepool/cloud/h100=9", NODES, 9)
    previous = Record(5, "a", (pending,))
    record, run = reconcile(previous, {NODES: 9}, {NODES: 2}, "a")
    assert record is previous and run == (pending,)


def test_finished_marks_only_the_done_ids_and_the_record_round_trips() -> None:
    record, run = reconcile(Record(), {NODES: 3, PODS: 7}, {NODES: 2, PODS: 5}, "a")
    done = finished(record, {run[0].id})
    assert [a.done for a in done.actions] == [True, False]
    assert Record.load(done.dump()) == done
    assert Record.load("not json") == Record()
    assert Record.load(None) == Record()


def test_moves_waiting_ride_along_in_the_record_and_round_trip() -> None:
    move = Move("ns/batch", ("ns/chat",), 1_700_000_000.5)
    previous = Record(4, "a", (), (move,))
    record, _ = reconcile(previous, {NODES: 3}, {NODES: 2}, "b")
    assert record.moves == (move,)  # a new action keeps the moves the record holds
    assert Record.load(record.dump()) == record
    assert "moves" not in Record(4, "a").dump()  # nothing recorded while nothing waits

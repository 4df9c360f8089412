"""The per-tick pod index answers a selector as matching every pod of the namespace would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpufleet.reconcilers.cache import PodEntry
from gpufleet.reconcilers.pod_index import PodIndex, selected
from gpufleet.reconcilers.selectors import Requirement, Selector, parse

KEYS = ("app", "tier", "track")
VALUES = ("a", "b", "c")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

labels = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)
requirements = st.builds(
    Requirement,
    st.sampled_from(KEYS),
    st.sampled_from(OPERATORS),
    st.frozensets(st.sampled_from(VALUES), max_size=2),
)
selectors = st.builds(Selector, st.lists(requirements, max_size=3).map(tuple))


def pod(namespace: str, i: int, pod_labels: dict[str, str]) -> PodEntry:
    return PodEntry(namespace, f"p{i}", pod_labels, node_name="n", terminating=False)


@given(
    st.dictionaries(st.sampled_from(("ns-a", "ns-b")), st.lists(labels, max_size=12)),
    selectors,
    st.sampled_from(("ns-a", "ns-b", "absent")),
)
def test_selected_pods_are_those_the_selector_matches(
    by_namespace: dict[str, list[dict[str, str]]], selector: Selector, namespace: str
) -> None:
    pods = {
        ns: [pod(ns, i, lab) for i, lab in enumerate(items)] for ns, items in by_namespace.items()
    }
    expected = [p for p in pods.get(namespace, ()) if selector.matches(p.labels)]
    index = PodIndex(pods)
    assert list(index.selected(namespace, selector)) == expected
    assert list(index.selected(namespace, selector)) == expected  # the cached answer
    assert list(selected(pods, namespace, selector)) == expected  # a plain mapping


def test_a_pool_reads_only_the_pods_carrying_its_label() -> None:
    chat = [pod("ns", i, {"app": "chat"}) for i in range(3)]
    other = [pod("ns", 10 + i, {"app": f"other-{i}"}) for i in range(100)]
    index = PodIndex({"ns": [*other, *chat]})
    assert index.selected("ns", parse("app=chat")) == tuple(chat)
    # Narrowed to the pods with app=chat before matching: the other 100 are never read.
    assert index._candidates("ns", parse("app=chat,tier!=x")) == [100, 101, 102]


def test_the_index_is_a_mapping_of_each_namespaces_pods() -> None:
    pods = {"ns": [pod("ns", 0, {"app": "chat"})]}
    index = PodIndex(pods)
    assert dict(index) == {"ns": tuple(pods["ns"])}
    assert index.get("absent", ()) == ()


@given(
    st.lists(labels, max_size=8),
    st.lists(labels, max_size=8),
    st.lists(labels, max_size=8),
    selectors,
)
def test_the_next_ticks_index_answers_as_a_fresh_one(
    before: list[dict[str, str]],
    after: list[dict[str, str]],
    steady: list[dict[str, str]],
    selector: Selector,
) -> None:
    kept = [pod("ns-b", i, lab) for i, lab in enumerate(steady)]
    first = PodIndex({"ns-a": [pod("ns-a", i, lab) for i, lab in enumerate(before)], "ns-b": kept})
    for ns in ("ns-a", "ns-b"):
        first.selected(ns, selector)
    pods = {"ns-a": [pod("ns-a", i, lab) for i, lab in enumerate(after)], "ns-b": kept}
    second = PodIndex(pods, first)
    for ns in ("ns-a", "ns-b"):
        assert second.selected(ns, selector) == PodIndex(pods).selected(ns, selector)


def test_a_namespace_whose_pods_did_not_change_keeps_its_answers() -> None:
    chat = parse("app=chat")
    steady = [pod("steady", i, {"app": "chat"}) for i in range(3)]
    first = PodIndex({"steady": steady, "busy": [pod("busy", 0, {"app": "chat"})]})
    answer = first.selected("steady", chat)
    first.selected("busy", chat)
    moved = [pod("busy", 0, {"app": "chat"}), pod("busy", 1, {"app": "chat"})]
    second = PodIndex({"steady": list(steady), "busy": moved}, first)
    assert second.selected("steady", chat) is answer
    assert second.selected("busy", chat) == tuple(moved)

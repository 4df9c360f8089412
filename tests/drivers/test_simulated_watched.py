"""The Nodes a Simulated driver reads from the operator's watch instead of listing them."""

from __future__ import annotations

from gpufleet.drivers.simulated import WatchedNodes, ordinal_of
from gpufleet.drivers.simulated_state import ObservedNode
from gpufleet.reconcilers.cache import NodeEntry


def test_unfed_it_tells_the_driver_to_list() -> None:
    assert WatchedNodes().of("gpu-de", "h100") is None


def test_each_node_pool_reads_its_own_nodes() -> None:
    watched = WatchedNodes()
    watched.update(
        [
            NodeEntry("gpu-de-h100-0", "gpu-de", "h100", ready=True),
            NodeEntry("gpu-de-h100-3", "gpu-de", "h100", ready=False),
            NodeEntry("gpu-de-l40s-1", "gpu-de", "l40s", ready=True),
            NodeEntry("gpu-nl-h100-0", "gpu-nl", "h100", ready=True),
        ]
    )

    assert watched.of("gpu-de", "h100") == [
        ObservedNode("gpu-de-h100-0", 0, ready=True),
        ObservedNode("gpu-de-h100-3", 3, ready=False),
    ]
    assert watched.of("gpu-nl", "h100") == [ObservedNode("gpu-nl-h100-0", 0, ready=True)]
    # Fed, a pool without nodes has none: it is not listed.
    assert watched.of("gpu-fr", "h100") == []


def test_a_changed_node_is_seen_at_the_next_feed() -> None:
    watched = WatchedNodes()
    booting = NodeEntry("gpu-de-h100-0", "gpu-de", "h100", ready=False)
    watched.update([booting])
    watched.update([NodeEntry("gpu-de-h100-0", "gpu-de", "h100", ready=True)])

    assert watched.of("gpu-de", "h100") == [ObservedNode("gpu-de-h100-0", 0, ready=True)]


def test_a_reader_cannot_change_what_others_read() -> None:
    watched = WatchedNodes()
    watched.update([NodeEntry("gpu-de-h100-0", "gpu-de", "h100", ready=True)])
    nodes = watched.of("gpu-de", "h100")
    assert nodes is not None
    nodes.clear()

    assert len(watched.of("gpu-de", "h100") or []) == 1


def test_the_ordinal_is_the_names_last_number() -> None:
    assert ordinal_of("gpu-de-h100-12") == 12
    assert ordinal_of("gpu-de-h100-3a") == -1

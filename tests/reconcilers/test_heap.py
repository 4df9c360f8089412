"""The heap is frozen after the first tick, and again only once it has outgrown the last
freeze (a fleet that grew), each time collected first."""

from __future__ import annotations

from typing import Any

from gpufleet.reconcilers.heap import HeapFreezer


class Collector:
    """The `gc` module's generations as counts: `young` objects are long-lived but not
    frozen (generation 2), `frozen` are in the permanent generation."""

    def __init__(self, young: int) -> None:
        self.young, self.frozen, self.full = young, 0, 0
        self.calls: list[str] = []

    def collect(self) -> int:
        self.calls.append("collect")
        self.full += 1
        return 0

    def freeze(self) -> None:
        self.calls.append("freeze")
        self.frozen, self.young = self.frozen + self.young, 0

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")
        self.young, self.frozen = self.young + self.frozen, 0

    def get_freeze_count(self) -> int:
        return self.frozen

    def get_objects(self, generation: int | None = None) -> list[Any]:
        assert generation == 2
        return [None] * self.young

    def get_stats(self) -> list[dict[str, Any]]:
        return [{}, {}, {"collections": self.full}]


def _frozen_once() -> tuple[HeapFreezer, Collector]:
    collector = Collector(young=1000)
    heap = HeapFreezer(collector)
    assert heap.after_tick()
    collector.calls.clear()
    return heap, collector


def test_the_first_tick_freezes_the_heap_collected_first() -> None:
    collector = Collector(young=1000)
    assert HeapFreezer(collector).after_tick()
    assert collector.calls == ["unfreeze", "collect", "freeze"]
    assert (collector.frozen, collector.young) == (1000, 0)


def test_a_heap_that_grew_a_little_is_left_frozen_as_it_is() -> None:
    heap, collector = _frozen_once()
    collector.young += 200  # under a quarter of the frozen thousand
    collector.full += 1  # a full collection ran, and walked them
    assert not heap.after_tick()
    assert collector.calls == []


def test_a_heap_that_outgrew_the_last_freeze_is_frozen_again() -> None:
    heap, collector = _frozen_once()
    collector.young += 300
    collector.full += 1
    assert heap.after_tick()
    assert collector.calls == ["unfreeze", "collect", "freeze"]
    assert (collector.frozen, collector.young) == (1300, 0)


def test_the_heap_is_not_looked_at_until_a_full_collection_runs() -> None:
    heap, collector = _frozen_once()
    collector.young += 5000  # grown, but no full collection has walked it yet
    assert not heap.after_tick()
    collector.full += 1
    assert heap.after_tick()


def test_the_frozen_objects_are_counted_only_when_frozen() -> None:
    """CPython counts them by walking the whole permanent generation."""
    heap, collector = _frozen_once()
    counted: list[int] = []
    collector.get_freeze_count = lambda: counted.append(1) or collector.frozen  # type: ignore[method-assign]
    for _ in range(5):
        collector.full += 1
        assert not heap.after_tick()
    assert counted == []

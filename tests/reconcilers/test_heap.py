"""The heap is frozen after the first tick, and again only once it has outgrown the last
freeze (a fleet that grew), each time collected first; full collections run between ticks,
never started by CPython inside one."""

from __future__ import annotations

from typing import Any

from gpufleet.reconcilers.heap import FULL_EVERY, HeapFreezer


class Collector:
    """The `gc` module's generations as counts: `young` objects are long-lived but not
    frozen (generation 2), `frozen` are in the permanent generation; `middle` counts the
    collections of generation 1."""

    def __init__(self, young: int) -> None:
        self.young, self.frozen, self.middle = young, 0, 0
        self.threshold = (700, 10, 10)
        self.calls: list[str] = []

    def collect(self) -> int:
        self.calls.append("collect")
        return 0

    def get_threshold(self) -> tuple[int, int, int]:
        return self.threshold

    def set_threshold(self, threshold0: int, threshold1: int, threshold2: int, /) -> None:
        self.threshold = (threshold0, threshold1, threshold2)

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
        return [{}, {"collections": self.middle}, {}]


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


def test_cpython_never_starts_a_full_collection_once_the_heap_is_frozen() -> None:
    # It would fall inside whatever runs: in a live fleet, a plan three times its length.
    _, collector = _frozen_once()
    young, middle, full = collector.threshold
    assert (young, middle) == (700, 10)
    assert full >= 1 << 30


def test_a_heap_that_grew_a_little_is_collected_between_ticks_and_left_frozen() -> None:
    heap, collector = _frozen_once()
    collector.young += 200  # under a quarter of the frozen thousand
    collector.middle += FULL_EVERY  # CPython would weigh a full collection now
    assert not heap.after_tick()
    assert collector.calls == ["collect"]  # of what is not frozen: cycles never wait longer


def test_a_heap_that_outgrew_the_last_freeze_is_collected_and_frozen_again() -> None:
    heap, collector = _frozen_once()
    collector.young += 300
    collector.middle += FULL_EVERY
    assert heap.after_tick()
    assert collector.calls == ["unfreeze", "collect", "freeze"]
    assert (collector.frozen, collector.young) == (1300, 0)


def test_nothing_is_collected_until_cpython_would_have_weighed_a_full_collection() -> None:
    heap, collector = _frozen_once()
    collector.young += 5000
    collector.middle += FULL_EVERY - 1
    assert not heap.after_tick()
    assert collector.calls == []
    collector.middle += 1
    assert heap.after_tick()


def test_the_frozen_objects_are_counted_only_when_frozen() -> None:
    """CPython counts them by walking the whole permanent generation."""
    heap, collector = _frozen_once()
    counted: list[int] = []
    collector.get_freeze_count = lambda: counted.append(1) or collector.frozen  # type: ignore[method-assign]
    for _ in range(5):
        collector.middle += FULL_EVERY
        assert not heap.after_tick()
    assert counted == []


def test_a_loop_that_stops_freezing_gives_the_heap_back_to_cpython() -> None:
    heap, collector = _frozen_once()
    heap.release()
    assert collector.threshold == (700, 10, 10)
    assert collector.frozen == 0
    heap.release()  # twice: nothing more
    assert collector.threshold == (700, 10, 10)


def test_a_second_freezer_never_takes_the_raised_threshold_for_cpythons_own() -> None:
    _, collector = _frozen_once()
    second = HeapFreezer(collector)
    second.after_tick()
    second.release()
    assert collector.threshold == (700, 10, FULL_EVERY)

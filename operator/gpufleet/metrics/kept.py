"""Answers kept between ticks: a query is asked again only once its answer may have moved.

Prometheus scrapes every 15 to 60 s while the fleet loop ticks every second, so asking every
query each tick reads the same samples again 15 to 60 times. At 1,000 pools that cost
Prometheus 0.27 CPU-seconds and the tick 0.24 s of waiting, every tick (the test bed's
Prometheus on 2 cores). An answer is therefore kept for `refresh` seconds and aged as it is
kept, so that the age limit still holds; a kept answer that would pass it is asked again.
What it cannot show (a new sample, a series that vanished, a Prometheus that went down) it
shows up to `refresh` late: that is the trade, and why it is off by default.

Each query's first refresh falls at its own phase (a hash of its text), so a thousand
pools' queries spread over the ticks of a refresh instead of all coming due in one tick.
Failures are never kept: a query that failed is asked again the next tick.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection
from dataclasses import dataclass, field

from gpufleet.metrics.batch import Sample


def phase(text: str) -> float:
    """A query's place in [0, 1) of a refresh: the same in every process."""
    return zlib.crc32(text.encode()) / 2**32


@dataclass
class _Kept:
    sample: Sample
    read: float  # our clock when it was read
    due: float  # our clock when it is asked again


@dataclass
class KeptAnswers:
    refresh: float  # seconds; 0 asks every query every time
    max_age: float = float("inf")
    _kept: dict[str, _Kept] = field(default_factory=dict)

    def due(self, text: str, now: float) -> bool:
        kept = self._kept.get(text)
        if kept is None or now >= kept.due or now < kept.read:
            return True
        return kept.sample.age + (now - kept.read) > self.max_age

    def keep(self, text: str, sample: Sample, now: float) -> None:
        if self.refresh <= 0:
            return
        first = text not in self._kept
        wait = self.refresh * phase(text) if first else self.refresh
        self._kept[text] = _Kept(sample, now, now + wait)

    def drop(self, text: str) -> None:
        self._kept.pop(text, None)

    def answer(self, text: str, now: float) -> Sample:
        """The kept answer, aged by the time it has been kept (`due` said it is not due);
        its `time` stays when Prometheus evaluated it."""
        kept = self._kept[text]
        held = max(0.0, now - kept.read)
        return Sample(kept.sample.value, kept.sample.time, kept.sample.age + held)

    def forget_all_but(self, texts: Collection[str]) -> None:
        for gone in [t for t in self._kept if t not in texts]:
            del self._kept[gone]

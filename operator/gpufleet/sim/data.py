"""The shipped measurement tables: GPU service rates and watts, model-load times, work mix."""

from __future__ import annotations

import bisect
import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class GpuProfile:
    """One replica of one workload on one GPU type, at its measured operating point."""

    units_per_second: float
    loaded_watts: float
    source: str


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str
    gpus: dict[str, GpuProfile]

    def rate(self, gpu_type: str) -> float:
        profile = self.gpus.get(gpu_type)
        if profile is None:
            raise KeyError(f"no measured profile for workload {self.name!r} on {gpu_type}")
        return profile.units_per_second


@dataclass(frozen=True)
class Quantiles:
    """An empirical distribution given by quantiles; sampled by linear interpolation."""

    points: tuple[tuple[float, float], ...]

    def sample(self, rng: random.Random) -> float:
        return self.at(rng.random())

    def at(self, q: float) -> float:
        qs = [p[0] for p in self.points]
        i = bisect.bisect_right(qs, q)
        if i <= 0:
            return self.points[0][1]
        if i >= len(self.points):
            return self.points[-1][1]
        (q0, v0), (q1, v1) = self.points[i - 1], self.points[i]
        return v0 + (v1 - v0) * (q - q0) / (q1 - q0) if q1 > q0 else v1


def _load(name: str) -> Any:
    return json.loads((DATA_DIR / name).read_text())


@cache
def workloads() -> dict[str, Workload]:
    table = _load("gpu_profiles.json")["profiles"]
    return {
        name: Workload(
            name=name,
            unit=entry["unit"],
            gpus={
                gpu: GpuProfile(g["units_per_second"], g["loaded_watts"], g["source"])
                for gpu, g in entry["gpus"].items()
            },
        )
        for name, entry in table.items()
    }


@cache
def model_load_seconds() -> Quantiles:
    return Quantiles(
        tuple((float(q), float(v)) for q, v in _load("model_load_seconds.json")["quantiles"])
    )


@cache
def image_work() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Values and probabilities of work per image request (in images at 28 steps)."""
    rows = _load("image_work.json")["values"]
    return tuple(float(r[0]) for r in rows), tuple(float(r[1]) for r in rows)

"""Arrival traces turned into per-step demand: requests and work arriving in each step.

Demand is fluid: `counts[i]` requests carrying `work[i]` units (tokens, images) arrive in
step i. Per-request traces are binned exactly; rate traces (Alibaba QPS) are sampled as a
Poisson process with the scenario's seed. Modifiers scale the demand in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gpufleet.sim import data
from gpufleet.sim.arrivals import (
    FieldNotFound,
    NoArrivals,
    TraceError,
    TraceNotFound,
    columns,
    listed,
    requests,
    rows,
)

FloatArray = npt.NDArray[np.float64]


@dataclass
class Demand:
    """Requests and work arriving per step of `step` seconds."""

    counts: FloatArray
    work: FloatArray
    step: float = 1.0
    start_epoch: float = 0.0

    @property
    def duration(self) -> float:
        return len(self.counts) * self.step


@dataclass
class Surge:
    """Demand x factor, reached linearly over `ramp` seconds from `start`, held `hold` s."""

    factor: float
    start: float
    ramp: float
    hold: float = float("inf")


@dataclass
class Modifiers:
    compress: float = 1.0  # 2 plays the trace twice as fast
    multiply: float = 1.0
    surge: Surge | None = None
    loop: bool = False  # replay the trace from its start until the scenario's duration
    work: float = 1.0  # 1.6: every request carries 60 % more work than the trace says
    # Clumped arrivals: all requests of each window of this many seconds arrive at its
    # start (a client that batches, a cron, a retry storm); 0 keeps the trace's times.
    clump_seconds: float = 0.0


@dataclass
class TraceSpec:
    """Where arrivals come from. `source` names a shared trace, a file format, or synthetic."""

    source: str
    path: str | None = None
    time_field: str = "timestamp"
    time_unit: str = "s"  # s, ms, us, ns, min or iso
    work_field: str | None = None
    work_scale: float = 1.0
    default_work: float = 1.0
    peak_rps: float | None = None  # rate traces: scale the trace's peak to this
    rate: float = 1.0  # synthetic: requests/s
    steps: list[tuple[float, float]] = field(default_factory=list)  # synthetic: (time, rate)
    work_distribution: str = "fixed"  # synthetic: fixed or exponential (mean default_work)
    duration: float = 600.0  # synthetic only


def _bin(times: FloatArray, work: FloatArray, step: float) -> Demand:
    order = np.argsort(times, kind="stable")
    times, work = times[order], work[order]
    start = float(times[0]) if len(times) else 0.0
    idx = np.floor((times - start) / step).astype(np.int64)
    n = int(idx[-1]) + 1 if len(idx) else 1
    counts = np.bincount(idx, minlength=n).astype(np.float64)
    works = np.bincount(idx, weights=work, minlength=n).astype(np.float64)
    return Demand(counts, works, step, start)


def _image_work(rng: np.random.Generator, n: int) -> FloatArray:
    values, probs = data.image_work()
    p = np.asarray(probs) / sum(probs)
    return np.asarray(rng.choice(np.asarray(values), size=n, p=p), dtype=np.float64)


def _from_rate(
    rate: FloatArray, step: float, rng: np.random.Generator, mean_work: float, image: bool
) -> Demand:
    counts = rng.poisson(np.maximum(rate, 0.0) * step).astype(np.float64)
    if image:
        total = int(counts.sum())
        draws = _image_work(rng, total)
        ends = np.cumsum(counts).astype(np.int64)
        sums = np.concatenate(([0.0], np.cumsum(draws)))
        work = sums[ends] - sums[np.concatenate(([0], ends[:-1]))]
    else:
        work = counts * mean_work
    return Demand(counts, np.asarray(work, dtype=np.float64), step)


def _alibaba_qps(spec: TraceSpec, path: Path, step: float, rng: np.random.Generator) -> Demand:
    totals: dict[float, float] = {}
    for row in rows(path):
        if not {"request_type", "timestamp_anon", "value"} <= row.keys():
            raise FieldNotFound(
                f"{path.name} is not Alibaba's qps.csv (request_type, timestamp_anon, value); "
                f"it has {listed(columns(path))}",
                setting="path",
            )
        if row["request_type"] != "Generative Requests":
            continue
        t = float(row["timestamp_anon"])
        totals[t] = totals.get(t, 0.0) + float(row["value"])
    if not totals:
        raise NoArrivals(f"{path.name} has no Generative Requests rows", setting="path")
    ts = np.asarray(sorted(totals), dtype=np.float64)
    qps = np.asarray([totals[t] for t in sorted(totals)], dtype=np.float64)
    grid = np.arange(ts[0], ts[-1], step)
    rate = np.interp(grid, ts, qps)
    # Values are scaled for anonymity: keep the shape, scale the peak (PITFALLS.md)
    if spec.peak_rps is not None:
        rate = rate * (spec.peak_rps / float(rate.max()))
    demand = _from_rate(rate, step, rng, spec.default_work, image=True)
    demand.start_epoch = float(ts[0])
    return demand


def _synthetic(spec: TraceSpec, step: float, rng: np.random.Generator) -> Demand:
    n = int(spec.duration / step)
    t = np.arange(n) * step
    rate = np.full(n, spec.rate, dtype=np.float64)
    for start, value in spec.steps:
        rate[t >= start] = value
    counts = rng.poisson(rate * step).astype(np.float64)
    if spec.work_distribution == "exponential":
        work = np.asarray([rng.exponential(spec.default_work, int(c)).sum() for c in counts])
    else:
        work = counts * spec.default_work
    return Demand(counts, np.asarray(work, dtype=np.float64), step)


SHARED = {
    # name: (default path under --traces, reader settings)
    "azure-llm-conv": (
        "azure_llm_2023/AzureLLMInferenceTrace_conv.csv",
        "TIMESTAMP",
        "iso",
        "GeneratedTokens",
    ),
    "azure-llm-code": (
        "azure_llm_2023/AzureLLMInferenceTrace_code.csv",
        "TIMESTAMP",
        "iso",
        "GeneratedTokens",
    ),
    "alibaba-requests": ("alibaba_gentd26/lora_request_trace.csv", "gmt_create", "iso", None),
}
SOURCES = (*SHARED, "alibaba-qps", "csv", "jsonl", "synthetic")


def load(spec: TraceSpec, traces_dir: Path | None, base: Path, step: float, seed: int) -> Demand:
    rng = np.random.default_rng(seed)
    if spec.source == "synthetic":
        return _synthetic(spec, step, rng)

    def resolve(default: str | None) -> Path:
        rel = spec.path or default
        if rel is None:
            raise TraceNotFound(f"a {spec.source} trace needs the path of its file", setting="path")
        p = Path(rel)
        for root in (traces_dir, base):
            if root is not None and (root / p).is_file():
                return root / p
        if p.is_file():
            return p
        searched = dict.fromkeys(str(r.resolve()) for r in (traces_dir, base, Path()) if r)
        where = "does not exist" if p.is_absolute() else f"is in none of {', '.join(searched)}"
        if traces_dir is None and not spec.path:
            where += " (--traces names the directory of the shared traces)"
        raise TraceNotFound(f"trace file {rel} {where}", setting="path" if spec.path else "traces")

    if spec.source == "alibaba-qps":
        return _alibaba_qps(spec, resolve("alibaba_gentd26/qps.csv"), step, rng)
    if spec.source in SHARED:
        default, tfield, unit, wfield = SHARED[spec.source]
        spec = TraceSpec(
            **{
                **spec.__dict__,
                "time_field": tfield,
                "time_unit": unit,
                "work_field": spec.work_field or wfield,
            }
        )
        times, work = requests(spec, resolve(default))
        if spec.source == "alibaba-requests":
            work = _image_work(rng, len(times))
        return _bin(times, work, step)
    if spec.source in ("csv", "jsonl"):
        times, work = requests(spec, resolve(None))
        return _bin(times, work, step)
    raise TraceError(
        f"unknown trace source {spec.source!r}; choose from {', '.join(SOURCES)}",
        setting="source",
    )


def apply(demand: Demand, mods: Modifiers, duration: float | None) -> Demand:
    counts, work, step = demand.counts, demand.work, demand.step
    if mods.compress != 1.0:
        # Re-bin onto the compressed clock: step i of the original lands at i / compress
        idx = np.floor(np.arange(len(counts)) / mods.compress).astype(np.int64)
        counts = np.bincount(idx, weights=counts).astype(np.float64)
        work = np.bincount(idx, weights=work).astype(np.float64)
    if duration is not None:
        n = int(duration / step)
        if mods.loop and 0 < len(counts) < n:
            reps = -(-n // len(counts))
            counts, work = np.tile(counts, reps), np.tile(work, reps)
        counts = np.pad(counts, (0, max(0, n - len(counts))))[:n]
        work = np.pad(work, (0, max(0, n - len(work))))[:n]
    if mods.clump_seconds > step:
        counts, work = _clump(counts, work, max(1, round(mods.clump_seconds / step)))
    work = work * mods.work
    factor = np.full(len(counts), mods.multiply, dtype=np.float64)
    if mods.surge is not None:
        s = mods.surge
        t = np.arange(len(counts)) * step
        ramp = np.clip((t - s.start) / max(s.ramp, step), 0.0, 1.0)
        active = t < s.start + s.ramp + s.hold
        factor *= np.where(active, 1.0 + (s.factor - 1.0) * ramp, 1.0)
    return Demand(counts * factor, work * factor, step, demand.start_epoch)


def _clump(counts: FloatArray, work: FloatArray, every: int) -> tuple[FloatArray, FloatArray]:
    """Move each window of `every` steps' arrivals to the window's first step."""
    n = len(counts)
    pad = -n % every
    sums = [np.pad(a, (0, pad)).reshape(-1, every).sum(axis=1) for a in (counts, work)]
    out = [np.zeros(n + pad, dtype=np.float64) for _ in sums]
    for o, total in zip(out, sums, strict=True):
        o[::every] = total
    return out[0][:n], out[1][:n]

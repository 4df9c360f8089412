"""Per-request trace files (CSV or JSON lines, optionally gzipped) read into arrival times
and work per request, with errors that name what is wrong and what the file has instead."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from gpufleet.sim.trace import TraceSpec

FloatArray = npt.NDArray[np.float64]

TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "min": 60.0}
LISTED_NAMES = 20  # an error lists at most this many of the names a file has


class TimeUnit(StrEnum):
    """How the time field is written: a number of these units, or ISO 8601 (`iso`)."""

    S = "s"
    MS = "ms"
    US = "us"
    NS = "ns"
    MIN = "min"
    ISO = "iso"


class TraceError(ValueError):
    """A trace that cannot be read as specified. `setting` is the TraceSpec field at fault
    (`traces`: the directory of shared traces), so the command line can name its flag and a
    scenario its key; `reason` is CamelCase."""

    reason = "InvalidTrace"

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class TraceNotFound(TraceError):
    reason = "TraceNotFound"


class FieldNotFound(TraceError):
    reason = "FieldNotFound"


class UnreadableValue(TraceError):
    reason = "UnreadableValue"


class NoArrivals(TraceError):
    reason = "NoArrivals"


def listed(names: Iterable[str]) -> str:
    """Names sorted and capped, for an error that says what there is to choose from."""
    ordered = sorted(set(names))
    shown = ", ".join(ordered[:LISTED_NAMES]) or "none"
    more = len(ordered) - LISTED_NAMES
    return f"{shown} and {more} more" if more > 0 else shown


def _parse_azure_time(text: str) -> float:
    # 7 fractional digits: datetime.fromisoformat would truncate them (PITFALLS.md)
    base, _, frac = text.strip().partition(".")
    t = datetime.strptime(base, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def _parse_time(value: Any, unit: str) -> float:
    """Seconds since the epoch (or the trace's own zero) of one time field's value."""
    if unit == "iso":
        text = str(value).strip().replace("Z", "+00:00")
        if "." in text and len(text.split(".")[-1]) > 6 and "+" not in text:
            return _parse_azure_time(text.replace("T", " "))
        stamp = datetime.fromisoformat(text)
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    return float(value) * TIME_UNITS[unit]


def _json_row(line: str, n: int, path: Path) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as e:
        raise UnreadableValue(f"line {n} of {path.name} is not JSON: {e}", setting="path") from e
    if not isinstance(row, dict):
        raise UnreadableValue(f"line {n} of {path.name} is not a JSON object", setting="path")
    return row


def rows(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        if ".jsonl" in path.name or ".ndjson" in path.name:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    yield _json_row(line, n, path)
        else:
            yield from csv.DictReader(f)


def columns(path: Path) -> set[str]:
    """Every field name the file's rows carry (JSON lines may differ from row to row)."""
    return {k for row in rows(path) for k in row if isinstance(k, str)}


def _time(raw: Any, spec: TraceSpec, n: int, path: Path) -> float:
    try:
        return _parse_time(raw, spec.time_unit)
    except (TypeError, ValueError) as e:
        hint = "" if spec.time_unit == TimeUnit.ISO else " (is it iso?)"
        raise UnreadableValue(
            f"row {n} of {path.name}: {spec.time_field} is {raw!r}, not a time in "
            f"{spec.time_unit}{hint}",
            setting="time_unit",
        ) from e


def _work(raw: Any, spec: TraceSpec, n: int, path: Path) -> float:
    if raw in (None, ""):  # a request without the field carries the default work
        return spec.default_work
    try:
        return float(raw) * spec.work_scale
    except (TypeError, ValueError) as e:
        raise UnreadableValue(
            f"row {n} of {path.name}: {spec.work_field} is {raw!r}, not a number",
            setting="work_field",
        ) from e


def _check_fields(spec: TraceSpec, path: Path, seen_time: bool, seen_work: bool) -> None:
    """A field no row has is a misspelling: reading on would replay 0 requests (or every
    request at the default work) and report a perfect run."""
    for name, setting, seen in (
        (spec.time_field, "time_field", seen_time),
        (spec.work_field, "work_field", seen_work),
    ):
        if name is not None and not seen:
            raise FieldNotFound(
                f"{path.name} has no field {name!r}; it has {listed(columns(path))}",
                setting=setting,
            )


def requests(spec: TraceSpec, path: Path) -> tuple[FloatArray, FloatArray]:
    """Arrival time (s) and work of each row with a time; rows without a work value carry
    the default work."""
    if spec.time_unit not in TIME_UNITS and spec.time_unit != TimeUnit.ISO:
        raise UnreadableValue(
            f"time unit {spec.time_unit!r} is not one of {', '.join(TimeUnit)}",
            setting="time_unit",
        )
    times: list[float] = []
    work: list[float] = []
    seen_time = seen_work = False
    for n, row in enumerate(rows(path), start=1):
        seen_time = seen_time or spec.time_field in row
        seen_work = seen_work or (spec.work_field is not None and spec.work_field in row)
        raw = row.get(spec.time_field)
        if raw in (None, ""):
            continue
        times.append(_time(raw, spec, n, path))
        work.append(_work(row.get(spec.work_field) if spec.work_field else None, spec, n, path))
    _check_fields(spec, path, seen_time, seen_work)
    if not times:
        raise NoArrivals(f"{path.name} has no row with a {spec.time_field}", setting="path")
    return np.asarray(times, dtype=np.float64), np.asarray(work, dtype=np.float64)

"""What reading pools' queues costs the operator and Prometheus, tick by tick (issue 20):
every query asked every tick (`--metrics-refresh-seconds 0`, the default) against answers
kept for `--refresh` seconds (metrics/kept.py).

A real Prometheus (Debian's, the test bed's config: a 1 s scrape) scrapes the test bed's
exporter, which serves `--pools` queue series. `PrometheusSource` then reads all of them
once a second, as the fleet loop does, for `--ticks` ticks in each mode, the modes
interleaved in blocks so that both share whatever else the machine does (each mode's source
keeps its own clock, a second a tick, so the other's block is no pause to it). Per mode: the
operator's CPU per tick, Prometheus's CPU per second (its scrapes included, the same in both),
each read's wall time (p50, p95), the queries sent per tick (not answered from those kept) and
the HTTP requests in all (a hundred queries a request). Ends with one JSON line.

    python benchmarks/prometheus_reads.py               # 1,000 pools, 60 ticks a mode, 5 s
    python benchmarks/prometheus_reads.py --quick       # 20 pools, 6 ticks a mode (the tests)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "e2e"))

from gpufleet.metrics.source import PrometheusSource, Sample  # noqa: E402
from gpufleet_testbed import exporter, fleets, ports, prometheus  # noqa: E402

BLOCK = 10  # ticks of one mode before the other's


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ready(url: str) -> bool:
    try:
        return prometheus.is_ready(url) and prometheus.targets_up(url)
    except OSError:
        return False


def _nearest(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _tick(source: PrometheusSource, queries: list[str]) -> tuple[float, float, int]:
    """One read of every query: operator CPU, wall seconds, queries sent."""
    cpu, wall, asked = time.process_time(), time.perf_counter(), source.asked
    answers = await source.sample_many(queries)
    if not all(isinstance(a, Sample) for a in answers.values()):
        raise SystemExit(f"a query went unanswered: {next(iter(answers.values()))}")
    return time.process_time() - cpu, time.perf_counter() - wall, source.asked - asked


async def _measure(
    url: str, pid: int, queries: list[str], ticks: int, refresh: float
) -> dict[str, Any]:
    refreshes = {"every_tick": 0.0, "kept": refresh}
    # Each mode's own clock moves a second a tick of its own: the other's block is no pause.
    clocks = {mode: _Clock() for mode in refreshes}
    sources = {
        mode: PrometheusSource(url, refresh=r, clock=clocks[mode]) for mode, r in refreshes.items()
    }
    for source in sources.values():  # first reads: every query, probed, in both modes
        await source.sample_many(queries)
    cpu: dict[str, list[float]] = {m: [] for m in sources}
    wall: dict[str, list[float]] = {m: [] for m in sources}
    asked = dict.fromkeys(sources, 0)
    prom_cpu = dict.fromkeys(sources, 0.0)
    spent = dict.fromkeys(sources, 0.0)
    while min(len(v) for v in cpu.values()) < ticks:
        for mode, source in sources.items():
            for _ in range(min(BLOCK, ticks - len(cpu[mode]))):
                clocks[mode].now += 1.0
                started, prom = time.monotonic(), _cpu_seconds(pid)
                used, took, sent = await _tick(source, queries)
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
                prom_cpu[mode] += _cpu_seconds(pid) - prom
                spent[mode] += time.monotonic() - started
                cpu[mode].append(used)
                wall[mode].append(took)
                asked[mode] += sent
    return {
        mode: {
            "refresh_s": refreshes[mode],
            "operator_cpu_ms_per_tick": round(1000 * sum(cpu[mode]) / len(cpu[mode]), 1),
            "prometheus_cpu_ms_per_s": round(1000 * prom_cpu[mode] / spent[mode], 1),
            "read_wall_ms_p50": round(1000 * _nearest(wall[mode], 0.5), 1),
            "read_wall_ms_p95": round(1000 * _nearest(wall[mode], 0.95), 1),
            "queries_sent_per_tick": round(asked[mode] / len(cpu[mode]), 1),
            "requests": sources[mode].requests,
        }
        for mode in sources
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=60, help="ticks timed in each mode")
    parser.add_argument("--refresh", type=float, default=5.0, help="seconds answers are kept")
    parser.add_argument("--quick", action="store_true", help="20 pools, 6 ticks a mode")
    args = parser.parse_args(argv)
    pools, ticks = (20, 6) if args.quick else (args.pools, args.ticks)

    port, prom_port = ports.free_ports(2)
    names = [(f"team-{i % 50:02d}", f"pool-{i:04d}") for i in range(pools)]
    with tempfile.TemporaryDirectory(prefix="bench-prom-") as tmp:
        queues = Path(tmp) / "queues.json"  # JSON is YAML
        queues.write_text(
            json.dumps({"queue": [{"namespace": n, "pool": p, "value": 3} for n, p in names]})
        )
        server = exporter.serve("127.0.0.1", port, queues)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        config = prometheus.write_config(Path(tmp) / "prometheus.yml", [f"127.0.0.1:{port}"])
        proc = subprocess.Popen(
            prometheus.argv(config, Path(tmp) / "data", prom_port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{prom_port}"
            deadline = time.monotonic() + 60
            while not _ready(url):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("Prometheus did not come up with its target")
                time.sleep(0.5)
            time.sleep(3)  # a few scrapes: every series has samples
            queries = [fleets.queue_query(n, p) for n, p in names]
            modes = asyncio.run(_measure(url, proc.pid, queries, ticks, args.refresh))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            server.shutdown()
            server.server_close()
    figures = {"benchmark": "prometheus_reads", "pools": pools, "ticks": ticks, **modes}
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main()

"""Fleet scale on the real control plane (issue 20): one operator over many GPU nodes, pods,
pools and providers on the test bed, through a scale-out from one replica per pool, a quiet
period and a surge.

The fleet: `--providers` simulated clouds of 8-GPU nodes (1 s boot), `--pools` ServingPools
of one-GPU replicas, each with its own Deployment (its pods labelled `gpufleet.io/serving`,
which the operator watches pods by) and a queue on the test bed's exporter.
Every queue asks for `--nodes` x 8 / `--pools` replicas, so the operator itself buys the
`--nodes` kwok nodes and the controllers start `--nodes` x 8 pods. Then:

- first_plan_s: from the operator's start to its first complete plan (the operator's
  `gpufleet_last_plan_timestamp_seconds`, set once the loop has planned every pool, before it
  acts; a tick plans every pool or none, and the loop starts only once every index is
  filled). first_tick_s: to the end of that tick, with its writes (on a fresh fleet, the
  scale-out's first thousand scale and status writes). The target holds for the fresh start
  and the restart alike.
- scale_out_s: from the operator's start until every node is Ready and every pod Running.
- quiet: after the writes stop, `--quiet-seconds` with nothing changing. RSS (VmRSS, the
  most seen), CPU seconds per tick (utime + stime of the process over ticks), ticks per
  second, and the writes of the operator (its own user, counted by FlowSchema, so no other
  client's writes count). phase_s_per_tick: the mean wall seconds of each part of a tick
  (`gpufleet_reconcile_phase_seconds`), so a slow tick says where its time went.
- ticks: each tick's own duration, from the operator's histogram `_sum` and `_count` read
  every `--sample-seconds` (those two series alone, `name[]`, so the reads cost little): an interval in which exactly one tick ended gives that tick's
  duration exactly; intervals with two or more (rare at a 1 s period) are left out, and
  `exact_share` says how many ticks were timed. p50/p95 are nearest-rank, never bucket edges.
- surge: a tenth of the pools' queues double; the same tick figures while the fleet grows.
- restart: the operator is stopped once the surge settles and another started: seconds to
  its first finished tick and its requests by verb until `--restart-seconds` after it. It
  finds every status, workload and node as it left them: it should write none of them.
- requests_per_second by verb, for the operator's user alone (one FlowSchema per verb), and
  watch events sent per second by the API server to all its watchers (from
  `apiserver_watch_events_total`; the operator's share is not separable there).

Ends with one JSON line of the figures.

    python benchmarks/fleet_scale.py                      # 2,000 nodes, 1,000 pools, 20 providers
    python benchmarks/fleet_scale.py --nodes 500          # the same fleet, smaller
    python benchmarks/fleet_scale.py --quick              # 16 nodes, 16 pools, 2 providers
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from gpufleet.api.labels import SERVING_LABEL
from gpufleet_testbed import fleets

GPUS_PER_NODE = 8
POOLS_PER_NAMESPACE = 50
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")
TARGETS = {
    "rss_mib": 600,
    "tick_p95_s": 1.0,
    "ticks_per_second": 0.95,
    "quiet_writes": 0,
    "first_plan_s": 60,
}
TICK = "gpufleet_reconcile_duration_seconds"
PHASE = "gpufleet_reconcile_phase_seconds"
PLANNED = "gpufleet_last_plan_timestamp_seconds"
# Pods filtered by the API server (docs/install.md, "What the operator watches").
OPERATOR_ARGS = (f"--pod-label-selector={SERVING_LABEL}=true",)


@dataclass(frozen=True)
class Shape:
    nodes: int
    pools: int
    providers: int

    @property
    def replicas_per_pool(self) -> int:
        return max(1, self.nodes * GPUS_PER_NODE // self.pools)

    @property
    def pods(self) -> int:
        return self.replicas_per_pool * self.pools


def _fleet(
    shape: Shape,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, str]]]:
    """Namespaces and providers, then Deployments and pools, and the pools' names."""
    # A tenth spare on each provider, so that packing never needs the last node of every one.
    per_provider = math.ceil(shape.nodes * 1.1 / shape.providers)
    providers = [
        fleets.cloud_provider(
            f"scale-{p:02d}",
            legal_entity=f"Scale Cloud {p}",
            gpu_quota=per_provider * GPUS_PER_NODE,
            node_pools=[
                fleets.node_pool(
                    "h100",
                    gpu_type="H100",
                    site=f"site-{p % 4}",
                    max_nodes=per_provider,
                    boot_seconds=1,
                    watts_per_gpu=300,
                    idle_watts_per_gpu=50,
                    node_overhead_watts=500,
                )
            ],
        )
        for p in range(shape.providers)
    ]
    names = [(f"scale-{i // POOLS_PER_NAMESPACE:02d}", f"pool-{i:04d}") for i in range(shape.pools)]
    objects = [_labelled(fleets.deployment(ns, name)) for ns, name in names]
    objects += [
        common.pool(ns, name, name, max_replicas=shape.replicas_per_pool * 3) for ns, name in names
    ]
    namespaces = [common.namespace(ns) for ns in sorted({ns for ns, _ in names})]
    return [*namespaces, *providers], objects, names


def _labelled(deployment: dict[str, Any]) -> dict[str, Any]:
    """The Deployment with the label the operator watches pods by (`OPERATOR_ARGS`)."""
    deployment["spec"]["template"]["metadata"]["labels"][SERVING_LABEL] = "true"
    return deployment


def _verb_schemas() -> list[dict[str, Any]]:
    return [
        # Before common.py's two schemas (100, 101), so each request counts here by its verb.
        common.flow_schema(f"gpufleet-scale-{verb}", 90 + i, (verb,))
        for i, verb in enumerate(VERBS)
    ]


def _requests_by_verb(bed: Any) -> dict[str, float]:
    text = common.apiserver_metrics(bed)
    counts = dict.fromkeys(VERBS, 0.0)
    for labels, value in common.samples(text, "apiserver_flowcontrol_dispatched_requests_total"):
        schema = labels.get("flow_schema", "")
        if schema.startswith("gpufleet-scale-"):
            counts[schema.removeprefix("gpufleet-scale-")] += value
    counts["watch_events_all_clients"] = sum(
        v for _, v in common.samples(text, "apiserver_watch_events_total")
    )
    return counts


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class TickSampler:
    """Reads the operator's tick histogram every `interval` seconds in a thread and keeps
    each tick's duration where one interval saw exactly one tick end."""

    operator: Any
    interval: float
    ticks: list[tuple[float, float]] = field(default_factory=list)  # (time, seconds)
    ended: int = 0  # every tick seen to end, timed or not
    first_tick_at: float | None = None
    first_plan_wall: float | None = None  # Unix time the operator finished its first plan
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TickSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _read(self) -> tuple[float, float] | None:
        try:
            # Only these series: a full scrape of 1,000 pools' series costs the operator
            # far more CPU than a tick, and would slow the ticks it measures.
            text = self.operator.metrics(names=(f"{TICK}_count", f"{TICK}_sum", PLANNED))
            figures = common.histogram(text, TICK)
        except OSError:
            return None
        planned = [v for _, v in common.samples(text, PLANNED) if v > 0]
        if planned and self.first_plan_wall is None:
            self.first_plan_wall = planned[0]
        return figures.get("count", 0.0), figures.get("sum", 0.0)

    def _run(self) -> None:
        last = self._read()
        while not self._stop.wait(self.interval):
            now = self._read()
            if now is None or last is None:
                last = now
                continue
            ended = int(now[0] - last[0])
            if ended and self.first_tick_at is None:
                self.first_tick_at = time.monotonic()
            if ended == 1:
                self.ticks.append((time.monotonic(), now[1] - last[1]))
            self.ended += max(0, ended)
            last = now

    def window(self, start: float, end: float) -> list[float]:
        return [seconds for at, seconds in self.ticks if start <= at <= end]


def _tick_figures(sampler: TickSampler, start: float, end: float, ended: int) -> dict[str, Any]:
    timed = sampler.window(start, end)
    return {
        "count": ended,
        "per_second": round(ended / max(end - start, 1e-9), 3),
        "timed": len(timed),
        "exact_share": round(len(timed) / ended, 3) if ended else None,
        "p50_s": round(common.quantile(timed, 0.5), 3) if timed else None,
        "p95_s": round(common.quantile(timed, 0.95), 3) if timed else None,
        "max_s": round(max(timed), 3) if timed else None,
    }


def _fleet_ready(kubectl: Any, shape: Shape) -> bool:
    nodes = kubectl.json("get", "nodes", "-l", fleets.PROVIDER_LABEL)["items"]
    ready = sum(
        1
        for n in nodes
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (n.get("status") or {}).get("conditions") or []
        )
    )
    running = len(
        kubectl.json("get", "pods", "-A", "--field-selector=status.phase=Running")["items"]
    )
    common.log(f"ready nodes {ready}, running pods {running} of {shape.pods}")
    return running >= shape.pods


WRITE_VERBS = ("create", "update", "patch", "delete")


def _writes(bed: Any) -> float:
    counts = _requests_by_verb(bed)
    return sum(counts[v] for v in WRITE_VERBS)


def _settle(bed: Any, quiet: float, timeout: float) -> bool:
    """Waits until the operator has written nothing for `quiet` seconds."""
    started = time.monotonic()
    last, since = _writes(bed), time.monotonic()
    while time.monotonic() - started < timeout:
        time.sleep(2)
        now = _writes(bed)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
    return False


def _phase_totals(operator: Any) -> dict[str, tuple[float, float]]:
    """Each phase's (seconds, count) so far, from the operator's phase histogram."""
    try:
        text = operator.metrics(names=(f"{PHASE}_sum", f"{PHASE}_count"))
    except OSError:
        return {}
    sums = {labels.get("phase", ""): v for labels, v in common.samples(text, f"{PHASE}_sum")}
    counts = {labels.get("phase", ""): v for labels, v in common.samples(text, f"{PHASE}_count")}
    return {phase: (sums[phase], counts.get(phase, 0.0)) for phase in sums}


def _phase_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean wall seconds of each phase over a window: where a tick's time goes."""
    means: dict[str, float] = {}
    if not before:  # unread: a mean since the operator's start would pass for the window's
        return means
    for phase, (seconds, count) in after.items():
        seconds0, count0 = before.get(phase, (0.0, 0.0))
        if count > count0:
            means[phase] = round((seconds - seconds0) / (count - count0), 4)
    return means


def _measure_window(
    bed: Any, pid: int, sampler: TickSampler, seconds: float
) -> tuple[dict[str, Any], float]:
    """Tick and CPU figures and the operator's requests by verb over `seconds`, and the most
    RSS seen."""
    requests = _requests_by_verb(bed)
    phases = _phase_totals(sampler.operator)
    cpu, ended, start = _cpu_seconds(pid), sampler.ended, time.monotonic()
    rss = _rss_mib(pid)
    while time.monotonic() - start < seconds:
        time.sleep(min(2.0, max(0.0, seconds - (time.monotonic() - start))))
        rss = max(rss, _rss_mib(pid))
    end = time.monotonic()
    after = _requests_by_verb(bed)
    ticks = sampler.ended - ended
    figures = _tick_figures(sampler, start, end, ticks)
    figures["cpu_s_per_tick"] = round((_cpu_seconds(pid) - cpu) / ticks, 4) if ticks else None
    figures["seconds"] = round(end - start, 1)
    figures["phase_s_per_tick"] = _phase_means(phases, _phase_totals(sampler.operator))
    figures["requests"] = {k: int(after[k] - requests[k]) for k in after}
    figures["requests_per_second"] = {
        k: round((after[k] - requests[k]) / (end - start), 2) for k in after
    }
    return figures, rss


def _restart(
    bed: Any, kubeconfig: Path, operator: Any, sample: float, window: float
) -> tuple[Any, dict[str, Any]]:
    """Stop the settled operator and start another: seconds from its start to its first
    finished tick, and its requests by verb from its start until `window` seconds after
    that tick (a restart must find the fleet as it left it and write nothing of it again)."""
    _settle(bed, 10.0, timeout=300)
    operator.stop()
    before = _requests_by_verb(bed)
    started, started_wall = time.monotonic(), time.time()
    operator = common.start_operator(
        bed, kubeconfig, "operator-fleet-scale-restart.log", extra_args=OPERATOR_ARGS
    )
    sampler = TickSampler(operator, sample).start()
    try:
        common.until(lambda: sampler.first_tick_at is not None, 1800, "first tick after restart")
        first = (sampler.first_tick_at or time.monotonic()) - started
        planned = (sampler.first_plan_wall or time.time()) - started_wall
        time.sleep(window)
        ticks = sampler.ended
    finally:
        sampler.stop()
    after = _requests_by_verb(bed)
    requests = {k: int(after[k] - before[k]) for k in VERBS}
    return operator, {
        "first_plan_s": round(planned, 1),
        "first_tick_s": round(first, 1),
        "window_s": window,
        "ticks": ticks,
        "requests": requests,
        "writes": sum(requests[v] for v in WRITE_VERBS),
    }


def run(
    shape: Shape,
    quiet: float,
    surge: float,
    sample: float,
    bed_name: str,
    restart_window: float = 60.0,
    hold: float = 0.0,
) -> dict[str, Any]:
    bed = common.start_bed(bed_name)
    operator = sampler = None
    try:
        kubectl = bed.kubectl(timeout=900)
        common.install_crds(kubectl)
        kubeconfig = common.prepare_operator_identity(bed, kubectl)
        common.apply_list(kubectl, _verb_schemas())
        setup, objects, names = _fleet(shape)
        exporter = bed.exporter()
        want = shape.replicas_per_pool
        exporter.load_scenario(
            {"queue": [{"namespace": n, "pool": p, "value": want} for n, p in names]}
        )
        common.apply_list(kubectl, setup)
        common.apply_list(kubectl, objects, batch=250)
        started, started_wall = time.monotonic(), time.time()
        operator = common.start_operator(
            bed, kubeconfig, "operator-fleet-scale.log", extra_args=OPERATOR_ARGS
        )
        pid = operator.process.pid if operator.process else 0
        sampler = TickSampler(operator, sample).start()
        common.until(
            lambda: _fleet_ready(kubectl, shape), max(300, shape.pods * 0.2), "scale-out", 10
        )
        scale_out_s = time.monotonic() - started
        first_tick_s = (sampler.first_tick_at or time.monotonic()) - started
        first_plan_s = (sampler.first_plan_wall or time.time()) - started_wall
        settled = _settle(bed, min(20.0, quiet / 2), timeout=max(120, shape.pools * 0.6))
        common.log(f"quiet window: {quiet:.0f} s; the operator's pid is {pid}")
        quiet_figures, quiet_rss = _measure_window(bed, pid, sampler, quiet)
        common.log("surge window")
        for ns, pool in names[::10]:
            exporter.set_queue(ns, pool, want * 2)
        surge_figures, surge_rss = _measure_window(bed, pid, sampler, surge)
        sampler.stop()
        operator, restart = _restart(bed, kubeconfig, operator, sample, restart_window)
        nodes = len(kubectl.json("get", "nodes", "-l", fleets.PROVIDER_LABEL)["items"])
        if hold > 0:  # the restarted operator, settled, for a profiler to attach to
            held = operator.process.pid if operator.process else 0
            common.log(f"holding the fleet {hold:.0f} s; the operator's pid is {held}")
            time.sleep(hold)
    finally:
        if sampler is not None:
            sampler.stop()
        if operator is not None:
            operator.stop()
        common.stop_bed(bed_name)
    quiet_figures["writes"] = sum(quiet_figures["requests"][v] for v in WRITE_VERBS)
    figures = {
        "benchmark": "fleet_scale",
        "nodes": shape.nodes,
        "nodes_at_end": nodes,
        "pods": shape.pods,
        "pools": shape.pools,
        "providers": shape.providers,
        "first_plan_s": round(first_plan_s, 1),
        "first_tick_s": round(first_tick_s, 1),
        "scale_out_s": round(scale_out_s, 1),
        "settled": settled,
        "rss_mib": round(max(quiet_rss, surge_rss), 1),
        "quiet": quiet_figures,
        "surge": surge_figures,
        "restart": restart,
        "targets": TARGETS,
        "cpus": os.cpu_count(),
    }
    figures["meets_targets"] = _meets(figures)
    return figures


def _meets(figures: dict[str, Any]) -> dict[str, bool]:
    quiet = figures["quiet"]
    p95 = [t["p95_s"] for t in (quiet, figures["surge"]) if t["p95_s"] is not None]
    return {
        "rss_mib": figures["rss_mib"] <= TARGETS["rss_mib"],
        "tick_p95_s": bool(p95) and max(p95) <= TARGETS["tick_p95_s"],
        "ticks_per_second": quiet["per_second"] >= TARGETS["ticks_per_second"],
        "quiet_writes": quiet["writes"] == TARGETS["quiet_writes"],
        "first_plan_s": max(figures["first_plan_s"], figures["restart"]["first_plan_s"])
        <= TARGETS["first_plan_s"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--providers", type=int, default=20)
    parser.add_argument("--quiet-seconds", type=float, default=120.0)
    parser.add_argument("--surge-seconds", type=float, default=60.0)
    parser.add_argument("--sample-seconds", type=float, default=0.5)
    parser.add_argument(
        "--restart-seconds", type=float, default=60.0, help="a restarted operator's window"
    )
    parser.add_argument(
        "--hold-seconds",
        type=float,
        default=0.0,
        help="keep the fleet and the restarted operator this long after measuring (profiling)",
    )
    parser.add_argument("--quick", action="store_true", help="16 nodes, 16 pools, 2 providers")
    parser.add_argument("--testbed", default="bench-fleet-scale", help="test bed name")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        shape, quiet, surge, restart = Shape(16, 16, 2), 10.0, 10.0, 10.0
    else:
        shape, quiet, surge, restart = (
            Shape(args.nodes, args.pools, args.providers),
            args.quiet_seconds,
            args.surge_seconds,
            args.restart_seconds,
        )
    figures = run(
        shape, quiet, surge, args.sample_seconds, args.testbed, restart, args.hold_seconds
    )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main()

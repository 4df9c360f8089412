"""Footprint of one operator over a large fleet on the test bed (issue 7): 1,000
ServingPools, each with its own Deployment (one replica, one GPU, queue depth 0) on the
simulated cloud's kwok nodes. Targets: RSS <= 300 MiB, 0 API writes in 5 quiet minutes.

- rss_mib: VmRSS of the `gpufleet run` process once it has settled (and the most seen
  during the quiet window, `rss_max_mib`; `VmHWM` is the peak over its whole life).
- steady_writes: create/update/patch/delete requests by the operator during the quiet
  window, from the API server's own metrics. The operator runs as a user of its own, counted
  by a FlowSchema (see common.py): `apiserver_flowcontrol_dispatched_requests_total`.
- tick: `gpufleet_reconcile_duration_seconds` over the quiet window (mean and bucket
  quantiles), and how many ticks ran (period 1 s: fewer than one a second means a tick
  takes longer than the period).

"Settled" means the operator wrote nothing for `--settle-quiet` seconds after every pool's
status reports Ready. A write in the quiet window is reported by resource (all clients'
writes to the resources the operator writes, from `apiserver_request_total`) to say what it
was. Ends with one JSON line of the figures.

    python benchmarks/footprint.py                 # 1,000 pools, 300 quiet seconds
    python benchmarks/footprint.py --quick         # 20 pools, 30 quiet seconds (the tests)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

TARGET_RSS_MIB = 300
# Resources the operator writes (reconcilers/kube.py CALLS and the simulated driver).
OPERATOR_RESOURCES = (
    "deployments/scale",
    "statefulsets/scale",
    "servingpools",
    "servingpools/status",
    "cloudproviders",
    "cloudproviders/status",
    "powerbudgets",
    "powerbudgets/status",
    "events",
    "configmaps",
    "nodes",
)


def _proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of `pid`, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) / 1024  # kB
    return out


def _fleet(pools: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, str]]]:
    names, objects, namespaces = common.many_pools(pools)
    gpus = pools + 64  # one GPU per pool at minReplicas, and room to spare
    setup = [
        *namespaces,
        common.provider(max_nodes=math.ceil(gpus / 8), quota_gpus=math.ceil(gpus / 8) * 8),
    ]
    return setup, objects, names


def _all_ready(kubectl: Any, pools: int) -> int:
    items = kubectl.json("get", "servingpools", "-A")["items"]
    ready = 0
    for item in items:
        conditions = (item.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            ready += 1
    return ready


def _tick_quantile(before: dict[str, float], after: dict[str, float], q: float) -> float | None:
    """Upper bound of the bucket that holds quantile q of the ticks in the window; None when
    there were no ticks or it lies past the largest finite bucket (10 s)."""
    count = after.get("count", 0) - before.get("count", 0)
    if count <= 0:
        return None
    bounds = sorted(
        (float(k[3:]), after[k] - before.get(k, 0)) for k in after if k.startswith("le=")
    )
    for bound, cumulative in bounds:
        if cumulative >= q * count:
            return bound if math.isfinite(bound) else None
    return None


def _settle(bed: Any, quiet: float, timeout: float) -> tuple[bool, float]:
    """Waits until the operator has written nothing for `quiet` seconds."""
    started = time.monotonic()
    last = common.operator_requests(bed)["writes"]
    since = time.monotonic()
    while time.monotonic() - started < timeout:
        time.sleep(2)
        now = common.operator_requests(bed)["writes"]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True, time.monotonic() - started
    return False, time.monotonic() - started


def run(
    pools: int, quiet_seconds: float, settle_quiet: float, bed_name: str, keep: bool
) -> dict[str, Any]:
    load_start = common.load_average()
    bed = common.start_bed(bed_name)
    operator = None
    try:
        kubectl = bed.kubectl(timeout=600)
        common.install_crds(kubectl)
        kubeconfig = common.prepare_operator_identity(bed, kubectl)
        setup, objects, names = _fleet(pools)
        exporter = bed.exporter()
        exporter.load_scenario(
            {"queue": [{"namespace": n, "pool": p, "value": 0} for n, p in names]}
        )
        started = time.monotonic()
        common.apply_list(kubectl, setup)
        common.apply_list(kubectl, objects, batch=250)
        created_s = time.monotonic() - started
        common.log(f"{pools} pools and Deployments applied in {created_s:.1f}s")
        operator = common.start_operator(bed, kubeconfig, "operator-footprint.log")
        pid = operator.process.pid if operator.process else 0
        common.until(
            lambda: _all_ready(kubectl, pools) >= pools,
            max(120, pools * 1.2),
            f"all {pools} pools Ready",
            interval=5,
        )
        ready_s = time.monotonic() - started
        common.log(f"all pools Ready {ready_s:.1f}s after the first apply; settling")
        settled, settle_s = _settle(bed, settle_quiet, timeout=max(120, pools * 0.6))
        common.log(f"settled={settled} after {settle_s:.1f}s more; quiet window {quiet_seconds}s")

        rss_start = _proc_status(pid)
        requests_before = common.operator_requests(bed)
        writes_by_resource_before = common.write_breakdown(bed)
        ticks_before = common.histogram(operator.metrics(), "gpufleet_reconcile_duration_seconds")
        window_start = time.monotonic()
        rss_max = rss_start["VmRSS"]
        while time.monotonic() - window_start < quiet_seconds:
            time.sleep(min(10.0, max(0.0, quiet_seconds - (time.monotonic() - window_start))))
            rss_max = max(rss_max, _proc_status(pid)["VmRSS"])
        window = time.monotonic() - window_start
        requests_after = common.operator_requests(bed)
        writes_by_resource_after = common.write_breakdown(bed)
        ticks_after = common.histogram(operator.metrics(), "gpufleet_reconcile_duration_seconds")
        rss_end = _proc_status(pid)
        nodes = len(kubectl.json("get", "nodes")["items"])
        pods = len(
            kubectl.json("get", "pods", "-A", "--field-selector=status.phase=Running")["items"]
        )
    finally:
        if operator:
            operator.stop()
        if not keep:
            common.stop_bed(bed_name)

    ticks = ticks_after.get("count", 0) - ticks_before.get("count", 0)
    tick_sum = ticks_after.get("sum", 0) - ticks_before.get("sum", 0)
    steady_writes = int(requests_after["writes"] - requests_before["writes"])
    others = {
        key: int(value - writes_by_resource_before.get(key, 0))
        for key, value in sorted(writes_by_resource_after.items())
        if key.split(" ", 1)[1] in OPERATOR_RESOURCES
        and value - writes_by_resource_before.get(key, 0) > 0
    }
    return {
        "benchmark": "footprint",
        "pools": pools,
        "rss_mib": round(rss_start["VmRSS"], 1),
        "steady_writes": steady_writes,
        "targets": {"rss_mib": TARGET_RSS_MIB, "steady_writes": 0},
        "meets_target": rss_start["VmRSS"] <= TARGET_RSS_MIB and steady_writes == 0,
        "rss_max_mib": round(rss_max, 1),
        "rss_end_mib": round(rss_end["VmRSS"], 1),
        "rss_peak_lifetime_mib": round(rss_end["VmHWM"], 1),
        "quiet_seconds": round(window, 1),
        "settled": settled,
        "steady_reads": int(requests_after["reads"] - requests_before["reads"]),
        "writes_to_operator_resources_by_all_clients": others,
        "tick": {
            "count": int(ticks),
            "per_second": round(ticks / window, 3),
            "mean_s": round(tick_sum / ticks, 4) if ticks else None,
            "p50_bucket_le_s": _tick_quantile(ticks_before, ticks_after, 0.5),
            "p95_bucket_le_s": _tick_quantile(ticks_before, ticks_after, 0.95),
            "period_s": 1.0,
        },
        "setup_seconds": {"apply": round(created_s, 1), "all_ready": round(ready_s, 1)},
        "nodes": nodes,
        "running_pods": pods,
        "load_average_start": load_start,
        "load_average_end": common.load_average(),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--quiet-seconds", type=float, default=300.0)
    parser.add_argument("--settle-quiet", type=float, default=20.0, help="no writes for this long")
    parser.add_argument("--quick", action="store_true", help="20 pools, 30 quiet seconds")
    parser.add_argument("--testbed", default="bench-footprint", help="test bed name")
    parser.add_argument("--keep", action="store_true", help="leave the test bed running")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    pools, quiet = (20, 30.0) if args.quick else (args.pools, args.quiet_seconds)
    settle = min(args.settle_quiet, 5.0) if args.quick else args.settle_quiet
    figures = run(pools, quiet, settle, args.testbed, args.keep)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main()

"""The requests each remote cluster receives from one operator in a quiet, bursting fleet
(issue 20, step 4): remote clusters read at a bounded rate, not every tick.

Three test beds: the operator's own cluster and two remote clusters, each a burst provider
(`cluster.kubeconfigSecretRef`, Simulated driver, kwok nodes there). `--pools` pools ask for
more than the home provider holds, so each keeps copies in both remote clusters. Once the
fleet has settled, the operator is run for `--quiet-seconds` twice: reading every remote
cluster every tick (`--remote-read-seconds 0`, as before), then at the default bound. In
each remote cluster the operator has a user of its own, counted by FlowSchema (common.py),
so only its requests count. A last check applies more demand after the bounded window and
times until the remote copies grow: the bound must not slow the operator's own changes.

Ends with one JSON line: requests per second each remote cluster received, by reads and
writes, in both modes.

    python benchmarks/remote_reads.py            # 20 pools, 120 s windows
    python benchmarks/remote_reads.py --quick    # 4 pools, 20 s windows (the tests run this)
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from gpufleet_testbed import fleets
from gpufleet_testbed import testbed as tb

GPU = "BENCH-REMOTE-GPU"
NS = "bench-remote"
HOME = "bench-home"
REMOTES = ("bench-remote-a", "bench-remote-b")
JURISDICTIONS = ("NL", "FR")
DEFAULT_READ_SECONDS = 10.0  # the operator's default (--remote-read-seconds)


def _embedded(kubeconfig: Path) -> str:
    """The kubeconfig with its files inlined: a Secret holds no paths."""
    config = json.loads(kubeconfig.read_text())

    def inline(entry: dict[str, Any], path_key: str, data_key: str) -> None:
        path = entry.pop(path_key, None)
        if path:
            entry[data_key] = base64.b64encode(Path(path).read_bytes()).decode()

    for cluster in config["clusters"]:
        inline(cluster["cluster"], "certificate-authority", "certificate-authority-data")
    for user in config["users"]:
        inline(user["user"], "client-certificate", "client-certificate-data")
        inline(user["user"], "client-key", "client-key-data")
    return json.dumps(config)


def _provider(name: str, max_nodes: int, jurisdiction: str, **extra: Any) -> dict[str, Any]:
    pool = fleets.node_pool(
        "h100",
        gpu_type=GPU,
        site=f"{name}-site",
        max_nodes=max_nodes,
        boot_seconds=1,
        watts_per_gpu=300,
        idle_watts_per_gpu=50,
        gpus_per_node=1,
    )
    return fleets.cloud_provider(
        name,
        legal_entity=f"{name} B.V.",
        jurisdiction=jurisdiction,
        node_pools=[pool],
        **extra,
    )


def _fleet(pools: int, replicas: int) -> list[dict[str, Any]]:
    """Home holds 2 GPUs; each remote cluster room for all. Even pools may go to the first
    remote cluster (NL), odd ones to the second (FR): both hold copies whatever the order
    of placement."""
    objects: list[dict[str, Any]] = [fleets.namespace(NS), _provider(HOME, 2, "DE")]
    for name, country in zip(REMOTES, JURISDICTIONS, strict=True):
        secret = {"kubeconfigSecretRef": {"name": f"{name}-kubeconfig", "key": "kubeconfig"}}
        objects.append(
            _provider(name, pools * replicas * 2, country, role="Secondary", cluster=secret)
        )
    for i in range(pools):
        name = f"pool-{i:02d}"
        objects.append(fleets.deployment(NS, name, node_selector={fleets.GPU_TYPE_LABEL: GPU}))
        objects.append(
            fleets.serving_pool(
                NS,
                name,
                gpu_types=[GPU],
                max_replicas=replicas * 4,
                jurisdictions=["DE", JURISDICTIONS[i % 2]],
                burst={"enabled": True},
                behavior=fleets.behavior(scale_down_window_seconds=600),
            )
        )
    return objects


def _copies(remote: Any) -> int:
    found = remote.json("get", "deployments", "-n", NS, "-l", "gpufleet.io/pool")
    return sum(int(d["spec"].get("replicas") or 0) for d in found["items"])


def _window(beds: list[tb.Testbed], seconds: float) -> list[dict[str, float]]:
    """Per remote cluster, the operator's reads and writes per second over `seconds`."""
    before = [common.operator_requests(bed) for bed in beds]
    time.sleep(seconds)
    after = [common.operator_requests(bed) for bed in beds]
    return [
        {k: round((a[k] - b[k]) / seconds, 3) for k in ("reads", "writes")}
        for a, b in zip(after, before, strict=True)
    ]


def _operator(bed: tb.Testbed, kubeconfig: Path, read_seconds: float, log: str) -> Any:
    return common.start_operator(
        bed,
        kubeconfig,
        log,
        extra_args=(
            "--allow-private-remote-servers",  # the remote test beds listen on loopback
            f"--remote-read-seconds={read_seconds:g}",
        ),
    )


def run(pools: int, replicas: int, quiet: float, prefix: str) -> dict[str, Any]:
    names = [f"{prefix}-home", *(f"{prefix}-{r.removeprefix('bench-')}" for r in REMOTES)]
    beds: list[tb.Testbed] = []
    operator = None
    try:
        for i, name in enumerate(names):
            beds.append(tb.up(name, gpu_nodes=0, metrics=i == 0))
        home, remote_beds = beds[0], beds[1:]
        kubectl = home.kubectl(timeout=300)
        common.install_crds(kubectl)
        kubeconfig = common.prepare_operator_identity(home, kubectl)
        secrets = []
        for name, bed in zip(REMOTES, remote_beds, strict=True):
            remote = bed.kubectl(timeout=300)
            remote_kubeconfig = common.prepare_operator_identity(bed, remote)
            remote.run("create", "namespace", "gpufleet-system", check=False)
            secret = fleets.kubeconfig_secret(remote, f"{name}-kubeconfig")
            secret["stringData"]["kubeconfig"] = _embedded(remote_kubeconfig)
            secrets.append(secret)
        exporter = home.exporter()
        common.apply_list(kubectl, [*secrets, *_fleet(pools, replicas)])
        for i in range(pools):  # targetPerReplica 2
            exporter.set_queue(NS, f"pool-{i:02d}", replicas * 2)
        operator = _operator(home, kubeconfig, 0, "operator-remote-every-tick.log")
        remotes = [bed.kubectl(timeout=60) for bed in remote_beds]
        common.until(
            lambda: all(_copies(r) > 0 for r in remotes), 300, "copies in both remote clusters", 2
        )
        time.sleep(10)  # the copies' pods start; then nothing changes
        every_tick = _window(remote_beds, quiet)
        operator.stop()
        operator = _operator(home, kubeconfig, DEFAULT_READ_SECONDS, "operator-remote-bounded.log")
        time.sleep(10)  # its start-up reads
        bounded = _window(remote_beds, quiet)
        grown = sum(_copies(r) for r in remotes)
        started = time.monotonic()
        for i in range(pools):
            exporter.set_queue(NS, f"pool-{i:02d}", replicas * 4)
        common.until(lambda: sum(_copies(r) for r in remotes) > grown, 300, "copies growing", 0.5)
        reaction_s = time.monotonic() - started
    finally:
        if operator is not None:
            operator.stop()
        for name in names:
            common.stop_bed(name)
    return {
        "benchmark": "remote_reads",
        "pools": pools,
        "remote_clusters": len(REMOTES),
        "quiet_seconds": quiet,
        "read_seconds": DEFAULT_READ_SECONDS,
        "every_tick": dict(zip(REMOTES, every_tick, strict=True)),
        "bounded": dict(zip(REMOTES, bounded, strict=True)),
        "reads_per_second_ratio": round(
            sum(b["reads"] for b in bounded) / max(sum(e["reads"] for e in every_tick), 1e-9), 3
        ),
        "surge_to_remote_copy_s": round(reaction_s, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=2, help="each pool's first demand")
    parser.add_argument("--quiet-seconds", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true", help="4 pools, 20 s windows")
    parser.add_argument("--testbed", default="bench-rr", help="prefix of the test beds' names")
    args = parser.parse_args(argv)
    pools, quiet = (4, 20.0) if args.quick else (args.pools, args.quiet_seconds)
    figures = run(pools, args.replicas, quiet, args.testbed)
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main()

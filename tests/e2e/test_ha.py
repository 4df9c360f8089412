"""Two operator replicas with leader election (kopf peering) on the test bed: one acts, the
other waits; SIGKILL the leader during a surge and the standby scales the pool within 15 s,
with no action issued twice. Waits poll to a deadline; no fixed sleeps."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpufleet.reconcilers.intent import record_of
from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NS = "e2e-ha"
PROVIDER = "e2e-ha-cloud"
PEERING = "gpufleet-e2e-ha"
TAKEOVER_SECONDS = 15
APPLIED = re.compile(r"applied (\S+?)[\"\s]")


def _fleet() -> list[dict[str, Any]]:
    h100 = fleets.node_pool(
        "h100",
        gpu_type="H100",
        site="e2e-ha-site",
        max_nodes=10,
        watts_per_gpu=300,
        idle_watts_per_gpu=50,
        node_overhead_watts=500,
    )
    provider = fleets.cloud_provider(
        PROVIDER, legal_entity="E2E HA Cloud GmbH", gpu_quota=80, node_pools=[h100]
    )
    deployment = fleets.deployment(NS, "surge", node_selector={fleets.PROVIDER_LABEL: PROVIDER})
    pool = fleets.serving_pool(
        NS,
        "surge",
        gpu_types=["H100"],
        max_replicas=40,
        behavior=fleets.behavior(scale_down_window_seconds=60),
    )
    return [fleets.namespace(NS), provider, deployment, pool]


def _peering_crd(testbed: Testbed) -> str:
    """kopf's peering CRD exactly as the chart installs it."""
    return subprocess.run(
        [
            str(testbed.helm_binary),
            "template",
            "gpufleet",
            str(REPO / "charts" / "gpufleet"),
            "--namespace",
            "gpufleet-system",
            "--kube-version",
            "1.34.4",
            "--show-only",
            "templates/peering-crd.yaml",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def _replica(testbed: Testbed, name: str, priority: int) -> OperatorProcess:
    return OperatorProcess(
        testbed,
        testbed.directory / "logs" / f"operator-ha-{name}.log",
        extra_args=(
            "--leader-election",
            "--peering-name",
            PEERING,
            "--peering-priority",
            str(priority),
            "--peering-lifetime",
            "10",
        ),
        env={"POD_ID": f"ha-{name}"},
    )


@pytest.fixture(scope="module")
def fleet(testbed: Testbed, kubectl: Kubectl) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    fleets.install_crds(kubectl, _peering_crd(testbed))
    objects = _fleet()
    fleets.apply(kubectl, objects)
    testbed.exporter().set_queue(NS, "surge", 0)
    leader = _replica(testbed, "a", 200).start()
    standby = _replica(testbed, "b", 100)
    try:
        standby.start()
        yield leader, standby
    finally:
        for process in (leader, standby):
            process.stop()
        fleets.delete(kubectl, objects)
        kubectl.run("delete", "clusterkopfpeering", PEERING, "--wait=false", check=False)


def _replicas(kubectl: Kubectl) -> int:
    return int(kubectl.json("get", "deployment", "-n", NS, "surge")["spec"]["replicas"])


def _applied(process: OperatorProcess) -> list[str]:
    """The action ids this replica applied, in order (from its log)."""
    if not process.log.exists():
        return []
    return APPLIED.findall(process.log.read_text(errors="replace"))


def _peers(kubectl: Kubectl) -> dict[str, Any]:
    body = kubectl.json("get", "clusterkopfpeering", PEERING)
    return dict(body.get("status") or {})


def test_standby_takes_over_a_killed_leader_within_15s_without_duplicate_actions(
    fleet: tuple[OperatorProcess, OperatorProcess], testbed: Testbed, kubectl: Kubectl
) -> None:
    leader, standby = fleet
    wait_for(
        lambda: {"ha-a", "ha-b"} <= set(_peers(kubectl)),
        30,
        "both peers",
        leader,
        standby,
        interval=0.2,
    )

    testbed.exporter().set_queue(NS, "surge", 10)  # 5 replicas
    wait_for(
        lambda: _replicas(kubectl) >= 5, 40, "the leader's scale-up", leader, standby, interval=0.2
    )
    assert _applied(leader), "the leader acted"
    assert not _applied(standby), "the standby waited"

    # Mid-surge: the queue keeps growing, and the leader dies without a word.
    assert leader.process is not None
    os.killpg(leader.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    leader.process.wait(10)
    testbed.exporter().set_queue(NS, "surge", 30)  # 15 replicas
    wait_for(lambda: _replicas(kubectl) > 5, 40, "the standby's scale-up", standby, interval=0.2)
    takeover = time.monotonic() - killed
    print(f"takeover after SIGKILL of the leader: {takeover:.1f}s")
    wait_for(lambda: _replicas(kubectl) >= 15, 20, "15 replicas", standby, interval=0.2)

    by_a, by_b = _applied(leader), _applied(standby)
    twice = [i for i, n in Counter(by_a + by_b).items() if n > 1]
    print(f"actions: leader {by_a}, standby {by_b}; duplicated: {len(twice)}")
    assert not twice, f"actions applied twice: {twice}"
    assert by_b, "the standby acted after the takeover"
    anchor = kubectl.json("get", "configmap", "-n", "gpufleet-system", "gpufleet-fleet")
    record = record_of(anchor.get("data") or {})
    assert record.leader == "ha-b"
    assert takeover <= TAKEOVER_SECONDS, f"takeover took {takeover:.1f}s"

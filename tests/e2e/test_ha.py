"""Two operator replicas with leader election (a Lease) on the test bed: one acts, the other
keeps its indexes warm. The leader is stopped (SIGSTOP) mid-surge, the standby takes the
Lease over and scales; the old leader resumes (SIGCONT) believing it led, and its writes are
fenced: the pool's replicas never go back. Then the new leader shuts down, releases the
Lease, and the other takes over at once. Waits poll to a deadline; no fixed sleeps but the
sampling window."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from gpufleet.reconcilers.intent import record_of
from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.operator import OperatorProcess, wait_for
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

NS = "e2e-ha"
PROVIDER = "e2e-ha-cloud"
LEASE = "gpufleet-e2e-ha"
DURATION = 4  # seconds: the leader trusts its term for 2/3 of it, a standby waits all of it
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


def _replica(testbed: Testbed, name: str) -> OperatorProcess:
    return OperatorProcess(
        testbed,
        testbed.directory / "logs" / f"operator-ha-{name}.log",
        extra_args=(
            "--leader-election",
            "--lease-name",
            LEASE,
            "--lease-duration",
            str(DURATION),
        ),
        env={"POD_ID": f"ha-{name}"},
    )


def _lease(kubectl: Kubectl) -> dict[str, Any]:
    return dict(kubectl.json("get", "lease", "-n", "gpufleet-system", LEASE).get("spec") or {})


def _holder(kubectl: Kubectl) -> str | None:
    try:
        return str(_lease(kubectl).get("holderIdentity") or "")
    except Exception:
        return None


@pytest.fixture(scope="module")
def fleet(testbed: Testbed, kubectl: Kubectl) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    fleets.install_crds(kubectl)
    kubectl.run("delete", "lease", "-n", "gpufleet-system", LEASE, "--wait=false", check=False)
    objects = _fleet()
    fleets.apply(kubectl, objects)
    testbed.exporter().set_queue(NS, "surge", 0)
    first = _replica(testbed, "a").start()
    second = _replica(testbed, "b")
    try:
        wait_for(lambda: _holder(kubectl) == "ha-a", 30, "ha-a holds the Lease", first)
        second.start()
        yield first, second
    finally:
        for process in (first, second):
            if process.process is not None and process.process.poll() is None:
                os.killpg(process.process.pid, signal.SIGCONT)
            process.stop()
        fleets.delete(kubectl, objects)
        kubectl.run("delete", "lease", "-n", "gpufleet-system", LEASE, "--wait=false", check=False)


def _replicas(kubectl: Kubectl) -> int:
    return int(kubectl.json("get", "deployment", "-n", NS, "surge")["spec"]["replicas"])


def _log(process: OperatorProcess) -> str:
    return process.log.read_text(errors="replace") if process.log.exists() else ""


def _applied(process: OperatorProcess) -> list[str]:
    """The action ids this replica applied, in order (from its log)."""
    return APPLIED.findall(_log(process))


def test_a_stalled_leader_resuming_after_a_takeover_is_fenced_and_replicas_never_flap(
    fleet: tuple[OperatorProcess, OperatorProcess], testbed: Testbed, kubectl: Kubectl
) -> None:
    leader, standby = fleet
    testbed.exporter().set_queue(NS, "surge", 10)  # 5 replicas
    wait_for(
        lambda: _replicas(kubectl) >= 5, 40, "the leader's scale-up", leader, standby, interval=0.2
    )
    assert _applied(leader), "the leader acted"
    assert not _applied(standby), "the standby waited"
    term = int(_lease(kubectl).get("leaseTransitions") or 0)

    # Mid-surge the leader stalls (as under a blocked event loop or a paused VM) with its
    # plan for 5 replicas in memory; the queue grows meanwhile.
    assert leader.process is not None
    os.killpg(leader.process.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    testbed.exporter().set_queue(NS, "surge", 30)  # 15 replicas
    wait_for(lambda: _holder(kubectl) == "ha-b", 30, "the takeover", standby, interval=0.2)
    takeover = time.monotonic() - stopped
    wait_for(lambda: _replicas(kubectl) >= 15, 30, "the standby's scale-up", standby, interval=0.2)
    assert int(_lease(kubectl)["leaseTransitions"]) == term + 1, "a new term"
    applied_before_resume = len(_applied(leader))

    # The old leader resumes believing it leads. Its term has run out by its own clock and
    # the Lease names another: over several of its ticks, the replicas never go back.
    os.killpg(leader.process.pid, signal.SIGCONT)
    samples = []
    deadline = time.monotonic() + 2 * DURATION
    while time.monotonic() < deadline:
        samples.append(_replicas(kubectl))
        time.sleep(0.2)
    print(f"takeover after SIGSTOP: {takeover:.1f}s; replicas after SIGCONT: {samples}")
    assert min(samples) >= 15, f"the deposed leader's plan came back: {samples}"
    assert len(_applied(leader)) == applied_before_resume, "the deposed leader wrote"
    assert "lost the lease" in _log(leader) or "deposed" in _log(leader)
    assert takeover <= DURATION + 5, f"takeover took {takeover:.1f}s"

    by_a, by_b = _applied(leader), _applied(standby)
    twice = [i for i, n in Counter(by_a + by_b).items() if n > 1]
    assert not twice, f"actions applied twice: {twice}"
    anchor = kubectl.json("get", "configmap", "-n", "gpufleet-system", "gpufleet-fleet")
    assert record_of(anchor.get("data") or {}).leader == "ha-b"
    assert anchor["metadata"]["annotations"]["gpufleet.io/leader-term"] == str(term + 1)


def test_a_leader_that_shuts_down_releases_the_lease_and_the_standby_takes_it_at_once(
    fleet: tuple[OperatorProcess, OperatorProcess], kubectl: Kubectl
) -> None:
    old, new = fleet
    wait_for(lambda: _holder(kubectl) == "ha-b", 30, "ha-b leads", old, new, interval=0.2)
    term = int(_lease(kubectl)["leaseTransitions"])
    new.stop()  # SIGTERM: kopf's cleanup stops the loop, then releases the Lease
    stopped = time.monotonic()
    wait_for(lambda: _holder(kubectl) == "ha-a", 30, "ha-a takes over", old, new, interval=0.1)
    waited = time.monotonic() - stopped
    print(f"takeover after a graceful stop: {waited:.1f}s")
    assert "released the lease" in _log(new)
    assert int(_lease(kubectl)["leaseTransitions"]) == term + 1
    assert waited < DURATION, f"the standby waited out the Lease ({waited:.1f}s)"


def test_the_api_server_refuses_a_scale_written_under_a_stale_resource_version(
    fleet: tuple[OperatorProcess, OperatorProcess], testbed: Testbed, kubectl: Kubectl
) -> None:
    # The fence's last line (reconcilers/kube.py Kube.scale): the scale subresource carries
    # the workload's resourceVersion, and the API server holds the write to it.
    api = config.new_client_from_config(str(testbed.kubeconfig))  # type: ignore[no-untyped-call]
    apps = client.AppsV1Api(api)
    read = apps.read_namespaced_deployment_scale("surge", NS)
    assert read.metadata is not None
    kubectl.run("annotate", "deployment", "-n", NS, "surge", "e2e-ha/touched=yes", "--overwrite")
    stale = {
        "metadata": {"resourceVersion": read.metadata.resource_version},
        "spec": {"replicas": 1},
    }
    with pytest.raises(ApiException) as refused:
        apps.patch_namespaced_deployment_scale("surge", NS, stale)
    assert refused.value.status == 409
    assert _replicas(kubectl) != 1

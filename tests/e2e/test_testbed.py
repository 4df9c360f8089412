"""The test bed itself: versions, a second control plane, a clean `down`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from gpufleet_testbed import Testbed, procs
from gpufleet_testbed import testbed as testbeds
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.nodes import GPU_RESOURCE

pytestmark = pytest.mark.e2e


def test_api_server_reports_its_release_version(kubectl: Kubectl) -> None:
    # Built as a module dependency it would say v0.0.0 without -ldflags -X.
    version = kubectl.json("version")["serverVersion"]
    assert re.fullmatch(r"v1\.\d+\.\d+", version["gitVersion"]), version
    assert version["major"] == "1"
    assert int(version["minor"]) >= 34


def test_helm_is_available(testbed: Testbed) -> None:
    out = subprocess.run(
        [str(testbed.helm_binary), "version", "--short"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert re.match(r"v3\.\d+\.\d+", out), out


def test_rbac_denies_an_unbound_service_account(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run("create", "serviceaccount", "nobody", "-n", namespace)
    allowed = kubectl.run(
        "auth",
        "can-i",
        "list",
        "nodes",
        f"--as=system:serviceaccount:{namespace}:nobody",
        check=False,
    ).stdout.strip()
    assert allowed == "no"


def test_second_control_plane_runs_beside_the_first(
    testbed: Testbed, secondary_testbed: Testbed
) -> None:
    primary, secondary = testbed.kubectl(), secondary_testbed.kubectl()
    assert testbed.apiserver_url != secondary_testbed.apiserver_url
    marker = f"only-in-primary-{uuid.uuid4().hex[:6]}"
    primary.run("create", "configmap", marker, "-n", "default")
    try:
        missing = secondary.run("get", "configmap", marker, "-n", "default", check=False)
        assert missing.returncode != 0 and "NotFound" in missing.stderr

        nodes = secondary.json("get", "nodes")["items"]
        assert [n["metadata"]["name"] for n in nodes] == [f"{secondary_testbed.name}-gpu-0"]
        assert nodes[0]["status"]["allocatable"][GPU_RESOURCE] == "4"
    finally:
        primary.run("delete", "configmap", marker, "-n", "default")


def test_down_stops_every_process(testbed: Testbed) -> None:
    if testbed.name == "existing":  # conftest's wrapper of a borrowed cluster
        pytest.skip("starts a test bed of its own, not for a borrowed cluster")
    name = f"e2e-down-{uuid.uuid4().hex[:4]}"
    bed = testbeds.up(name, metrics=True, gpu_nodes=0, build=False)
    try:
        running = testbeds.status(name)
        assert running["up"], running
        pids = [p["pid"] for p in running["processes"].values()]
        assert len(pids) == 7
    finally:
        stopped = testbeds.down(name)

    assert sorted(stopped) == sorted(testbeds.COMPONENTS)
    assert not testbeds.status(name)["processes"]
    for pid in pids:
        assert not _alive(pid), f"pid {pid} still runs after down"
    assert bed.directory.is_dir()  # logs stay for a post-mortem
    shutil.rmtree(bed.directory)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_down_spares_a_process_that_reused_a_recorded_pid(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "60"]) as stranger:
        try:
            # A pid file from an earlier run whose pid now belongs to another
            # process: same pid, different start time.
            (tmp_path / "etcd.pid").write_text(
                json.dumps(
                    {"pid": stranger.pid, "executable": "sleep", "start_ticks": 1, "log": "x"}
                )
            )

            assert procs.stop(tmp_path, "etcd") is False

            assert stranger.poll() is None
            assert not (tmp_path / "etcd.pid").exists()
        finally:
            stranger.kill()

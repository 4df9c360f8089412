"""`kubectl gpufleet` on the test bed: kubectl finds the installed plugin on PATH, and its
completion lists the cluster's ServingPools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

NS = "e2e-kubectl-plugin"


def _kubectl(testbed: Testbed, *args: str) -> subprocess.CompletedProcess[str]:
    scripts = str(Path(sys.executable).parent)  # where the package put kubectl-gpufleet
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["KUBECONFIG"] = str(testbed.kubeconfig)
    return subprocess.run(
        [str(testbed.kubectl_binary), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_kubectl_gpufleet_explains_and_completes_a_pool(testbed: Testbed, kubectl: Kubectl) -> None:
    fleets.install_crds(kubectl)
    pool = fleets.serving_pool(
        NS, "chat", gpu_types=["H100"], max_replicas=4, behavior=fleets.behavior()
    )
    objects = [fleets.namespace(NS), pool]
    fleets.apply(kubectl, objects)
    try:
        explained = _kubectl(testbed, "gpufleet", "explain", "-n", NS, "chat")
        assert explained.returncode == 0, explained.stderr
        assert explained.stdout.startswith(f"{NS}/chat:")

        status = _kubectl(testbed, "gpufleet", "status")
        assert status.returncode == 0, status.stderr
        assert f"{NS}/chat" in status.stdout

        completed = _kubectl(testbed, "__complete", "gpufleet", "explain", f"{NS}/")
        assert completed.returncode == 0, completed.stderr
        assert f"{NS}/chat" in completed.stdout.splitlines()
    finally:
        fleets.delete(kubectl, objects)

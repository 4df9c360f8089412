"""Moving objects from the old kind (InferencePool) to ServingPool, as CHANGELOG.md and
docs/install.md say, on a real API server: the old CRD is rebuilt from the new one."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet_testbed import fleets
from gpufleet_testbed.kubectl import Kubectl

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "migrate" / "servingpool.py"
OLD_CRD = "inferencepools.gpufleet.io"


def _old_crd() -> dict[str, Any]:
    """The ServingPool CRD under the names it had before the rename (no short names, which
    the new CRD holds now)."""
    crd = copy.deepcopy(
        yaml.safe_load((REPO / "crds" / "gpufleet.io_servingpools.yaml").read_text())
    )
    crd["metadata"] = {"name": OLD_CRD}
    names = crd["spec"]["names"]
    names.update(kind="InferencePool", listKind="InferencePoolList")
    names.update(plural="inferencepools", singular="inferencepool")
    names.pop("shortNames", None)
    return dict(crd)


@pytest.fixture
def old_kind(kubectl: Kubectl) -> Iterator[None]:
    fleets.install_crds(kubectl)
    kubectl.apply(_old_crd())
    kubectl.run("wait", "--for=condition=Established", f"crd/{OLD_CRD}", "--timeout=60s")
    yield
    kubectl.run("delete", "crd", OLD_CRD, "--wait=false", "--ignore-not-found")


def test_migration_copies_every_pool_to_the_new_kind(
    kubectl: Kubectl, old_kind: None, namespace: str
) -> None:
    old = fleets.serving_pool(
        namespace, "chat", gpu_types=["H100"], max_replicas=8, behavior=fleets.behavior()
    )
    old["kind"] = "InferencePool"
    old["metadata"]["labels"] = {"team": "chat"}
    # Client-side apply leaves kubectl's record of the old object, which must not travel.
    kubectl.run("apply", "-f", "-", stdin=json.dumps(old))

    listing = kubectl.run("get", "inferencepools.gpufleet.io", "-n", namespace, "-o", "json")
    converted = subprocess.run(
        [sys.executable, str(SCRIPT)],
        input=listing.stdout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kubectl.run("apply", "--server-side", "-f", "-", stdin=converted)

    new = kubectl.json("get", "gfpool", "-n", namespace, "chat")
    assert new["kind"] == "ServingPool"
    assert (
        new["spec"]
        == kubectl.json("get", "inferencepools.gpufleet.io", "-n", namespace, "chat")["spec"]
    )
    assert new["metadata"]["labels"] == {"team": "chat"}
    assert "kubectl.kubernetes.io/last-applied-configuration" not in (
        new["metadata"].get("annotations") or {}
    )

"""Upstream CRDs (Cluster API, Karpenter, GIE, CAPG) at the versions pinned under e2e/tools/.

The CRD YAML is taken from each project's Go module, never written by hand: the version
comes from e2e/tools/<dir>/go.mod, `go mod download -json` gives the module's directory,
and the files are copied once into ${GPUFLEET_CACHE:-~/.cache/gpufleet}/crds/<dir>-<version>/
so later runs need neither Go nor the network.

    python -m gpufleet_testbed.crds_upstream cluster-api   # prints the cached paths
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gpufleet_testbed.layout import repo_root

# tools dir -> the modules it pins, each with its CRD files relative to the module root.
# A tools dir pins several modules where one project is built against a release of
# another (CAPG v1.13.1 against Cluster API v1.13.2).
UPSTREAM: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "cluster-api": (
        (
            "sigs.k8s.io/cluster-api",
            (
                "core/config/crd/bases/cluster.x-k8s.io_machinedeployments.yaml",
                "core/config/crd/bases/cluster.x-k8s.io_machines.yaml",
                # The same CRD name as CAPG's companion below (v1.13.2): the driver contract
                # suite runs MachinePools against both, installing one at a time.
                "core/config/crd/bases/cluster.x-k8s.io_machinepools.yaml",
            ),
        ),
    ),
    "karpenter": (
        (
            "sigs.k8s.io/karpenter",
            (
                "pkg/apis/crds/karpenter.sh_nodepools.yaml",
                "pkg/apis/crds/karpenter.sh_nodeclaims.yaml",
            ),
        ),
    ),
    "gateway-api-inference-extension": (
        (
            "sigs.k8s.io/gateway-api-inference-extension",
            ("config/crd/bases/inference.networking.k8s.io_inferencepools.yaml",),
        ),
    ),
    "cluster-api-provider-gcp": (
        (
            "sigs.k8s.io/cluster-api",
            ("config/crd/bases/cluster.x-k8s.io_machinepools.yaml",),
        ),
        (
            "sigs.k8s.io/cluster-api-provider-gcp",
            ("config/crd/bases/infrastructure.cluster.x-k8s.io_gcpmanagedmachinepools.yaml",),
        ),
    ),
}


def module_version(tools_dir: str, module: str) -> str:
    go_mod = (repo_root() / "e2e" / "tools" / tools_dir / "go.mod").read_text()
    found = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod, re.M)
    if found is None:
        raise RuntimeError(f"e2e/tools/{tools_dir}/go.mod does not pin {module}")
    return found.group(1)


def pinned_version(tools_dir: str) -> str:
    """The versions of every module `tools_dir` pins, so bumping any one refetches."""
    return "-".join(module_version(tools_dir, module) for module, _ in UPSTREAM[tools_dir])


def _cache_root() -> Path:
    return Path(os.environ.get("GPUFLEET_CACHE", Path.home() / ".cache" / "gpufleet")) / "crds"


def _module_dir(tools_dir: str, module: str) -> Path:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    done = subprocess.run(
        [go, "mod", "download", "-json", module],
        cwd=repo_root() / "e2e" / "tools" / tools_dir,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GOFLAGS": "-mod=readonly"},
    )
    info = json.loads(done.stdout or "{}")
    if done.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download {module} failed: {info.get('Error') or done.stderr}")
    return Path(info["Dir"])


def crd_files(tools_dir: str) -> list[Path]:
    """The cached CRD files of `tools_dir`'s pinned module, fetching them on first use."""
    modules = UPSTREAM[tools_dir]
    target = _cache_root() / f"{tools_dir}-{pinned_version(tools_dir)}"
    paths = [target / Path(f).name for _, files in modules for f in files]
    if all(p.is_file() for p in paths):
        return paths
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{tools_dir}."))
    for module, files in modules:
        source = _module_dir(tools_dir, module)
        for relative in files:
            shutil.copyfile(source / relative, staging / Path(relative).name)
    # Rename last, so an interrupted copy never looks cached.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return paths


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(UPSTREAM):
        for path in crd_files(name):
            print(path)

"""Upstream CRDs (Cluster API, Karpenter) at the versions pinned under e2e/tools/.

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

# tools dir -> (module path, CRD files relative to the module root)
UPSTREAM: dict[str, tuple[str, tuple[str, ...]]] = {
    "cluster-api": (
        "sigs.k8s.io/cluster-api",
        (
            "core/config/crd/bases/cluster.x-k8s.io_machinedeployments.yaml",
            "core/config/crd/bases/cluster.x-k8s.io_machines.yaml",
        ),
    ),
    "karpenter": (
        "sigs.k8s.io/karpenter",
        (
            "pkg/apis/crds/karpenter.sh_nodepools.yaml",
            "pkg/apis/crds/karpenter.sh_nodeclaims.yaml",
        ),
    ),
}


def pinned_version(tools_dir: str) -> str:
    module, _ = UPSTREAM[tools_dir]
    go_mod = (repo_root() / "e2e" / "tools" / tools_dir / "go.mod").read_text()
    found = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod, re.M)
    if found is None:
        raise RuntimeError(f"e2e/tools/{tools_dir}/go.mod does not pin {module}")
    return found.group(1)


def _cache_root() -> Path:
    return Path(os.environ.get("GPUFLEET_CACHE", Path.home() / ".cache" / "gpufleet")) / "crds"


def _module_dir(tools_dir: str) -> Path:
    module, _ = UPSTREAM[tools_dir]
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
    _, files = UPSTREAM[tools_dir]
    target = _cache_root() / f"{tools_dir}-{pinned_version(tools_dir)}"
    paths = [target / Path(f).name for f in files]
    if all(p.is_file() for p in paths):
        return paths
    source = _module_dir(tools_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{tools_dir}."))
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

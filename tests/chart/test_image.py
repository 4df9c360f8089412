"""The Dockerfile's install steps, without a Docker engine: the same wheel build and virtual
environment install in a clean directory, then the entrypoint (`gpufleet run`) starts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .helm import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
# The commands the image runs, as this test runs them (a test below keeps them in sync).
WHEEL = "python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ."
INSTALL = "/opt/gpufleet/bin/pip install --no-cache-dir --disable-pip-version-check /wheels/gpufleet-*.whl"
COPIED = ("pyproject.toml", "README.md", "operator")
DEV_ONLY = ("pytest", "hypothesis", "mypy", "ruff", "moto", "boto3", "matplotlib")


def _run(*argv: str, cwd: Path | None = None, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


def test_dockerfile_is_multi_stage_non_root_with_the_run_entrypoint() -> None:
    assert len(re.findall(r"^FROM ", DOCKERFILE, flags=re.M)) == 2
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11[\w.]*-slim", DOCKERFILE, flags=re.M)
    assert "USER 65532:65532" in DOCKERFILE
    assert 'ENTRYPOINT ["gpufleet"]' in DOCKERFILE and 'CMD ["run"]' in DOCKERFILE
    assert WHEEL in DOCKERFILE and INSTALL in DOCKERFILE
    for path in COPIED:
        assert f"COPY {path}" in DOCKERFILE or f" {path} " in DOCKERFILE or path in DOCKERFILE
    ignored = (REPO / ".dockerignore").read_text()
    assert ignored.splitlines()[1] == "*"  # everything not listed stays out of the context


@pytest.mark.timeout(900)
def test_image_install_steps_give_a_working_gpufleet_run(tmp_path: Path) -> None:
    src, wheels, venv = tmp_path / "src", tmp_path / "wheels", tmp_path / "opt-gpufleet"
    for path in COPIED:
        source, target = REPO / path, src / path
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    python = sys.executable
    _run(python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), ".", cwd=src)
    (wheel,) = wheels.glob("gpufleet-*.whl")
    _run(python, "-m", "venv", str(venv))
    _run(str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", str(wheel))
    assert "Run the operator" in _run(str(venv / "bin" / "gpufleet"), "run", "--help")
    assert "simulate" in _run(str(venv / "bin" / "gpufleet"), "--help")
    # The operator's own imports resolve with the runtime dependencies alone.
    _run(str(venv / "bin" / "python"), "-c", "import gpufleet.reconcilers.handlers, kopf")
    installed = _run(str(venv / "bin" / "pip"), "list", "--format=freeze").lower()
    names = {line.split("==")[0] for line in installed.splitlines()}
    assert not names & set(DEV_ONLY), names & set(DEV_ONLY)
    # The image ships the product only: the test bed (and `make demo`) stay in the checkout.
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if "gpufleet_testbed" in n]

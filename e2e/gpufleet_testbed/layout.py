"""Where the test bed keeps its state, and where the repository is."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_NAME = "primary"


def repo_root() -> Path:
    """The checkout that holds e2e/build.sh.

    Found from this file first (the usual PYTHONPATH=e2e or editable install),
    then from the working directory (a non-editable install in a venv).
    """
    override = os.environ.get("GPUFLEET_REPO")
    if override:
        return Path(override).resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for candidate in (start, *start.parents):
            if (candidate / "e2e" / "build.sh").is_file():
                return candidate
    raise RuntimeError("cannot find the gpufleet checkout (e2e/build.sh); set GPUFLEET_REPO")


def state_root() -> Path:
    override = os.environ.get("GPUFLEET_TESTBED_DIR")
    return Path(override).resolve() if override else repo_root() / ".e2e"


def state_dir(name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid test bed name {name!r}")
    return state_root() / name

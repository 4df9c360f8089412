"""A thin kubectl runner bound to one kubeconfig."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class KubectlError(RuntimeError):
    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Kubectl:
    binary: Path
    kubeconfig: Path
    timeout: float = 60.0

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args]
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=self.timeout
        )
        if check and done.returncode != 0:
            raise KubectlError(args, done.returncode, done.stderr)
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any] | str, *extra: str) -> str:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.run(
            "apply",
            "--server-side",
            "--field-manager=gpufleet-testbed",
            "-f",
            "-",
            *extra,
            stdin=text,
        ).stdout

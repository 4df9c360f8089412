"""The operator as a process beside a test bed: `gpufleet run` with free ports and a log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from gpufleet_testbed.polling import until
from gpufleet_testbed.ports import free_ports
from gpufleet_testbed.testbed import Testbed

T = TypeVar("T")


@dataclass
class OperatorProcess:
    bed: Testbed
    log: Path
    period: float = 1.0
    extra_args: tuple[str, ...] = ()
    # Pools' queries read only their namespace's series, as a shared cluster should run it.
    confine_queries: bool = True
    env: dict[str, str] = field(default_factory=dict)
    # Its id on what it makes in remote clusters (`--installation`): two operators sharing a
    # remote test bed need two.
    installation: str = "e2e-testbed"
    # `--metrics-auth`: the test bed's scrapes carry no token, so /metrics is open unless a
    # test asks for "kubernetes" (and passes a token to `metrics`).
    metrics_auth: str = "none"
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    health_port: int = 0

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        self.metrics_port, self.health_port = free_ports(2)
        argv = [
            sys.executable,
            "-m",
            "gpufleet",
            "run",
            "--period",
            str(self.period),
            "--metrics-port",
            str(self.metrics_port),
            "--metrics-auth",
            self.metrics_auth,
            "--health-port",
            str(self.health_port),
            "--bind-address",
            "127.0.0.1",
            "--log-format",
            "json",
            "--installation",
            self.installation,
            *self.extra_args,
        ]
        if self.bed.prometheus_url:
            argv += ["--prometheus-url", self.bed.prometheus_url]
        if self.confine_queries:
            argv.append("--confine-queries")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.bed.env(), **self.env}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        until(self.healthy, timeout=timeout, what="operator /healthz")
        return self

    def healthy(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"operator exited; log: {self.log}\n{self.tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def metrics(self, token: str | None = None, names: Sequence[str] = ()) -> str:
        """The /metrics text; `token` goes as a bearer token (urllib.error.HTTPError when
        the operator refuses the scrape). `names` restricts it to those series (`name[]`),
        which costs the operator a fraction of a full scrape."""
        query = urllib.parse.urlencode([("name[]", n) for n in names])
        url = f"http://127.0.0.1:{self.metrics_port}/metrics" + (f"?{query}" if query else "")
        request = urllib.request.Request(url)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=5) as reply:
            return str(reply.read().decode())

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    *operators: OperatorProcess,
    interval: float = 0.5,
) -> T:
    """`until(probe)` for a test of the operator: on time-out the message ends with the
    tail of each operator's log."""

    def tails() -> str:
        return "\n".join(f"--- {o.log.name}\n{o.tail(30)}" for o in operators)

    return until(probe, timeout=timeout, interval=interval, what=what, details=tails)

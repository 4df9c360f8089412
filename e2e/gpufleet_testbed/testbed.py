"""Bringing one named test bed up and down.

A test bed is a control plane (etcd, API server, controller manager,
scheduler, kwok) plus the metrics side (our exporter and a Prometheus that
scrapes it), all on free loopback ports, with everything under
${GPUFLEET_TESTBED_DIR:-<repo>/.e2e}/<name>/. Several names run side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpufleet_testbed import components, kubeconfig, pki, procs
from gpufleet_testbed import prometheus as prom
from gpufleet_testbed.binaries import Binaries, locate
from gpufleet_testbed.exporter_client import ExporterClient
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.layout import DEFAULT_NAME, state_dir
from gpufleet_testbed.nodes import GpuNode, create_gpu_node
from gpufleet_testbed.polling import GiveUpError, until
from gpufleet_testbed.ports import free_ports

# Stop order: dependents before what they depend on.
COMPONENTS = (
    "kwok",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
    "prometheus",
    "exporter",
)
STATE_FILE = "state.json"


@dataclass(frozen=True)
class Testbed:
    name: str
    directory: Path
    kubeconfig: Path
    apiserver_url: str
    kubectl_binary: Path
    helm_binary: Path
    prometheus_url: str | None
    exporter_url: str | None
    # Not a test class, whatever its name says (pytest collects Test*).
    __test__ = False

    def kubectl(self, timeout: float = 60.0) -> Kubectl:
        return Kubectl(self.kubectl_binary, self.kubeconfig, timeout)

    def exporter(self) -> ExporterClient:
        if self.exporter_url is None:
            raise RuntimeError(f"test bed {self.name} runs without the metrics side")
        return ExporterClient(self.exporter_url)

    def env(self) -> dict[str, str]:
        """What a shell or the operator needs to use this test bed."""
        env = {
            "KUBECONFIG": str(self.kubeconfig),
            "GPUFLEET_TESTBED_NAME": self.name,
            "GPUFLEET_KUBECTL_BIN": str(self.kubectl_binary),
            "GPUFLEET_HELM_BIN": str(self.helm_binary),
        }
        if self.prometheus_url:
            env["GPUFLEET_PROMETHEUS_URL"] = self.prometheus_url
        if self.exporter_url:
            env["GPUFLEET_EXPORTER_URL"] = self.exporter_url
        return env

    def logs(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted((self.directory / "logs").glob("*.log"))}

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"==> {name} <==\n{procs.tail(path, lines)}" for name, path in self.logs().items()
        )

    def save(self) -> None:
        data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        (self.directory / STATE_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Testbed | None:
        try:
            data: dict[str, Any] = json.loads((directory / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return cls(
            name=str(data["name"]),
            directory=Path(data["directory"]),
            kubeconfig=Path(data["kubeconfig"]),
            apiserver_url=str(data["apiserver_url"]),
            kubectl_binary=Path(data["kubectl_binary"]),
            helm_binary=Path(data["helm_binary"]),
            prometheus_url=data.get("prometheus_url"),
            exporter_url=data.get("exporter_url"),
        )


def _log(message: str) -> None:
    print(f"[gpufleet-testbed] {message}", file=sys.stderr, flush=True)


def _alive(run_dir: Path, name: str) -> Callable[[], None]:
    def check() -> None:
        record = procs.load(run_dir, name)
        if record is None or not procs.is_running(record):
            log = record.log if record else "?"
            tail = procs.tail(record.log) if record else ""
            raise GiveUpError(f"{name} exited during start-up; log {log}:\n{tail}")

    return check


def _wait(run_dir: Path, name: str, probe: Callable[[], bool], timeout: float, *also: str) -> None:
    """Polls `probe`; gives up at once if `name` (or a process in `also`) died."""
    checks = [_alive(run_dir, component) for component in (name, *also)]

    def guarded() -> bool:
        for check in checks:
            check()
        return probe()

    started = time.monotonic()
    until(guarded, timeout=timeout, interval=0.1, what=f"{name} ready")
    _log(f"{name} ready after {time.monotonic() - started:.1f}s")


def _healthy(directory: Path) -> Testbed | None:
    """The running test bed in `directory`, if every recorded process is alive."""
    existing = Testbed.load(directory)
    run_dir = directory / "run"
    names = procs.recorded_names(run_dir)
    if existing is None or not names:
        return None
    for name in names:
        record = procs.load(run_dir, name)
        if record is None or not procs.is_running(record):
            return None
    try:
        existing.kubectl(timeout=10).run("get", "--raw", "/readyz")
    except Exception:
        return None
    return existing


def up(
    name: str = DEFAULT_NAME,
    *,
    metrics: bool = True,
    gpu_nodes: int = 1,
    gpus_per_node: int = 8,
    timeout: float = 120.0,
    build: bool = True,
) -> Testbed:
    """Starts the test bed `name`, or returns it if it already runs healthy."""
    directory = state_dir(name)
    running = _healthy(directory)
    if running is not None:
        _log(f"{name}: already running ({running.apiserver_url})")
        return running
    stale = down(name, quiet=True)
    if stale:
        _log(f"{name}: stopped stale {', '.join(stale)}")
    started = time.monotonic()
    bins = locate(build=build)
    try:
        testbed = _start_retrying(name, directory, bins, metrics=metrics, timeout=timeout)
        for i in range(gpu_nodes):
            create_gpu_node(
                testbed.kubectl(),
                GpuNode(f"{name}-gpu-{i}", gpus=gpus_per_node),
                wait_ready=timeout,
            )
    except BaseException:
        _log(f"{name}: start-up failed; stopping what started. Logs in {directory / 'logs'}")
        down(name, quiet=True)
        raise
    testbed.save()
    _log(f"{name}: up in {time.monotonic() - started:.1f}s; KUBECONFIG={testbed.kubeconfig}")
    return testbed


def _start_retrying(
    name: str, directory: Path, bins: Binaries, *, metrics: bool, timeout: float
) -> Testbed:
    # A port that was free when chosen can be taken before the component binds
    # it (another test bed starting at the same time); one fresh try fixes that.
    for attempt in (1, 2):
        if directory.exists():
            shutil.rmtree(directory)
        try:
            return _start(name, directory, bins, metrics=metrics, timeout=timeout)
        except GiveUpError as error:
            if attempt == 2 or "address already in use" not in str(error).lower():
                raise
            _log(f"{name}: a port was taken meanwhile; starting again on other ports")
            down(name, quiet=True)
    raise AssertionError("unreachable")


def _start(name: str, directory: Path, bins: Binaries, *, metrics: bool, timeout: float) -> Testbed:
    run_dir, log_dir = directory / "run", directory / "logs"
    certs = pki.generate(directory / "pki")
    *control_plane_ports, prometheus_port, exporter_port = free_ports(8)
    ports = components.Ports.from_list(control_plane_ports)
    server = f"https://127.0.0.1:{ports.apiserver}"

    def config(stem: str, client: pki.CertPair) -> Path:
        return kubeconfig.write(
            directory / f"{stem}.kubeconfig",
            server=server,
            ca=certs.ca.cert,
            client=client,
            context=f"gpufleet-{name}",
        )

    configs = components.Kubeconfigs(
        admin=config("admin", certs.admin),
        controller_manager=config("controller-manager", certs.controller_manager),
        scheduler=config("scheduler", certs.scheduler),
        kwok=config("kwok", certs.kwok),
    )
    testbed = Testbed(
        name=name,
        directory=directory,
        kubeconfig=configs.admin,
        apiserver_url=server,
        kubectl_binary=bins.kubectl,
        helm_binary=bins.helm,
        prometheus_url=f"http://127.0.0.1:{prometheus_port}" if metrics else None,
        exporter_url=f"http://127.0.0.1:{exporter_port}" if metrics else None,
    )
    # Saved early so that `down` and `status` work on a half-started test bed.
    testbed.save()

    def start(component: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        procs.start(run_dir, log_dir, component, argv, env=env)

    if metrics:
        # The metrics side needs nothing from the control plane: start it first
        # so it warms up in parallel.
        start(
            "exporter",
            [sys.executable, "-m", "gpufleet_testbed.exporter", f"--port={exporter_port}"],
            _python_env(),
        )
        config_file = prom.write_config(
            directory / "prometheus.yml", [f"127.0.0.1:{exporter_port}"]
        )
        start("prometheus", prom.argv(config_file, directory / "prometheus-data", prometheus_port))

    start("etcd", components.etcd(bins, directory / "etcd", ports, f"etcd-{name}"))
    _wait(run_dir, "etcd", lambda: components.etcd_healthy(ports), timeout)
    start("kube-apiserver", components.apiserver(bins, certs, ports, directory / "apiserver-certs"))
    _wait(run_dir, "kube-apiserver", lambda: components.apiserver_ready(certs, ports), timeout)
    start(
        "kube-controller-manager",
        components.controller_manager(
            bins, certs, ports, configs.controller_manager, directory / "kcm-certs"
        ),
    )
    start(
        "kube-scheduler",
        components.scheduler(bins, ports, configs.scheduler, directory / "scheduler-certs"),
    )
    start("kwok", components.kwok(bins, ports, configs.kwok))
    _wait(
        run_dir,
        "kube-controller-manager",
        lambda: components.secure_healthz(ports.controller_manager),
        timeout,
    )
    _wait(run_dir, "kube-scheduler", lambda: components.secure_healthz(ports.scheduler), timeout)

    kubectl = testbed.kubectl()
    # The service-account controllers run: namespaces get their default
    # ServiceAccount, so pods pass the ServiceAccount admission plugin.
    _wait(
        run_dir,
        "kube-controller-manager",
        lambda: (
            kubectl.run("get", "serviceaccount", "default", "-n", "default", check=False).returncode
            == 0
        ),
        timeout,
    )
    if metrics and testbed.prometheus_url:
        url = testbed.prometheus_url
        _wait(
            run_dir,
            "prometheus",
            lambda: prom.is_ready(url) and prom.targets_up(url),
            timeout,
            "exporter",
        )
    return testbed


def _python_env() -> dict[str, str]:
    # The exporter must import this package however the caller found it
    # (PYTHONPATH=e2e, an install, or the working directory).
    package_parent = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": f"{package_parent}{os.pathsep}{path}" if path else package_parent,
    }


def down(name: str = DEFAULT_NAME, *, quiet: bool = False) -> list[str]:
    """Stops every recorded process of `name`; returns those that were running."""
    directory = state_dir(name)
    run_dir = directory / "run"
    recorded = procs.recorded_names(run_dir)
    ordered = [c for c in COMPONENTS if c in recorded] + [
        c for c in recorded if c not in COMPONENTS
    ]
    stopped = [c for c in ordered if procs.stop(run_dir, c)]
    # Data is throwaway; logs stay for a post-mortem until the next `up`.
    for data in ("etcd", "prometheus-data"):
        shutil.rmtree(directory / data, ignore_errors=True)
    (directory / STATE_FILE).unlink(missing_ok=True)
    if not quiet:
        _log(f"{name}: stopped {', '.join(stopped) or 'nothing (not running)'}")
    return stopped


def status(name: str = DEFAULT_NAME) -> dict[str, Any]:
    directory = state_dir(name)
    run_dir = directory / "run"
    processes: dict[str, Any] = {}
    for component in procs.recorded_names(run_dir):
        record = procs.load(run_dir, component)
        processes[component] = {
            "pid": record.pid if record else None,
            "running": bool(record and procs.is_running(record)),
            "log": str(record.log) if record else None,
        }
    testbed = Testbed.load(directory)
    return {
        "name": name,
        "directory": str(directory),
        "up": bool(processes) and all(p["running"] for p in processes.values()),
        "env": testbed.env() if testbed else {},
        "processes": processes,
    }


def get(name: str = DEFAULT_NAME) -> Testbed:
    """The running test bed `name` (raises if it is not up)."""
    testbed = _healthy(state_dir(name))
    if testbed is None:
        raise RuntimeError(
            f"test bed {name!r} is not running; start it: python -m gpufleet_testbed up --name {name}"
        )
    return testbed

"""pytest fixtures for the e2e suites (tests/e2e, tests/security): one test bed per session,
torn down even on failure. Loaded by tests/conftest.py as a plugin, so any test folder can
use them.

By default the session starts its own test beds, named `pytest-<pid>` and
`pytest-<pid>-secondary` (state under ${GPUFLEET_TESTBED_DIR:-<repo>/.e2e}/),
stops them at the end and removes their state unless a test failed. Test beds
of sessions that died are stopped and removed by the next session.
GPUFLEET_E2E_USE_EXISTING=1 with KUBECONFIG set uses that cluster instead
(Prometheus and the exporter from GPUFLEET_PROMETHEUS_URL and
GPUFLEET_EXPORTER_URL, as printed by `python -m gpufleet_testbed env`; tests
that need them skip when unset). GPUFLEET_E2E_KEEP=1 leaves the test bed
running after the session, for debugging.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpufleet_testbed import procs
from gpufleet_testbed import testbed as testbeds
from gpufleet_testbed.binaries import locate
from gpufleet_testbed.kubectl import Kubectl
from gpufleet_testbed.layout import state_dir, state_root
from gpufleet_testbed.nodes import GpuNode, create_gpu_node, delete_node

# Per-session names: engineers share one checkout (and so <repo>/.e2e), and
# two sessions must never stop each other's test beds.
SESSION_PREFIX = "pytest-"
PRIMARY = f"{SESSION_PREFIX}{os.getpid()}"
SECONDARY = f"{PRIMARY}-secondary"
OWNER_FILE = "owner.pid"
EXISTING = "existing"  # name of the Testbed that wraps a borrowed cluster
REPO = Path(__file__).resolve().parents[2]

# Test beds this session started; their logs go into failure reports.
_started: dict[str, testbeds.Testbed] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: needs the local control plane and Prometheus (tests/e2e)"
    )


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for name, bed in _started.items():
            report.sections.append((f"test bed {name}: component log tails", bed.log_tails(25)))


def _existing() -> testbeds.Testbed:
    kubeconfig = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if not kubeconfig:
        pytest.exit("GPUFLEET_E2E_USE_EXISTING=1 needs KUBECONFIG", returncode=4)
    bins = locate(build=False, tools=())

    def tool(name: str, cached: Path) -> Path:
        override = os.environ.get(f"GPUFLEET_{name.upper()}_BIN")
        found = override or (str(cached) if cached.is_file() else shutil.which(name))
        if not found:
            pytest.exit(f"no {name} binary: set GPUFLEET_{name.upper()}_BIN", returncode=4)
        return Path(found)

    return testbeds.Testbed(
        name=EXISTING,
        directory=Path(kubeconfig).parent,
        kubeconfig=Path(kubeconfig),
        apiserver_url="",
        kubectl_binary=tool("kubectl", bins.kubectl),
        helm_binary=tool("helm", bins.helm),
        prometheus_url=os.environ.get("GPUFLEET_PROMETHEUS_URL"),
        exporter_url=os.environ.get("GPUFLEET_EXPORTER_URL"),
    )


def _owner_alive(directory: Path) -> bool:
    """Whether the session that started the test bed still runs. The name holds its pid
    (`pytest-<pid>[-secondary]`), which is there from the first moment; the owner file is
    written only once start-up is done, so by itself it would let a session that starts at
    the same time take a half-started test bed for an orphan and remove it."""
    pids = []
    named = directory.name.removeprefix(SESSION_PREFIX).split("-", 1)[0]
    if named.isdigit():
        pids.append(int(named))
    with contextlib.suppress(OSError, ValueError):
        pids.append(int((directory / OWNER_FILE).read_text()))
    return any(Path(f"/proc/{pid}").exists() for pid in pids)


def _reap_orphans() -> None:
    """Stops test beds left by sessions that died (SIGKILL, a CI time-out)."""
    root = state_root()
    if not root.is_dir():
        return
    for directory in sorted(root.glob(f"{SESSION_PREFIX}*")):
        if directory.is_dir() and not _owner_alive(directory):
            testbeds.down(directory.name, quiet=True)
            shutil.rmtree(directory, ignore_errors=True)


def _start(name: str, **options: Any) -> testbeds.Testbed:
    try:
        # Never build here: a cold build takes many minutes, far past the
        # per-test timeout that also covers fixture setup.
        bed = testbeds.up(name, build=False, **options)
    except FileNotFoundError as missing:
        pytest.fail(f"{missing} (make -C e2e build)", pytrace=False)
    except BaseException:
        # up() already stopped what it started; show why it failed.
        directory = state_dir(name)
        for log in sorted((directory / "logs").glob("*.log")):
            print(f"==> {log} <==\n{procs.tail(log, 40)}")
        raise
    (bed.directory / OWNER_FILE).write_text(str(os.getpid()))
    _started[name] = bed
    return bed


def _stop(name: str, session: pytest.Session) -> None:
    bed = _started.pop(name, None)
    if _truthy("GPUFLEET_E2E_KEEP"):
        return
    testbeds.down(name)
    # Logs stay after failures (for a look); the next session reaps them.
    if bed is not None and not session.testsfailed:
        shutil.rmtree(bed.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def testbed(request: pytest.FixtureRequest) -> Iterator[testbeds.Testbed]:
    """The primary cluster with kwok GPU nodes, the exporter and Prometheus."""
    if _truthy("GPUFLEET_E2E_USE_EXISTING"):
        yield _existing()
        return
    _reap_orphans()
    bed = _start(PRIMARY, gpu_nodes=0)
    try:
        yield bed
    finally:
        _stop(PRIMARY, request.session)


@pytest.fixture(scope="session")
def secondary_testbed(
    testbed: testbeds.Testbed, request: pytest.FixtureRequest
) -> Iterator[testbeds.Testbed]:
    """A second, independent control plane (the burst cloud's cluster)."""
    if _truthy("GPUFLEET_E2E_USE_EXISTING"):
        pytest.skip("a second control plane is only started by the suite itself")
    bed = _start(SECONDARY, metrics=False, gpu_nodes=1, gpus_per_node=4)
    try:
        yield bed
    finally:
        _stop(SECONDARY, request.session)


@pytest.fixture(scope="session")
def kubectl(testbed: testbeds.Testbed) -> Kubectl:
    return testbed.kubectl()


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    yield name
    # Namespace deletion finishes in the background; nothing waits on it.
    kubectl.run("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture
def gpu_node(kubectl: Kubectl) -> Iterator[Callable[..., dict[str, Any]]]:
    """Creates kwok GPU nodes for one test: gpu_node(gpus=2, labels={...})."""
    created: list[str] = []

    def make(gpus: int = 8, **options: Any) -> dict[str, Any]:
        name = f"e2e-gpu-{uuid.uuid4().hex[:8]}"
        created.append(name)
        return create_gpu_node(kubectl, GpuNode(name, gpus=gpus, **options))

    yield make
    for name in created:
        delete_node(kubectl, name)

"""Start and stop the test bed's processes by recorded pid.

Each process gets a pid file that also records its executable and kernel start
time, so a later `down` (from another Python process, after a crash) stops
exactly the processes it started and never one that reused the pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recorded:
    name: str
    pid: int
    executable: str
    start_ticks: int
    log: Path


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: start time since boot, None if gone/zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _cmdline0(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _reap(pid: int) -> None:
    # Our own children linger as zombies until waited for; others' are not ours
    # to wait for (ChildProcessError).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def start(
    run_dir: Path,
    log_dir: Path,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
) -> Recorded:
    """Starts `argv` detached, logging to <log_dir>/<name>.log, and records it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        out.write(f"--- start {time.strftime('%Y-%m-%dT%H:%M:%S')}: {' '.join(argv)}\n".encode())
        out.flush()
        # posix_spawn rather than subprocess.Popen: these processes outlive
        # this Python process, and a Popen object that is collected while its
        # child runs raises a ResourceWarning (an error under pytest's
        # warnings-as-errors). setsid: Ctrl-C in the caller's terminal must not
        # half-kill the cluster; `down` stops it deliberately.
        pid = os.posix_spawnp(
            argv[0],
            list(argv),
            dict(env) if env is not None else dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, out.fileno(), 2),
            ],
            setsid=True,
        )
    ticks = _start_ticks(pid)
    # argv[0] as given is what /proc/<pid>/cmdline shows after exec.
    executable = argv[0]
    record = Recorded(name, pid, executable, ticks or 0, log)
    pid_file(run_dir, name).write_text(
        json.dumps(
            {
                "pid": pid,
                "executable": executable,
                "start_ticks": record.start_ticks,
                "log": str(log),
            }
        )
    )
    return record


def load(run_dir: Path, name: str) -> Recorded | None:
    path = pid_file(run_dir, name)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return Recorded(
        name, int(data["pid"]), str(data["executable"]), int(data["start_ticks"]), Path(data["log"])
    )


def is_running(record: Recorded) -> bool:
    """True only if the recorded pid is still the process we started."""
    ticks = _start_ticks(record.pid)
    if ticks is None:
        _reap(record.pid)
        return False
    if record.start_ticks and ticks != record.start_ticks:
        return False
    # pid plus start time already identify the process. The command line is a
    # second check only when readable: it reads empty for a moment around
    # exec, which must not make a live process look gone (and leak it).
    cmdline = _cmdline0(record.pid)
    if not cmdline:
        return bool(record.start_ticks)
    return cmdline == record.executable


def stop(run_dir: Path, name: str, *, timeout: float = 15.0) -> bool:
    """Stops a recorded process (TERM, then KILL at the deadline).

    Returns whether a live process was stopped. The pid file goes either way.
    """
    record = load(run_dir, name)
    if record is None:
        return False
    stopped = False
    if is_running(record):
        stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_running(record) and time.monotonic() < deadline:
            time.sleep(0.05)
        if is_running(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 5.0
            while is_running(record) and time.monotonic() < kill_deadline:
                time.sleep(0.05)
    pid_file(run_dir, name).unlink(missing_ok=True)
    return stopped


def recorded_names(run_dir: Path) -> list[str]:
    if not run_dir.is_dir():
        return []
    return sorted(p.stem for p in run_dir.glob("*.pid"))


def tail(log: Path, lines: int = 40) -> str:
    try:
        with log.open("rb") as f:
            # Read a bounded window: logs of a long run can be large.
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])

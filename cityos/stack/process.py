"""Background processes of the embedded stack: spawn detached, find again by pid file, stop.

The services must outlive the ``cityos up`` that started them, so they run in their own session
with output to a log file, and are found again through a pid file. A pid alone can be reused by an
unrelated process after a reboot, so a pid only counts when that process's command line still
carries the service's marker (its config path).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from cityos.errors import StackError
from cityos.settings import java_home_from_env

log = logging.getLogger(__name__)

# Popen objects of the services this Python process started: kept so they can be reaped (no
# zombies while a test restarts a broker many times) and so Popen.__del__ does not warn.
_children: dict[int, subprocess.Popen[bytes]] = {}


def is_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) is dead and gets reaped."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)
        return False
    try:
        status = psutil.Process(pid).status()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    if status == psutil.STATUS_ZOMBIE:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def cmdline_has(pid: int, marker: str) -> bool:
    try:
        return any(marker in part for part in psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


@dataclass(frozen=True)
class PidFile:
    """A pid file whose pid counts only while the process still carries ``marker``."""

    path: Path
    marker: str

    def running_pid(self) -> int | None:
        try:
            pid = int(self.path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        if is_alive(pid) and cmdline_has(pid, self.marker):
            return pid
        return None

    def write(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{pid}\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def spawn_detached(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start ``argv`` in its own session, output appended to ``log_path``; returns its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )
    _children[child.pid] = child
    return child.pid


def terminate(pid: int, timeout_s: float, name: str) -> None:
    """SIGTERM, and SIGKILL if ``pid`` is still alive after ``timeout_s``."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if not is_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and is_alive(pid):
            time.sleep(0.2)
        if sig == signal.SIGTERM and is_alive(pid):
            log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, pid, timeout_s)
    if is_alive(pid):
        raise StackError(f"{name} (pid {pid}) survived SIGKILL")


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    log_path: Path,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Poll ``ready`` until true; a dead process or the timeout raises with the log's tail."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not alive():
            raise StackError(
                f"{what} exited during start; end of {log_path}:\n{log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{what} not ready after {timeout_s:.0f} s; "
                f"end of {log_path}:\n{log_tail(log_path)}"
            )
        time.sleep(0.5)


def find_java() -> Path:
    """The java binary: $JAVA_HOME/bin/java, else ``java`` on PATH; a clear error otherwise."""
    java_home = java_home_from_env()
    if java_home is not None:
        candidate = java_home / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        raise StackError(f"JAVA_HOME={java_home} has no bin/java; fix JAVA_HOME or unset it")
    found = shutil.which("java")
    if found is None:
        raise StackError(
            "Java (17 or newer) not found: set JAVA_HOME or put `java` on PATH "
            "(Debian: apt-get install -y openjdk-17-jre-headless)"
        )
    return Path(found)

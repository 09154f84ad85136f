"""Starting and stopping the processes of a deployment, leaving nothing behind.

Every process is started in its own session (so a terminal's Ctrl-C reaches only ``fedwon``,
which then stops them in order), with its output in a log file and an environment marker
(``FEDWON_DEPLOY_ID=<id>``) that its children inherit. Stopping signals each process group, waits,
and kills what is left — found by the marker, which also catches the processes Flower detaches
into sessions of their own (the SuperLink's SuperExec and the ServerApp it starts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from fedwon.deploy.diagnose import strip_ansi

log = logging.getLogger(__name__)

MARKER = "FEDWON_DEPLOY_ID"


@dataclass
class Process:
    """A started process, its log file, and whether its exit is expected (a stopped node)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    argv: Sequence[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def exit_code(self) -> int | None:
        """None while it runs; negative ``-signal`` when a signal ended it (as ``subprocess``)."""
        return self.popen.poll()

    def log_text(self) -> str:
        """The log so far, without the colour codes Flower's logger writes (see ``clean_log``)."""
        try:
            return strip_ansi(self.log.read_text(errors="replace"))
        except OSError:
            return ""


def clean_log(path: Path) -> None:
    """Rewrite a finished process's log without ANSI colour codes. Flower's console handler
    colours every level name and has no switch for it (flwr 1.39 reads no environment variable
    for it), and its processes write straight into the file; so the codes are removed once
    they have stopped, leaving logs that read in an editor, ``less`` and a bug report."""
    try:
        text = path.read_text(errors="replace")
        if (cleaned := strip_ansi(text)) != text:
            path.write_text(cleaned)
    except OSError as err:
        log.debug("could not clean %s: %s", path, err)


def marked_pids(deploy_id: str) -> list[int]:
    """Live processes (not zombies) whose environment carries this deployment's marker."""
    entry = f"{MARKER}={deploy_id}".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if entry in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return [p for p in pids if p != os.getpid()]


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _signal_group(process: Process, sig: signal.Signals) -> None:
    """Signal the process's group, only while its leader is unreaped: afterwards the group id
    could name someone else's group (its descendants are found by the marker instead)."""
    if process.popen.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)


class ProcessSet:
    """The processes of one deployment; a context manager that always stops them all."""

    def __init__(self, env: Mapping[str, str] | None = None, grace: float = 5.0) -> None:
        self.id = uuid.uuid4().hex
        self.env = {**(os.environ if env is None else env), MARKER: self.id}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.grace = grace
        self.processes: list[Process] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Process:
        """Start ``argv`` in a new session, its stdout and stderr appended to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        process = Process(name, popen, log_path, list(argv))
        self.processes.append(process)
        log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
        return process

    def run(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        timeout: float,
        *,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Run a short command to completion (killed after ``timeout``); its exit code."""
        process = self.start(name, argv, log_path, env=env)
        try:
            return process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop_one(process)
            return -int(signal.SIGKILL)

    def stop_one(self, process: Process) -> None:
        """Stop one process group now (SIGTERM, then SIGKILL after the grace period)."""
        _signal_group(process, signal.SIGTERM)
        try:
            process.popen.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.popen.wait()

    def stop(self) -> None:
        """Stop every process this set started and all their descendants.

        SIGTERM first (Flower's processes deregister and close their ports), SIGKILL for
        whatever is still alive after the grace period.
        """
        for process in self.processes:
            _signal_group(process, signal.SIGTERM)
        for pid in marked_pids(self.id):
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            if all(p.exit_code is not None for p in self.processes) and not marked_pids(self.id):
                break
            time.sleep(0.1)
        for process in self.processes:
            _signal_group(process, signal.SIGKILL)
        for pid in marked_pids(self.id):
            _signal(pid, signal.SIGKILL)
        for process in self.processes:
            process.popen.wait()
        deadline = time.monotonic() + self.grace
        while marked_pids(self.id) and time.monotonic() < deadline:
            time.sleep(0.05)  # SIGKILLed orphans vanish once init reaps them
        left = marked_pids(self.id)
        if left:
            log.warning("processes %s of deployment %s survived SIGKILL", left, self.id)
        for path in dict.fromkeys(p.log for p in self.processes):
            clean_log(path)

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""Processes a run starts end with it, even when the run is killed.

A process that starts Ray (``ray.init``, either engine) owns a dozen helper processes.
``ray.shutdown`` stops most of them, but Flower's actors (~0.5 GB each) outlive it by about a
minute; after SIGKILL (or ``flwr stop`` killing the process that runs the simulation) Ray's
``DashboardAgent`` and ``RuntimeEnvAgent`` (~200 MB) linger as long, and some of them ignore
SIGTERM. SIGTERM itself is turned into a clean exit by the CLI.

:func:`ending_started_processes` ends, at the end of a run, what the run started.
:func:`start_guard` starts a small watcher process once per process. It keeps a list of the
process's descendants (by pid and start time, so a reused pid is never mistaken for one) and,
when the process is gone, terminates whatever of that list is still alive: SIGTERM, then
SIGKILL. Only descendants of
the guarded process are ever signalled. Linux only (it reads ``/proc``); elsewhere a no-op.

Run as ``python -m fedwon.run.process_guard PID``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SCAN_INTERVAL_S = 1.0  # how often the list of descendants is refreshed
GRACE_S = 1.0  # after the guarded process ended: time for a clean shutdown to finish
TERM_WAIT_S = 3.0  # SIGTERM → SIGKILL

_ON_LINUX = sys.platform.startswith("linux")
_guard: subprocess.Popen[bytes] | None = None


def _stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time)`` of a process, ``None`` if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the name (field 2) may contain spaces
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """``{pid: start time}`` of every living descendant of ``root``."""
    children: dict[int, list[int]] = {}
    start: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _stat(int(entry.name))
            if info is not None:
                children.setdefault(info[0], []).append(int(entry.name))
                start[int(entry.name)] = info[1]
    found: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found and pid in start:
            found[pid] = start[pid]
            todo.extend(children.get(pid, []))
    return found


def _alive(processes: dict[int, int]) -> dict[int, int]:
    """Those of ``processes`` still running (same pid and start time, not a zombie)."""
    living = {}
    for pid, started in processes.items():
        info = _stat(pid)
        if info is not None and info[1] == started and not _is_zombie(pid):
            living[pid] = started
    return living


def _is_zombie(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return raw[raw.rindex(")") + 2] == "Z"


def terminate(processes: dict[int, int], wait_s: float = TERM_WAIT_S) -> None:
    """SIGTERM each living process of ``processes``, SIGKILL those still alive after ``wait_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _alive(processes):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while _alive(processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(processes):
            return


def watch(pid: int) -> None:
    """The guard's loop: track ``pid``'s descendants while it runs, then end those still alive.

    ``pid`` is polled (by pid *and* start time) rather than waited on through a pipe: a
    forked child would inherit the pipe and delay the end-of-file for as long as it lives.
    """
    me = os.getpid()
    guarded = _stat(pid)
    known: dict[int, int] = {}
    while guarded is not None and _stat(pid) == guarded and not _is_zombie(pid):
        current = descendants(pid)
        current.pop(me, None)
        known = _alive(known) | current
        time.sleep(SCAN_INTERVAL_S)
    time.sleep(GRACE_S)
    # processes started after the last scan by ones we know of (e.g. an agent's workers)
    for parent in list(_alive(known)):
        known |= descendants(parent)
    known.pop(me, None)
    terminate(known)


@contextmanager
def ending_started_processes(stop: Callable[[], None]) -> Iterator[None]:
    """Processes started inside the block end with it: on leaving, ``stop()`` runs (e.g.
    ``ray.shutdown``), then whatever the block started that is still alive is terminated.

    Needed even after a clean ``ray.shutdown``: Flower's engine leaves its actor processes
    (~0.5 GB each) running for about a minute after it, and the agents linger after a kill.
    Processes running before the block, and the guard, are left alone.
    """
    before = set(descendants(os.getpid())) if _ON_LINUX else set()
    try:
        yield
    finally:
        started: dict[int, int] = {}
        if _ON_LINUX:
            started = {p: s for p, s in descendants(os.getpid()).items() if p not in before}
            if _guard is not None:
                started.pop(_guard.pid, None)
        stop()
        terminate(started)


def start_guard() -> None:
    """Start the watcher for this process (once; later calls do nothing)."""
    global _guard
    if _guard is not None or not _ON_LINUX:
        return
    _guard = subprocess.Popen(
        [sys.executable, "-m", "fedwon.run.process_guard", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or kill to this process group must not stop it
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]))

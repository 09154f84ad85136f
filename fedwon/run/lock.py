"""One writer per directory: an OS lock held for as long as a run, a deployment or a study writes.

Two fedwon processes writing one run directory interleave its ``metrics.jsonl`` and overwrite
each other's checkpoints, and both exit 0. So every writer first takes ``fcntl.flock`` on
:data:`LOCK_FILE` inside the directory and holds the open file until it is done.
The kernel releases the lock when the holder's process ends however it ends (an exception, Ctrl-C,
SIGKILL, a crash), so a lock never outlives its writer and nothing has to be cleaned up by hand.
The holder writes its PID into the file; that is only to name it in the refusal, which is one
line (a :class:`~fedwon.config.ConfigError`, exit status 2).

The lock file is removed when the lock is released; a taker that opened the file just before
it was removed sees that the path no longer names the file it locked, and tries again. A run
directory takes its lock through :meth:`fedwon.run.directory.RunDir.lock`, which checks it first.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from fedwon.config import ConfigError

__all__ = ["LOCK_FILE", "holder_pid", "lock_dir"]

LOCK_FILE = ".fedwon.lock"
"""The lock of the process writing the directory: never part of a run, never deleted by
``--overwrite`` (its holder is the overwriting run itself), and a directory holding only it counts
as empty (a run killed outright can leave it behind)."""

_ATTEMPTS = 5  # a free lock whose file keeps being removed under us is contention, not a bug


def holder_pid(directory: Path) -> int | None:
    """The PID written by the process that holds (or last held) ``directory``'s lock."""
    try:
        text = (directory / LOCK_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _acquire(path: Path, what: str) -> int:
    """Open and lock ``path`` without waiting; the locked file descriptor."""
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(f"cannot lock {what} {path.parent}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = holder_pid(path.parent)
            holder = f"PID {pid}" if pid is not None else "a process that is just starting"
            raise ConfigError(
                f"{what} {path.parent} is in use by another fedwon process ({holder}): "
                "one writer at a time; wait for it to end or stop it"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed the file between our open and our lock
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise ConfigError(f"cannot lock {what} {path.parent}: its lock file keeps changing")


@contextmanager
def lock_dir(directory: Path, what: str = "directory") -> Iterator[None]:
    """Hold ``directory``'s lock (creating the directory) while the block runs.

    ``what`` names the directory in the refusal ("run directory", "study cache", ...). The
    directories it had to create are removed again if they are still empty when the lock is
    released, so a run refused by a later check leaves nothing behind.
    """
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create {what} {directory}: {err.strerror or err}") from None
    path = directory / LOCK_FILE
    fd = _acquire(path, what)
    try:
        yield
    finally:
        # before closing: nobody else can hold it yet (a file left behind locks nothing)
        with suppress(OSError):
            path.unlink(missing_ok=True)
        os.close(fd)
        for made in created:  # innermost first; stop at the first one holding anything
            try:
                made.rmdir()
            except FileNotFoundError:
                continue  # already removed (a run that failed before its first round)
            except OSError:
                break

"""Whether a directory may receive a run: a new run, a replaced one (``--overwrite``), and where
a relative ``out`` points.

A run directory is never silently mixed with another run: a new run goes into a directory that
does not exist yet or is empty (one the user just created). A directory holding anything else
is refused unless the run is resumed (see :func:`fedwon.results.check_resumable`) or
``--overwrite`` is given, and ``--overwrite`` only deletes what a fedwon run writes
(:data:`RUN_FILES`): a directory holding other files is refused even then, so a mistyped
``--out ~`` cannot wipe anything. All checks only read; :func:`prepare_run_dir` writes, after
every other check of the run has passed, and :func:`discard_unstarted_run` undoes it when the
run fails before its first round.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fedwon.config import ConfigError

RUN_FILES = frozenset(
    {
        "config.toml",
        "metrics.jsonl",
        "metrics.jsonl.part",
        "config.toml.part",
        "summary.json",
        "per_domain.csv",
        "accuracy.png",
        "checkpoint",
        "checkpoint.tmp",
        "checkpoint.old",
    }
)
"""What a fedwon run writes into its directory (all that ``--overwrite`` may delete)."""
LOCK_FILE = ".fedwon.lock"
"""The lock of the process writing the directory (:mod:`fedwon.run_lock`): never part of a run,
never deleted by ``--overwrite`` (its holder is the overwriting run itself), and a directory
holding only it counts as empty (a run killed outright can leave it behind)."""
LAUNCHER_ENTRIES = frozenset({"logs", "deploy"})
"""What ``fedwon deploy local`` puts into the run directory before its ServerApp starts (process
logs, certificates, node configs): a new run may find them, and nothing here ever deletes them."""

_OPTIONS = "resume it (--resume), replace it (--overwrite) or choose another directory"


def resolve_out(out: str, base: Path | None) -> Path | None:
    """The run directory named by a run config's ``out`` (empty: none).

    A relative path is taken relative to ``base``. Under ``flwr run`` there is no meaningful
    base (the ServerApp runs in the SuperLink's working directory, not the user's), so the
    ServerApp passes ``base=None`` and a relative ``out`` is refused rather than written to a
    directory the user would never look in.
    """
    if not out:
        return None
    path = Path(out).expanduser()
    if path.is_absolute():
        return path
    if base is None:
        raise ConfigError(
            f"out={out!r} is a relative path, but this ServerApp runs in the SuperLink's "
            f'working directory, not yours; give an absolute path (e.g. out="$PWD/{out}")'
        )
    return base / path


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_new_run_dir(path: Path, *, overwrite: bool = False) -> None:
    """Refuse (one line naming the path) a directory a new run may not write to.

    Fine: a path that does not exist yet (it is created, parents too) and an empty directory.
    Refused: a file, a path under a file, a place this user cannot write, and a non-empty
    directory — with ``overwrite``, only if it holds something a fedwon run did not write.
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run directory {path} is a file, not a directory")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise ConfigError(f"run directory {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "it" if existing == path else str(existing)
        raise ConfigError(f"run directory {path} is not writable: no permission to write {what}")
    if existing != path:
        return
    ignored = LAUNCHER_ENTRIES | {LOCK_FILE}
    entries = sorted(p.name for p in path.iterdir() if p.name not in ignored)
    if not entries:
        return
    if not overwrite:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ConfigError(f"run directory {path} is not empty (it holds {shown}): {_OPTIONS}")
    foreign = [name for name in entries if name not in RUN_FILES]
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise ConfigError(
            f"refusing to overwrite {path}: it holds files a fedwon run does not write "
            f"({shown}); move them away or choose another directory"
        )


def prepare_run_dir(path: Path, *, overwrite: bool = False) -> None:
    """Create ``path`` (after :func:`check_new_run_dir`); with ``overwrite`` first delete the
    previous run's files, so none of them (old metrics, old clients' local layers) leaks into
    the new run."""
    try:
        if overwrite and path.is_dir():
            for name in RUN_FILES:
                entry = path / name
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry.exists() or entry.is_symlink():
                    entry.unlink()
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot prepare run directory {path}: {err.strerror or err}") from None


def discard_unstarted_run(path: Path, *, created: bool) -> None:
    """After a new run failed before recording its first round: delete what it wrote (e.g.
    clients' local layers) and the directory if the run created it, so the same command can
    simply be run again. A run that recorded a round is kept, to inspect or resume."""
    if (path / "metrics.jsonl").exists() or not path.is_dir():
        return
    prepare_run_dir(path, overwrite=True)
    if created and all(p.name == LOCK_FILE for p in path.iterdir()):
        (path / LOCK_FILE).unlink(missing_ok=True)  # the caller's lock: released right after
        path.rmdir()

"""One run directory: what it holds, how far its run got, and whether a run may write there.

Layout (the contract the README documents for users)::

    DIR/config.toml        fully resolved config
    DIR/metrics.jsonl      one JSON object per round: round, train_loss, accuracy, accuracy/<domain>
    DIR/summary.json       {"strategy", "final": {"accuracy", "per_domain"}, ...}; written last
    DIR/per_domain.csv     final accuracy per domain
    DIR/accuracy.png       accuracy per round, overall and per domain
    DIR/checkpoint/        what --resume continues from (:mod:`fedwon.run.checkpoint`)
    DIR/tensorboard/       TensorBoard event files (``track`` names tensorboard)
    DIR/wandb/             W&B's offline runs (``track`` names wandb)
    DIR/trackers.json      tracker run ids a resume continues (:mod:`fedwon.run.trackers`)

:class:`RunDir` is the one reader of these files: its :meth:`~RunDir.status` (new, unfinished,
finished, or stopped at its privacy budget), its summary, metrics, config and checkpoint round,
and the one answer to "is this run cached, resumable or new?" (:meth:`~RunDir.reuse`). The
writer is :class:`fedwon.run.recorder.RunRecorder`, through the paths named here.

A run directory is never silently mixed with another run: a new run goes into a directory that
does not exist yet or is empty (one the user just created). A directory holding anything else
is refused unless the run is resumed (:meth:`RunDir.check_resumable`) or ``--overwrite`` is
given, and ``--overwrite`` only deletes what a fedwon run writes (:data:`RUN_FILES`): a
directory holding other files is refused even then, so a mistyped ``--out ~`` cannot wipe
anything. All checks only read; :meth:`RunDir.prepare` writes, after every other check of the
run has passed, and :meth:`RunDir.discard_unstarted` undoes it when the run fails before its
first round. One process writes a run directory at a time (:meth:`RunDir.lock`).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedwon.common.errors import error_line
from fedwon.config import (
    RESUMABLE_KEYS,
    ConfigError,
    RunConfig,
    make_config,
    read_recipe,
    resume_conflicts,
)
from fedwon.run.checkpoint import CHECKPOINT, checkpoint_round
from fedwon.run.lock import LOCK_FILE, lock_dir

__all__ = [
    "CONFIG_FILE",
    "LAUNCHER_ENTRIES",
    "LOCK_FILE",
    "METRICS_FILE",
    "RUN_FILES",
    "SUMMARY_FILE",
    "TENSORBOARD_DIR",
    "TRACKERS_FILE",
    "WANDB_DIR",
    "Reuse",
    "Row",
    "RunDir",
    "RunStatus",
    "RunView",
    "lock_run_dir",
    "resolve_out",
]

log = logging.getLogger(__name__)

Row = dict[str, Any]
"""One round's metrics: a line of ``metrics.jsonl``."""

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PER_DOMAIN_FILE = "per_domain.csv"
PLOT_FILE = "accuracy.png"
TRACKERS_FILE = "trackers.json"  # the MLflow and W&B run ids a resume appends to
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
RUN_FILES = frozenset(
    {
        CONFIG_FILE,
        METRICS_FILE,
        f"{METRICS_FILE}.part",
        f"{CONFIG_FILE}.part",
        SUMMARY_FILE,
        PER_DOMAIN_FILE,
        PLOT_FILE,
        CHECKPOINT,
        f"{CHECKPOINT}.tmp",
        f"{CHECKPOINT}.old",
        TRACKERS_FILE,
        f"{TRACKERS_FILE}.part",
        TENSORBOARD_DIR,
        WANDB_DIR,
    }
)
"""What a fedwon run writes into its directory (all that ``--overwrite`` may delete)."""
LAUNCHER_ENTRIES = frozenset({"logs", "deploy"})
"""What ``fedwon deploy local`` puts into the run directory before its ServerApp starts (process
logs, certificates, node configs): a new run may find them, and nothing here ever deletes them."""

_OPTIONS = "resume it (--resume), replace it (--overwrite) or choose another directory"

Reuse = Literal["cached", "resume", "new"]
"""What to do with a directory to get the finished run of a config (:meth:`RunDir.reuse`)."""


class RunStatus(enum.Enum):
    """How far the run in a directory got."""

    NEW = "new"  # nothing recorded yet (no directory, or no metrics.jsonl)
    UNFINISHED = "unfinished"  # rounds missing, or the summary missing or unreadable
    FINISHED = "finished"  # every round recorded and a readable summary
    BUDGET_STOPPED = "budget-stopped"  # a DP run that stopped at its privacy budget, as planned


@dataclass(frozen=True)
class RunView:
    """What a run directory held when it was read, once: rows, summary and configured rounds."""

    rows: list[Row]
    summary: dict[str, Any] | None  # None: none, or unreadable (``summary_unreadable``)
    summary_unreadable: bool
    num_rounds: int | None  # None: no readable config

    @property
    def last_round(self) -> int:
        return max((int(r["round"]) for r in self.rows), default=0)

    @property
    def status(self) -> RunStatus:
        if self.summary is not None and (self.summary.get("privacy") or {}).get(
            "stopped_by_budget"
        ):
            return RunStatus.BUDGET_STOPPED
        if self.summary is None or self.num_rounds is None or self.last_round < self.num_rounds:
            return RunStatus.UNFINISHED
        return RunStatus.FINISHED

    def note(self) -> str:
        """How the run ended, as a table shows it: ``""`` when it finished, else why it did
        not (a DP run stopped by its budget ended as planned, short of ``num_rounds``)."""
        total = self.num_rounds or "?"
        status = self.status
        if status is RunStatus.FINISHED:
            return ""
        if self.summary_unreadable:
            return f"unfinished: round {self.last_round} of {total}, {SUMMARY_FILE} unreadable"
        if status is RunStatus.BUDGET_STOPPED:
            return f"stopped at the privacy budget after round {self.last_round} of {total}"
        return f"unfinished: round {self.last_round} of {total}"


class RunDir:
    """The run directory at ``path`` (which may not exist yet)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY_FILE

    # ---- reading -----------------------------------------------------------------------------

    def config(self) -> RunConfig:
        """The resolved config the run was written with."""
        if not self.config_file.is_file():
            raise ConfigError(f"{self.path} holds no {CONFIG_FILE}: is it a fedwon run directory?")
        return make_config(read_recipe(self.config_file))

    def metrics(self) -> list[Row]:
        """The rows of ``metrics.jsonl``.

        A killed run can leave its last line half-written: that line is skipped with a warning.
        Any other line that is not a JSON object is an error naming the file and line.
        """
        path = self.metrics_file
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {self.path} a fedwon run directory?")
        lines = path.read_text().splitlines()
        rows: list[Row] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if number == len(lines):
                    log.warning("%s: skipped its incomplete last line (the run was stopped)", path)
                    break
                raise ConfigError(f"{path} line {number} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("round"), int):
                raise ConfigError(f"{path} line {number} is not a metrics row (no integer 'round')")
            rows.append(row)
        return rows

    def summary(self) -> dict[str, Any] | None:
        """``summary.json``; ``None`` when there is none or it cannot be read.

        A run writes its summary last, so a truncated or invalid one (a disk that filled up, a
        copy interrupted) is a run that has not finished: said in one warning naming the file,
        never as a parser's traceback.
        """
        path = self.summary_file
        if not path.is_file():
            return None
        try:
            summary = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            log.warning(
                "%s cannot be read (%s): the run counts as not finished", path, error_line(err)
            )
            return None
        if not isinstance(summary, dict):
            log.warning("%s is not a JSON object: the run counts as not finished", path)
            return None
        return summary

    def num_rounds(self) -> int | None:
        """The rounds the run was configured for (``None``: no readable config)."""
        try:
            return self.config().server.num_rounds
        except ConfigError:
            return None

    def read(self) -> RunView:
        """Rows, summary and configured rounds, each file read once (rows: see :meth:`metrics`)."""
        rows = self.metrics()
        summary = self.summary()
        unreadable = summary is None and self.summary_file.exists()
        return RunView(rows, summary, unreadable, self.num_rounds())

    def status(self) -> RunStatus:
        """New (nothing recorded), unfinished, finished, or stopped at its privacy budget."""
        if not self.metrics_file.is_file():
            return RunStatus.NEW
        return self.read().status

    def checkpoint_round(self) -> int | None:
        """The round of the run's checkpoint (``None`` without one); a damaged one is a
        one-line :class:`ConfigError` naming the file."""
        return checkpoint_round(self.path)

    def reuse(self, cfg: RunConfig) -> Reuse:
        """The one answer to "is the run of ``cfg`` here cached, resumable or new?".

        ``"cached"``: the directory holds the finished run of ``cfg`` (same config, same rounds;
        a DP run stopped at its privacy budget counts as finished); ``"resume"``: a run ``cfg``
        may continue (no key that decides what is trained changed) with a checkpoint at or
        before ``cfg.server.num_rounds``; ``"new"``: anything else (nothing, another config, a
        run that never reached a checkpoint) -- the caller starts afresh, replacing what is there. A
        damaged config or checkpoint raises :class:`ConfigError` naming the file.
        """
        if not self.config_file.is_file():
            return "new"
        stored = self.config()
        if resume_conflicts(stored, cfg):
            return "new"
        finished = self.status() in (RunStatus.FINISHED, RunStatus.BUDGET_STOPPED)
        if finished and stored.server.num_rounds == cfg.server.num_rounds:
            return "cached"
        done = self.checkpoint_round()
        return "resume" if done is not None and done <= cfg.server.num_rounds else "new"

    # ---- checks before a run writes ----------------------------------------------------------

    def check_resumable(self, cfg: RunConfig) -> int:
        """Refuse, before anything is written, a resume that cannot continue the run here with
        ``cfg``; return the checkpoint's round.

        Refused: a directory without config or checkpoint, any change of a key that decides what
        is trained or who holds which data (see :func:`fedwon.config.resume_conflicts`), and a
        ``num_rounds`` below the checkpoint's round.
        """
        conflicts = resume_conflicts(self.config(), cfg)
        if conflicts:
            raise ConfigError(
                f"cannot resume {self.path}: {', '.join(conflicts)} would change what is trained "
                f"or who holds which data; only {', '.join(sorted(RESUMABLE_KEYS))} may change"
            )
        done = self.checkpoint_round()
        if done is None:
            raise ConfigError(
                f"cannot resume {self.path}: it holds no checkpoint (the run stopped before its "
                "first one); start it again with --overwrite"
            )
        if done > cfg.server.num_rounds:
            raise ConfigError(
                f"cannot resume {self.path}: its checkpoint is at round {done}, beyond "
                f"num_rounds={cfg.server.num_rounds}; give num_rounds >= {done}"
            )
        return done

    def check_new(self, *, overwrite: bool = False) -> None:
        """Refuse (one line naming the path) a directory a new run may not write to.

        Fine: a path that does not exist yet (it is created, parents too) and an empty directory.
        Refused: a file, a path under a file, a place this user cannot write, and a non-empty
        directory — with ``overwrite``, only if it holds something a fedwon run did not write.
        """
        path = self.path
        if path.exists() and not path.is_dir():
            raise ConfigError(f"run directory {path} is a file, not a directory")
        existing = _nearest_existing(path)
        if not existing.is_dir():
            raise ConfigError(f"run directory {path} cannot be created: {existing} is a file")
        if not os.access(existing, os.W_OK | os.X_OK):
            what = "it" if existing == path else str(existing)
            raise ConfigError(
                f"run directory {path} is not writable: no permission to write {what}"
            )
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

    # ---- writing -----------------------------------------------------------------------------

    def prepare(self, *, overwrite: bool = False) -> None:
        """Create the directory (after :meth:`check_new`); with ``overwrite`` first delete the
        previous run's files, so none of them (old metrics, old clients' local layers) leaks
        into the new run."""
        path = self.path
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
            raise ConfigError(
                f"cannot prepare run directory {path}: {err.strerror or err}"
            ) from None

    def discard_unstarted(self, *, created: bool) -> None:
        """After a new run failed before recording its first round: delete what it wrote (e.g.
        clients' local layers) and the directory if the run created it, so the same command can
        simply be run again. A run that recorded a round is kept, to inspect or resume."""
        path = self.path
        if self.metrics_file.exists() or not path.is_dir():
            return
        self.prepare(overwrite=True)
        if created and all(p.name == LOCK_FILE for p in path.iterdir()):
            (path / LOCK_FILE).unlink(missing_ok=True)  # the caller's lock: released right after
            path.rmdir()

    @contextmanager
    def lock(self, *, resume: bool = False, overwrite: bool = False) -> Iterator[None]:
        """Hold the directory's lock (:mod:`fedwon.run.lock`) while a run writes it.

        A new run's directory is first checked as :meth:`check_new` does, so a file or an
        unwritable place is refused as such, not created for the lock; a resumed run's directory
        must exist (the lock never creates an empty one to resume).
        """
        if resume and not self.path.is_dir():
            raise ConfigError(f"cannot resume {self.path}: no such directory")
        if not resume:
            self.check_new(overwrite=overwrite)
        with lock_dir(self.path, "run directory"):
            yield


@contextmanager
def lock_run_dir(
    run_dir: Path | None, *, resume: bool = False, overwrite: bool = False
) -> Iterator[None]:
    """:meth:`RunDir.lock` of ``run_dir``, or nothing when a run writes no directory (``None``)."""
    if run_dir is None:
        yield
        return
    with RunDir(run_dir).lock(resume=resume, overwrite=overwrite):
        yield


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

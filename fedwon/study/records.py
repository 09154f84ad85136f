"""The study's committed records: one small folder per run under ``docs/study/``.

Each run the study trains leaves its record in ``RECORDS/<part>/<run name>-<digest>/`` — the
run key (:func:`fedwon.study.runs.run_key`; the digest hashes the resolved config minus
``num_rounds``, where it ran and the keys at their defaults, so one key follows a run as halving
resumes it, and a key added to fedwon later does not rename the records):

    config.toml    the resolved config, at the rounds the run has reached
    metrics.jsonl  its rows up to there (test accuracy per evaluated round, per-round seconds)
    summary.json   its summary
    study.json     what the study adds: validation accuracy at each stop (halving rungs, the
                   start of the last 20%), held-out-domain and averaged-norm-layer accuracy,
                   the commit that trained it, seconds spent evaluating, and a failure if the
                   run diverged

No checkpoint: a record is a few kilobytes, committed with the report, and the report is a pure
function of the records. A record *answers* a request — "this run's config at ``R`` rounds,
validated at ``R``" — when its config matches (every key but ``num_rounds`` and those that only
say where it ran) and it holds what was asked; then nothing is trained. A record short of the
rounds asked for is continued from the cache's checkpoint, or, when the cache has none (a fresh
clone), trained again from the start (the study says so).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedwon.common.errors import error_line
from fedwon.config import MACHINE_KEYS, RunConfig, make_config, read_recipe
from fedwon.run.directory import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, Row, RunDir

log = logging.getLogger(__name__)

__all__ = [
    "MACHINE_KEYS",
    "STUDY_FILE",
    "MissingRecord",
    "Record",
    "RecordStore",
    "comparable",
    "key_values",
]

STUDY_FILE = "study.json"
RECORD_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)


def comparable(cfg: RunConfig) -> dict[str, Any]:
    """``cfg``'s keys that decide a run and its record: all but ``num_rounds`` and the
    :data:`~fedwon.config.MACHINE_KEYS` (the other resumable keys, ``eval_every``, ..., count:
    they change what the record holds)."""
    flat = cfg.to_flat()
    return {k: v for k, v in flat.items() if k not in MACHINE_KEYS and k != "num_rounds"}


def key_values(cfg: RunConfig) -> dict[str, Any]:
    """What a run key's digest hashes: :func:`comparable` without the keys at their defaults.

    A key added to fedwon later, with a default that keeps what runs computed before, must not
    rename every committed record (they would all be trained again); a record whose config
    differs from the asked one in any key, new ones included, still does not answer
    (:meth:`Record.matches` compares the whole configs, defaults filled in)."""
    defaults = RunConfig().to_flat()
    return {k: v for k, v in comparable(cfg).items() if k not in defaults or defaults[k] != v}


@dataclass
class Record:
    """One run's record as read back: config, rows, summary and the study's additions."""

    path: Path
    cfg: RunConfig
    rows: list[Row]
    summary: dict[str, Any] | None
    info: dict[str, Any]

    @property
    def rounds(self) -> int:
        """The rounds the record's run finished (0: it failed before its first stop)."""
        return int(self.info.get("rounds", 0))

    @property
    def val(self) -> dict[int, dict[str, Any]]:
        """Validation accuracy at each stop: ``{rounds: {"accuracy", "per_domain", ...}}``."""
        return {int(r): v for r, v in (self.info.get("val") or {}).items()}

    @property
    def failed(self) -> dict[str, Any] | None:
        """``{"rounds": R, "error": ...}`` when the run diverged on its way to ``R`` rounds."""
        return self.info.get("failed")

    def matches(self, cfg: RunConfig) -> bool:
        return comparable(self.cfg) == comparable(cfg)

    def answers(self, rounds: int, extras: tuple[str, ...] = ()) -> bool:
        """Holds the run validated at ``rounds`` (and the ``extras`` asked of a final stop), or
        its divergence on the way there."""
        if rounds in self.val and self.rounds >= rounds and all(e in self.info for e in extras):
            return True
        return bool(self.failed and self.failed["rounds"] <= rounds)


class MissingRecord(FileNotFoundError):
    """A run the study needs has no record that answers it, and the store may not train."""


class RecordStore:
    """The records under ``root`` (``docs/study`` for the full study); ``train=False``: the
    records must answer every run (``fedwon study --records-only``), so a report rebuilt from
    them is checked to be theirs alone instead of quietly training what is missing."""

    def __init__(self, root: str | Path, *, train: bool = True) -> None:
        self.root = Path(root)
        self.train = train

    def __repr__(self) -> str:
        return f"RecordStore({str(self.root)!r}, train={self.train})"

    def missing(self, key: str, rounds: int, record: Record | None) -> MissingRecord:
        """The one-line error for ``key``'s run at ``rounds`` that no record answers."""
        if record is None:
            why = "there is no record"
        elif record.rounds < rounds:
            why = f"its record reaches round {record.rounds}"
        else:
            why = "its record lacks that round's evaluation"
        return MissingRecord(
            f"--records-only: run {key} is needed at round {rounds}, but {why} under "
            f"{self.root}; run the study without --records-only to train it"
        )

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> Record | None:
        """The record of ``key``; ``None`` when there is none or it cannot be read (one warning
        naming it: the run is then trained again and the record rewritten)."""
        path = self.path(key)
        if not (path / STUDY_FILE).is_file():
            return None
        try:
            info = json.loads((path / STUDY_FILE).read_text())
            cfg = make_config(read_recipe(path / CONFIG_FILE))
            rows = RunDir(path).metrics() if (path / METRICS_FILE).is_file() else []
        except Exception as err:  # a damaged record is one warning, never a crash
            log.warning("record %s cannot be read (%s): it is rebuilt", path, error_line(err))
            return None
        summary = RunDir(path).summary()
        return Record(path, cfg, rows, summary, info)

    def save(self, key: str, info: dict[str, Any], files: Path | None, cfg: RunConfig) -> Record:
        """Write ``key``'s record: ``info`` and the run's files from ``files`` (the run directory
        at a stop it reached, or the previous record's folder); ``None``: only ``cfg``, for a run
        that failed before its first stop. Written to a sibling folder first and swapped in, so
        a record is whole or absent."""
        path = self.path(key)
        tmp = path.with_name(path.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if files is not None:
            for name in RECORD_FILES:
                if (files / name).is_file():
                    shutil.copyfile(files / name, tmp / name)
        else:
            (tmp / CONFIG_FILE).write_text(cfg.to_toml())
        (tmp / STUDY_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        record = self.load(key)
        assert record is not None
        return record

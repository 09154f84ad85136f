"""The study's runs: one normal run directory each, cached and resumed, and its committed record.

Every run of the study is an ordinary ``fedwon run`` directory under the cache folder::

    CACHE/<part>/<method>-<lr…>-seed<s>[-holdout_<domain>]-<digest>/

``<part>/<name>-<digest>`` is the **run key**: the digest hashes the resolved config minus
``num_rounds``, the keys that only say where it ran and those at their defaults
(:func:`fedwon.study.records.key_values`), so one directory holds one run as halving takes it
from rung to rung — each time resumed from its final checkpoint with a larger ``num_rounds``
(:meth:`fedwon.run.directory.RunDir.reuse`), which trains exactly what a straight run would.

A run is brought to a list of **stops** (rounds); at each it is validated (each client's final
model on its validation share, :mod:`fedwon.study.offline_eval`), and at the last one the study
adds what the part asks for (held-out-domain accuracy, FedBN with averaged norm layers). Then its
small record is written under the records folder (:mod:`fedwon.study.records`; ``docs/study``
for the full study). A stop the record already answers is not trained at all: that is how
``make report`` rebuilds the report from committed records alone.

Checkpoints are what resuming needs and what takes the disk (~57 MB for ``cnn``): once a part
is done, :func:`drop_checkpoint` deletes those of its runs (their records hold everything the
report reads), so the cache holds about one part's worth at a time; a later study that asks one
of them for more rounds trains it again from the start, saying so.

A run that diverges (a grid point with a too-large learning rate: every client returns
non-finite updates) is a result: recorded, reported, and the grid point is never chosen. Any
other failure (a damaged checkpoint, a crash) is a result of this invocation only: its error is
kept beside the run directory in ``<directory>.study.json`` and reported, and the next
invocation retries it, first setting the failed directory aside as ``<directory>.failed-<n>``
(kept to inspect, never deleted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedwon.common.errors import error_line
from fedwon.config import ConfigError, RunConfig, load_config
from fedwon.datasets import DataError, spec_info
from fedwon.run.checkpoint import CHECKPOINT
from fedwon.run.directory import RunDir
from fedwon.run.provenance import code_commit
from fedwon.run.recorder import final_metrics, per_domain
from fedwon.strategies.round_rules import RoundFailedError
from fedwon.study.offline_eval import heldout_accuracy, split_accuracy
from fedwon.study.part import METHODS, Candidate, Part
from fedwon.study.records import Record, RecordStore, key_values

log = logging.getLogger(__name__)

__all__ = [
    "RunRecord",
    "RunSpec",
    "drop_checkpoint",
    "execute",
    "heldout_domains",
    "refusal",
    "run_config",
    "run_key",
]

EXTRAS = ("heldout", "averaged")
"""What a last stop may add: held-out-domain accuracy, FedBN with averaged norm layers."""


@dataclass(frozen=True)
class RunSpec:
    """One run of the study: part, method, hyper-parameters, seed (and held-out domain)."""

    part: str
    method: str
    candidate: Candidate
    seed: int
    role: str  # "tune" (grid point on the tuning seed) or "report" (a reported seed)
    heldout: str = ""  # domain generalization: the domain no client trains on

    @property
    def name(self) -> str:
        holdout = f"-holdout_{self.heldout}" if self.heldout else ""
        return f"{self.method}-{self.candidate.tag()}-seed{self.seed}{holdout}"

    def describe(self) -> str:
        c = self.candidate
        clip = f" clip={c.agc_clip:g}" if c.agc_clip else ""
        rule = f" {c.agc_rule}" if c.agc_clip and c.agc_rule != "all_but_head" else ""
        held = f" held-out {self.heldout}" if self.heldout else ""
        return (
            f"{self.part} {self.method} lr={c.lr:g}{clip}{rule} seed {self.seed}{held} "
            f"({self.role})"
        )


def _overrides(part: Part, method: str, seed: int) -> dict[str, Any]:
    return {**part.settings, **METHODS[method].overrides, "seed": seed}


def _heldout_overrides(cfg: RunConfig, heldout: str) -> dict[str, Any]:
    """Train on every domain but ``heldout``, with as many clients per domain as before."""
    domains = cfg.data.domains or spec_info(cfg.data).domains
    kept = [d for d in domains if d != heldout]
    per_domain = max(1, cfg.data.num_clients // len(domains))
    return {"domains": ",".join(kept), "num_clients": per_domain * len(kept)}


def run_config(part: Part, spec: RunSpec, rounds: int | None = None) -> RunConfig:
    """The validated config of ``spec`` (at ``rounds``, default the part's full schedule)."""
    values = {**_overrides(part, spec.method, spec.seed), **spec.candidate.overrides()}
    if rounds is not None:
        values["num_rounds"] = rounds
    cfg = load_config(part.recipe_path, values)
    if spec.heldout:
        cfg = cfg.replace(**_heldout_overrides(cfg, spec.heldout))
    return cfg


def heldout_domains(part: Part) -> tuple[str, ...]:
    """The domains a domain-generalization part holds out in turn: every domain it would use."""
    cfg = load_config(part.recipe_path, part.settings)
    return cfg.data.domains or spec_info(cfg.data).domains


def refusal(part: Part, method: str) -> str:
    """The one-line config error that refuses ``method`` in ``part`` ("" if it is accepted)."""
    try:
        load_config(part.recipe_path, _overrides(part, method, 0))
    except ConfigError as err:
        return str(err)
    return ""


def run_key(spec: RunSpec, cfg: RunConfig) -> str:
    """``<part>/<name>-<digest>``: the run's directory in the cache and in the records."""
    text = json.dumps(key_values(cfg), sort_keys=True)
    return f"{spec.part}/{spec.name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def _domain_mean(row: dict[str, Any]) -> float | None:
    accs = [v for v in per_domain(row).values() if v is not None]
    return sum(accs) / len(accs) if accs else None


@dataclass
class RunRecord:
    """What the report needs from one run of the study (read back from its record)."""

    spec: RunSpec
    key: str
    status: str  # "recorded", "cached", "resumed", "trained" or "failed" (in this invocation)
    seconds: float  # wall time spent on it now (0 when its record answered)
    rounds: int  # the rounds asked for (its last stop)
    test: dict[str, Any]  # {"accuracy": mean over domains, "per_domain": {...}} of the last row
    curve: list[tuple[int, float]]  # (round, test accuracy averaged over domains)
    train_seconds: float  # the run's own per-round times summed (what training it cost)
    eval_seconds: float  # what the study's evaluations of it cost
    commit: str  # the code that trained it
    val: dict[int, dict[str, Any]]  # validation accuracy at each stop
    heldout: dict[str, Any] | None = None
    averaged: dict[str, Any] | None = None  # FedBN, its clients' norm layers averaged
    error: str = ""  # why a failed run failed
    diverged: bool = False  # the failure is the run's own recorded result, not an accident

    @property
    def ok(self) -> bool:
        return not self.error

    def val_at(self, rounds: int) -> float | None:
        """Validation accuracy (domain mean) after ``rounds`` (``None``: failed or not asked)."""
        return None if self.error else (self.val.get(rounds) or {}).get("accuracy")


def study_file(path: Path) -> Path:
    """Where the study keeps its notes on the cached run in ``path`` (beside it, not inside):
    the commit that trained it, and a failure to retry."""
    return path.with_name(path.name + ".study.json")


def _read_study(path: Path) -> dict[str, Any] | None:
    """The notes on the run in ``path``: ``{}`` when there are none, ``None`` when they cannot
    be read (one warning naming the file; the run then counts as not finished)."""
    file = study_file(path)
    if not file.exists():
        return {}
    try:
        loaded = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("%s cannot be read (%s): the run counts as not finished", file, error_line(err))
        return None
    if not isinstance(loaded, dict):
        log.warning("%s is not a JSON object: the run counts as not finished", file)
        return None
    return loaded


def set_aside(path: Path) -> Path:
    """Move a failed run's directory and notes to ``<path>.failed-<n>`` (the first free
    ``n``), so it can be run again from scratch while what it left stays inspectable."""

    def aside(n: int) -> Path:
        return path.with_name(f"{path.name}.failed-{n}")

    n = 1
    while aside(n).exists() or study_file(aside(n)).exists():
        n += 1
    if path.exists():
        path.rename(aside(n))
    if study_file(path).exists():
        study_file(path).rename(study_file(aside(n)))
    return aside(n)


def _write_study(path: Path, info: dict[str, Any]) -> None:
    file = study_file(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    part = file.with_name(file.name + ".part")
    part.write_text(json.dumps(info, indent=1))
    part.replace(file)


def _failure(err: Exception) -> str:
    """A failure as one line: fedwon's own errors say what failed and name the file (no type
    needed); anything else is named by its type too."""
    return error_line(err, with_type=not isinstance(err, ConfigError | DataError))


@dataclass
class Trained:
    status: str  # "cached", "resumed", "trained" or "failed"
    error: str = ""
    diverged: bool = False  # the failure is the run's own result (recorded), not an accident


def _train(path: Path, cfg: RunConfig) -> Trained:
    """Bring ``path`` to a finished run of ``cfg``: cached, resumed, trained, or failed."""
    from fedwon.simulation import run_simulation

    info = _read_study(path)
    if info is None or "failed" in info:  # failed (or unknown) before: run it again
        aside = set_aside(path)
        log.warning("%s: running it again (the previous attempt is kept in %s)", path, aside)
        info = {}
    try:
        reuse = RunDir(path).reuse(cfg)
    except ConfigError as err:  # a damaged config or checkpoint: this attempt's failure, named
        log.warning("%s failed: %s", path, err)
        _write_study(path, {**info, "failed": _failure(err)})
        return Trained("failed", _failure(err))
    if reuse == "cached":
        return Trained("cached")
    resume = reuse == "resume"
    if not resume:
        shutil.rmtree(path, ignore_errors=True)  # started but never checkpointed: nothing to keep
        info = {"commit": code_commit()}
        _write_study(path, info)
    try:
        run_simulation(cfg, path, resume=resume)
    except Exception as err:  # a diverged grid point is a result; Ctrl-C is not caught
        log.warning("%s failed: %s", path, err)
        _write_study(path, {**info, "failed": _failure(err)})
        return Trained("failed", _failure(err), diverged=isinstance(err, RoundFailedError))
    return Trained("resumed" if resume else "trained")


def _has_checkpoint(path: Path) -> bool:
    """Whether ``path`` holds a checkpoint (a damaged one counts: :func:`_train` names it)."""
    try:
        return RunDir(path).checkpoint_round() is not None
    except ConfigError:
        return True


def _evaluate(path: Path, cfg: RunConfig, spec: RunSpec, extras: tuple[str, ...]) -> dict:
    """The study's evaluations of the run in ``path`` at its last round."""
    out: dict[str, Any] = {"val": split_accuracy(path, cfg, "val").as_dict()}
    if "heldout" in extras:
        out["heldout"] = heldout_accuracy(path, cfg, [spec.heldout]).as_dict()
    if "averaged" in extras:
        out["averaged"] = split_accuracy(path, cfg, "test", averaged=True).as_dict()
    return out


def _reach(
    part: Part,
    spec: RunSpec,
    cache: Path,
    store: RecordStore,
    rounds: int,
    extras: tuple[str, ...],
) -> tuple[str, str]:
    """Bring ``spec``'s run to ``rounds`` and record it there: ``(status, error)``."""
    cfg = run_config(part, spec, rounds)
    key = run_key(spec, cfg)
    record = store.load(key)
    if record is not None and not record.matches(cfg):
        log.warning("record %s was made with another config: the run is trained again", key)
        record = None
    if record is not None and record.answers(rounds, extras):
        return "recorded", ""
    if not store.train:
        raise store.missing(key, rounds, record)
    path = cache / key
    if not _has_checkpoint(path):  # nothing to resume or evaluate: start again
        shutil.rmtree(path, ignore_errors=True)
        if record is not None and record.rounds:
            log.warning(
                "%s: recorded up to round %d, but %s holds no checkpoint to continue from: "
                "training it again from the start to round %d",
                key,
                record.rounds,
                path,
                rounds,
            )
    trained = _train(path, cfg)
    info = dict(record.info) if record is not None else {}
    info["commit"] = (_read_study(path) or {}).get("commit", "unknown (trained outside the study)")
    previous = record.path if record is not None and record.rounds else None
    if trained.status == "failed":
        if trained.diverged:  # the run's own result: recorded, never retried
            info["failed"] = {"rounds": rounds, "error": trained.error}
            store.save(key, info, previous, cfg)
        return "failed", trained.error
    start = time.perf_counter()
    for name, value in _evaluate(path, cfg, spec, extras).items():
        if name == "val":
            info.setdefault("val", {})[str(rounds)] = value
        else:
            info[name] = value
    info["eval_seconds"] = info.get("eval_seconds", 0.0) + time.perf_counter() - start
    if info.get("failed") and info["failed"]["rounds"] <= rounds:
        del info["failed"]
    further = record is not None and record.rounds > rounds
    if not further:
        info["rounds"] = rounds
    store.save(key, info, previous if further else path, cfg)
    return trained.status, ""


def drop_checkpoint(cache: Path, key: str) -> None:
    """Delete the checkpoint of the cached run ``key`` (its config, metrics and summary stay)."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.tmp", f"{CHECKPOINT}.old"):
        shutil.rmtree(cache / key / name, ignore_errors=True)


STATUS_ORDER = ("recorded", "cached", "resumed", "trained", "failed")


def execute(
    part: Part,
    spec: RunSpec,
    cache: Path,
    store: RecordStore,
    stops: tuple[int, ...],
    extras: tuple[str, ...] = (),
) -> RunRecord:
    """Bring ``spec``'s run to each of ``stops`` in turn (validated and recorded at each; the
    ``extras`` at the last) and return its record as the report reads it."""
    start = time.perf_counter()
    statuses, error = [], ""
    for i, rounds in enumerate(stops):
        last = i == len(stops) - 1
        status, error = _reach(part, spec, cache, store, rounds, extras if last else ())
        statuses.append(status)
        if error:
            break
    status = max(statuses, key=STATUS_ORDER.index)
    cfg = run_config(part, spec)
    key = run_key(spec, cfg)
    record = store.load(key)
    failed = record.failed if record is not None else None
    if not error and failed and stops[-1] >= failed["rounds"]:
        error = failed["error"]
    seconds = 0.0 if status == "recorded" else time.perf_counter() - start
    run = from_record(spec, key, record, status, seconds, stops[-1], error)
    run.diverged = bool(error and failed and failed["error"] == error)
    return run


def from_record(
    spec: RunSpec,
    key: str,
    record: Record | None,
    status: str,
    seconds: float,
    rounds: int,
    error: str = "",
) -> RunRecord:
    """The :class:`RunRecord` of ``spec`` read from its record (``None``: it has none yet)."""
    if record is None:
        empty: dict[str, Any] = {}
        return RunRecord(
            spec,
            key,
            "failed",
            seconds,
            rounds,
            empty,
            [],
            0.0,
            0.0,
            "unknown",
            {},
            None,
            None,
            error or "no record",
        )
    rows = [r for r in record.rows if int(r["round"]) <= rounds]  # a later rung's record too
    final = final_metrics(rows) if rows else {}
    curve = [
        (int(r["round"]), acc)
        for r in rows
        if r.get("accuracy") is not None and (acc := _domain_mean(r)) is not None
    ]
    return RunRecord(
        spec=spec,
        key=key,
        status="failed" if error else status,
        seconds=seconds,
        rounds=rounds,
        test={"accuracy": _domain_mean(final), "per_domain": per_domain(final)} if final else {},
        curve=curve,
        train_seconds=float(sum(r.get("time_s") or 0.0 for r in rows)),
        eval_seconds=float(record.info.get("eval_seconds", 0.0)),
        commit=str(record.info.get("commit", "unknown")),
        val=record.val,
        heldout=record.info.get("heldout"),
        averaged=record.info.get("averaged"),
        error=error,
    )

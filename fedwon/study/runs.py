"""The study's runs: one normal run directory each, cached, reused and resumed.

Every run of the study is an ordinary ``fedwon run`` directory under the cache folder::

    CACHE/<part>/<method>-<lr…>-seed<s>[-holdout_<domain>]-<config digest>/

The digest is a hash of the fully resolved config, so a directory only ever holds the run of
exactly one config, and :meth:`fedwon.run.directory.RunDir.reuse` says what to do with it: a
finished one is reused as is, an interrupted one is resumed from its last checkpoint, a
directory that never reached a checkpoint is cleared and started again. After training, the
evaluations the study adds (validation and held-out-domain accuracy,
:mod:`fedwon.study.offline_eval`) are computed once and kept beside the run directory in
``<directory>.study.json`` (never inside it: a run directory holds only what a run writes),
together with the commit that trained it.

A run that fails (e.g. every client diverged at a too-large learning rate of the grid, or its
checkpoint is damaged) is a result of this invocation, not a crash: its error is kept in the same
file and reported, and the grid point is never chosen. The next invocation retries it: the
failed directory and its record are first set aside as ``<directory>.failed-<n>`` (kept to
inspect, never deleted), so a failure that was an accident does not stay a hole in the report.
A record that cannot be read (e.g. truncated) is one warning naming it, and the run counts as
not finished.
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
from fedwon.run.directory import RunDir
from fedwon.run.provenance import code_commit
from fedwon.run.recorder import final_metrics, per_domain
from fedwon.study.offline_eval import heldout_accuracy, split_accuracy
from fedwon.study.plan import METHODS, Candidate, Part

log = logging.getLogger(__name__)

__all__ = [
    "RunRecord",
    "RunSpec",
    "execute",
    "refusal",
    "run_config",
    "run_dir",
]


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
        clip = f" clip={self.candidate.agc_clip:g}" if self.candidate.agc_clip else ""
        held = f" held-out {self.heldout}" if self.heldout else ""
        return (
            f"{self.part} {self.method} lr={self.candidate.lr:g}{clip} seed {self.seed}"
            f"{held} ({self.role})"
        )


def _overrides(part: Part, method: str, seed: int) -> dict[str, Any]:
    return {**part.settings, **METHODS[method].overrides, "seed": seed}


def _heldout_overrides(cfg: RunConfig, heldout: str) -> dict[str, Any]:
    """Train on every domain but ``heldout``, with as many clients per domain as before."""
    domains = cfg.data.domains or spec_info(cfg.data).domains
    kept = [d for d in domains if d != heldout]
    per_domain = max(1, cfg.data.num_clients // len(domains))
    return {"domains": ",".join(kept), "num_clients": per_domain * len(kept)}


def run_config(part: Part, spec: RunSpec) -> RunConfig:
    """The validated config of ``spec``: recipe, part settings, method, candidate, seed."""
    values = {**_overrides(part, spec.method, spec.seed), **spec.candidate.overrides()}
    cfg = load_config(part.recipe_path, values)
    if spec.heldout:
        cfg = cfg.replace(**_heldout_overrides(cfg, spec.heldout))
    return cfg


def refusal(part: Part, method: str) -> str:
    """The one-line config error that refuses ``method`` in ``part`` ("" if it is accepted)."""
    try:
        load_config(part.recipe_path, _overrides(part, method, 0))
    except ConfigError as err:
        return str(err)
    return ""


def run_dir(cache: Path, spec: RunSpec, cfg: RunConfig) -> Path:
    digest = hashlib.sha256(cfg.to_toml().encode()).hexdigest()[:10]
    return cache / spec.part / f"{spec.name}-{digest}"


def _domain_mean(row: dict[str, Any]) -> float | None:
    accs = [v for v in per_domain(row).values() if v is not None]
    return sum(accs) / len(accs) if accs else None


@dataclass
class RunRecord:
    """What the report needs from one run of the study."""

    spec: RunSpec
    path: str
    status: str  # "cached", "resumed", "trained" or "failed"
    seconds: float  # wall time spent on it now (0 when cached)
    test: dict[str, Any]  # {"accuracy": mean over domains, "per_domain": {...}} of the final round
    curve: list[tuple[int, float]]  # (round, test accuracy averaged over domains)
    train_seconds: float  # the run's own per-round times summed (what training it cost)
    commit: str  # the code that trained it
    val: dict[str, Any] | None = None
    heldout: dict[str, Any] | None = None
    error: str = ""  # why a failed run failed

    @property
    def ok(self) -> bool:
        return not self.error


def study_file(path: Path) -> Path:
    """Where the study keeps what it adds to the run in ``path`` (beside it, not inside)."""
    return path.with_name(path.name + ".study.json")


def _read_study(path: Path) -> dict[str, Any] | None:
    """The study's record of the run in ``path``: ``{}`` when there is none, ``None`` when it
    cannot be read (one warning naming it; the run then counts as not finished)."""
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
    """Move a failed run's directory and record to ``<path>.failed-<n>`` (the first free
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


def _train(path: Path, cfg: RunConfig) -> str:
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
        return "failed"
    if reuse == "cached":
        return "cached"
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
        return "failed"
    return "resumed" if resume else "trained"


def execute(part: Part, spec: RunSpec, cache: Path) -> RunRecord:
    """Train (or reuse, or resume) ``spec``'s run and evaluate what the study needs from it."""
    cfg = run_config(part, spec)
    path = run_dir(cache, spec, cfg)
    start = time.perf_counter()
    status = _train(path, cfg)
    info = _read_study(path) or {}
    if status == "failed":
        return RunRecord(
            spec=spec,
            path=str(path),
            status=status,
            seconds=time.perf_counter() - start,
            test={},
            curve=[],
            train_seconds=0.0,
            commit=str(info.get("commit", "unknown")),
            error=str(info["failed"]),
        )
    if spec.role == "tune" and "val" not in info:
        info["val"] = split_accuracy(path, cfg, "val").as_dict()
    if spec.heldout and "heldout" not in info:
        info["heldout"] = heldout_accuracy(path, cfg, [spec.heldout]).as_dict()
    info.setdefault("commit", "unknown (trained outside the study)")
    _write_study(path, info)
    rows = RunDir(path).metrics()
    final = final_metrics(rows)
    curve = [
        (int(r["round"]), acc)
        for r in rows
        if r.get("accuracy") is not None and (acc := _domain_mean(r)) is not None
    ]
    return RunRecord(
        spec=spec,
        path=str(path),
        status=status,
        seconds=time.perf_counter() - start if status != "cached" else 0.0,
        test={"accuracy": _domain_mean(final), "per_domain": per_domain(final)},
        curve=curve,
        train_seconds=float(sum(r.get("time_s") or 0.0 for r in rows)),
        commit=str(info["commit"]),
        val=info.get("val"),
        heldout=info.get("heldout"),
    )

"""Conducting the study: part by part, search on validation, then run the reported seeds.

Parts run in plan order (a study cut short has its first parts complete). In each part:

1. **search** — every method (and each of FedWon's AGC arms) is searched on the tuning seed by
   successive halving over a self-widening grid (:mod:`fedwon.study.halving`); the searches of
   the part advance in lockstep, so each rung of every search is one batch of independent runs
   (``jobs > 1`` trains them in parallel processes). FedWon's main-table row is its arm with
   the best validation accuracy at the full schedule (ties: the part's arm order).
2. **report** — every method and arm at its chosen values (or those of the part it reuses: its
   main rows only) on the part's seeds, each brought to the start of the last 20% of rounds and
   validated there (the convergence column), then to the full schedule; for domain
   generalization once per held-out domain.

Methods a part lists as ``refused`` are not run: the config's one-line refusal is recorded.
Every run answers from its committed record when it can (:mod:`fedwon.study.runs`), so a study
whose records are all committed trains nothing.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fedwon.run.lock import lock_dir
from fedwon.run.provenance import code_commit
from fedwon.study.budget import planned_runs
from fedwon.study.halving import Point, Request, SearchResult, drive, search
from fedwon.study.part import TUNING_SEED, Candidate, Part, StudyPlan, arm_key
from fedwon.study.records import RecordStore
from fedwon.study.runs import (
    RunRecord,
    RunSpec,
    drop_checkpoint,
    execute,
    heldout_domains,
    refusal,
)

log = logging.getLogger(__name__)

__all__ = ["PartResult", "Search", "StudyResults", "run_study"]

OnRun = Callable[[int, int, RunRecord], None]
"""Progress callback: (runs done, runs planned so far, the record just finished)."""


@dataclass
class Search:
    """One method's (or FedWon arm's) search: the halving result and the run behind each score."""

    method: str
    arm: str
    result: SearchResult
    runs: dict[tuple[Point, int], RunRecord] = field(default_factory=dict)

    @property
    def chosen(self) -> Point | None:
        return self.result.best


@dataclass
class PartResult:
    part: Part
    searches: dict[str, Search] = field(default_factory=dict)  # arm key -> search
    chosen: dict[str, Candidate] = field(default_factory=dict)  # arm key -> chosen values
    main_arm: dict[str, str] = field(default_factory=dict)  # method -> arm of its main row
    reported: dict[str, list[RunRecord]] = field(default_factory=dict)  # arm key -> runs
    refused: dict[str, str] = field(default_factory=dict)  # method -> config error

    def main_key(self, method: str) -> str:
        """The arm key whose runs are ``method``'s main-table row."""
        return arm_key(method, self.main_arm.get(method, ""))

    @property
    def tuning_runs(self) -> list[RunRecord]:
        return [r for s in self.searches.values() for r in s.runs.values()]

    @property
    def all_reported(self) -> list[RunRecord]:
        return [r for runs in self.reported.values() for r in runs]


@dataclass
class StudyResults:
    plan: StudyPlan
    parts: dict[str, PartResult]
    commit: str
    command: str

    @property
    def records(self) -> list[RunRecord]:
        return [r for p in self.parts.values() for r in (*p.tuning_runs, *p.all_reported)]


Task = tuple[Part, RunSpec, tuple[int, ...], tuple[str, ...]]


class _Study:
    """One invocation: the cache, the records, the workers and the progress count."""

    def __init__(
        self,
        cache: Path,
        store: RecordStore,
        pool: Executor | None,
        on_run: OnRun | None,
        total: int,
    ) -> None:
        self.cache, self.store, self.pool, self.on_run = cache, store, pool, on_run
        self.done, self.total = 0, total

    def execute_all(self, tasks: list[Task]) -> list[RunRecord]:
        """Run ``tasks`` (in the worker pool when there is one); records in task order."""
        if self.pool is None or len(tasks) <= 1:
            return [
                self._progress(execute(p, s, self.cache, self.store, st, ex))
                for p, s, st, ex in tasks
            ]
        futures = [
            self.pool.submit(execute, p, s, self.cache, self.store, st, ex)
            for p, s, st, ex in tasks
        ]
        return [self._progress(f.result()) for f in futures]

    def _progress(self, record: RunRecord) -> RunRecord:
        self.done += 1
        self.total = max(self.total, self.done)
        if self.on_run is not None:
            self.on_run(self.done, self.total, record)
        return record

    def tune(self, part: Part) -> dict[str, Search]:
        """Search every method and arm of ``part`` (module docstring, step 1)."""
        searches = {
            arm_key(m, a): Search(m, a, SearchResult(part.axes(m, a), part.schedule))
            for m in part.methods
            for a in part.arms(m)
        }
        gens = {k: search(part.axes(s.method, s.arm), part.schedule) for k, s in searches.items()}

        def answer(batch: list[tuple[Hashable, Request]]) -> dict:
            tasks: list[Task] = []
            for key, (point, rounds) in batch:
                s = searches[str(key)]
                candidate = part.candidate(s.method, s.arm, point)
                spec = RunSpec(part.name, s.method, candidate, TUNING_SEED, "tune")
                tasks.append((part, spec, (rounds,), ()))
            scores = {}
            for (key, (point, rounds)), record in zip(batch, self.execute_all(tasks), strict=True):
                searches[str(key)].runs[(point, rounds)] = record
                scores[(key, (point, rounds))] = record.val_at(rounds)
            return scores

        for key, result in drive(gens, answer).items():  # type: ignore[arg-type]
            searches[str(key)].result = result
        return searches

    def report(self, part: Part, result: PartResult) -> None:
        """Run every chosen value on the part's seeds (module docstring, step 2)."""
        held = heldout_domains(part) if part.heldout else ("",)
        stops = (part.convergence_from, part.num_rounds)
        tasks: list[Task] = []
        keys: list[str] = []
        for key, candidate in result.chosen.items():
            method = key.split(":")[0]
            extras = ("averaged",) if part.fedbn_averaged and method == "fedbn" else ()
            for seed in part.seeds:
                for domain in held:
                    spec = RunSpec(part.name, method, candidate, seed, "report", domain)
                    tasks.append((part, spec, stops, ("heldout",) if domain else extras))
                    keys.append(key)
        for key, record in zip(keys, self.execute_all(tasks), strict=True):
            result.reported.setdefault(key, []).append(record)


def _choose(part: Part, searches: dict[str, Search], result: PartResult) -> None:
    """Each arm's chosen point, and each method's main arm: its best at the full schedule."""
    for key, s in searches.items():
        if s.chosen is None:
            log.warning("%s %s: every grid point failed; nothing to report", part.name, key)
            continue
        result.chosen[key] = part.candidate(s.method, s.arm, s.chosen)
    for method in part.methods:
        scored = []
        for i, arm in enumerate(part.arms(method)):
            s = searches[arm_key(method, arm)]
            if s.chosen is not None:
                scored.append((s.result.score(s.chosen, part.num_rounds) or 0.0, -i, arm))
        if scored:
            result.main_arm[method] = max(scored)[2]


@contextmanager
def _workers(jobs: int) -> Iterator[Executor | None]:
    """One pool of ``jobs`` spawned workers for the whole study (``None``: run in-process)."""
    if jobs <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")  # no forked torch/Ray state in workers
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        yield pool


def run_study(
    plan: StudyPlan,
    cache: str | Path,
    *,
    records: str | Path,
    command: str,
    jobs: int = 1,
    on_run: OnRun | None = None,
    train: bool = True,
) -> StudyResults:
    """Search, then run the reported seeds of every part of ``plan`` (module docstring).

    Runs live in ``cache`` (locked for the whole study, so a second study on the same cache is
    refused at once; a part's checkpoints are deleted once the part is done) and leave their
    records in ``records``. ``train=False``: every run must be answered by its record
    (:class:`~fedwon.study.records.MissingRecord` names the first that is not).
    """
    cache = Path(cache)
    with lock_dir(cache, "study cache"), _workers(jobs if train else 1) as pool:
        total = sum(planned_runs(p) for p in plan.parts)
        study = _Study(cache, RecordStore(records, train=train), pool, on_run, total)
        parts: dict[str, PartResult] = {}
        for part in plan.parts:
            parts[part.name] = result = PartResult(part)
            for method in part.refused:
                result.refused[method] = refusal(part, method) or "(accepted: not refused)"
            if part.reuse:
                source = parts[part.reuse]
                for method in part.methods:
                    if source.main_key(method) in source.chosen:
                        result.main_arm[method] = source.main_arm.get(method, "")
                        result.chosen[result.main_key(method)] = source.chosen[
                            source.main_key(method)
                        ]
            else:
                result.searches = study.tune(part)
                _choose(part, result.searches, result)
            study.report(part, result)
            for key in {r.key for r in [*result.tuning_runs, *result.all_reported]}:
                drop_checkpoint(cache, key)  # the part is done: its records hold the rest
    return StudyResults(plan, parts, code_commit(), command)

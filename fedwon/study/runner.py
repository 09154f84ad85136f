"""Conducting the study: tune on validation, run the reported seeds, collect the records.

Two phases over all parts, each a flat list of independent runs (so ``jobs > 1`` runs them in
parallel processes):

1. **tune** — every grid point of every method of every part that tunes, on the tuning seed;
   each method's value is the grid point with the best validation accuracy (ties: the earlier
   grid point; failed runs never win);
2. **report** — every method of every part at its chosen values (or those of the part it
   reuses) on the part's seeds, and for domain generalization once per held-out domain.

Methods a part lists as ``refused`` are not run: the config's one-line refusal is recorded.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from fedwon.config import load_config
from fedwon.datasets import spec_info
from fedwon.run.lock import lock_dir
from fedwon.run.provenance import code_commit
from fedwon.study.plan import METHODS, TUNING_SEED, Candidate, Part, StudyPlan
from fedwon.study.runs import RunRecord, RunSpec, execute, refusal

log = logging.getLogger(__name__)

__all__ = ["PartResult", "StudyResults", "choose", "run_study"]

OnRun = Callable[[int, int, RunRecord], None]
"""Progress callback: (runs done, runs in total, the record just finished)."""


@dataclass
class PartResult:
    part: Part
    tuning: dict[str, list[RunRecord]] = field(default_factory=dict)  # method -> grid runs
    chosen: dict[str, Candidate] = field(default_factory=dict)
    reported: dict[str, list[RunRecord]] = field(default_factory=dict)  # method -> runs
    refused: dict[str, str] = field(default_factory=dict)  # method -> config error


@dataclass
class StudyResults:
    plan: StudyPlan
    parts: dict[str, PartResult]
    commit: str
    command: str

    @property
    def records(self) -> list[RunRecord]:
        return [
            r
            for p in self.parts.values()
            for runs in (*p.tuning.values(), *p.reported.values())
            for r in runs
        ]


def choose(grid_runs: Sequence[RunRecord]) -> Candidate | None:
    """The grid point with the best validation accuracy (earliest on ties; None if all failed)."""
    best: RunRecord | None = None
    for record in grid_runs:
        score = (record.val or {}).get("accuracy")
        if not record.ok or score is None or score != score:  # failed or NaN
            continue
        if best is None or score > best.val["accuracy"]:  # type: ignore[index]
            best = record
    return best.spec.candidate if best else None


def heldout_domains(part: Part) -> tuple[str, ...]:
    """The domains a domain-generalization part holds out in turn: every domain it would use."""
    cfg = load_config(part.recipe_path, part.settings)
    return cfg.data.domains or spec_info(cfg.data).domains


def tuning_specs(plan: StudyPlan) -> list[tuple[Part, RunSpec]]:
    return [
        (part, RunSpec(part.name, method, candidate, TUNING_SEED, "tune"))
        for part in plan.parts
        if not part.reuse
        for method in part.methods
        for candidate in part.grid(METHODS[method])
    ]


def report_specs(
    plan: StudyPlan, chosen: dict[str, dict[str, Candidate]]
) -> list[tuple[Part, RunSpec]]:
    """Reported runs; methods without a chosen value (every grid point failed) are skipped."""
    specs = []
    for part in plan.parts:
        picks = chosen.get(part.reuse or part.name, {})
        held = heldout_domains(part) if part.heldout else ("",)
        for method in part.methods:
            if method not in picks:
                continue
            for seed in part.seeds:
                for domain in held:
                    spec = RunSpec(part.name, method, picks[method], seed, "report", domain)
                    specs.append((part, spec))
    return specs


def count_report_runs(plan: StudyPlan) -> int:
    return sum(
        len(p.methods) * len(p.seeds) * (len(heldout_domains(p)) if p.heldout else 1)
        for p in plan.parts
    )


def _execute_all(
    specs: list[tuple[Part, RunSpec]],
    cache: Path,
    jobs: int,
    progress: Callable[[RunRecord], None],
) -> list[RunRecord]:
    """Run ``specs`` (in ``jobs`` processes when > 1); records in the order of ``specs``."""
    if jobs <= 1 or len(specs) <= 1:
        records = []
        for part, spec in specs:
            records.append(execute(part, spec, cache))
            progress(records[-1])
        return records
    results: dict[int, RunRecord] = {}
    context = multiprocessing.get_context("spawn")  # no forked torch/Ray state in workers
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {
            pool.submit(execute, part, spec, cache): i for i, (part, spec) in enumerate(specs)
        }
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            progress(results[futures[future]])
    return [results[i] for i in range(len(specs))]


def run_study(
    plan: StudyPlan,
    cache: str | Path,
    *,
    command: str,
    jobs: int = 1,
    on_run: OnRun | None = None,
) -> StudyResults:
    """Tune, then run the reported seeds of every part of ``plan`` (module docstring).

    The cache is locked for the whole study (:mod:`fedwon.run.lock`): a second study on the same
    cache is refused at once, instead of colliding with this one run by run.
    """
    cache = Path(cache)
    with lock_dir(cache, "study cache"):
        return _run_study(plan, cache, command, jobs, on_run)


def _run_study(
    plan: StudyPlan, cache: Path, command: str, jobs: int, on_run: OnRun | None
) -> StudyResults:
    """:func:`run_study` with its cache locked."""
    parts = {p.name: PartResult(p) for p in plan.parts}
    for p in plan.parts:
        for method in p.refused:
            parts[p.name].refused[method] = refusal(p, method) or "(accepted: not refused)"
    tune = tuning_specs(plan)
    total = len(tune) + count_report_runs(plan)
    done = 0

    def progress(record: RunRecord) -> None:
        nonlocal done
        done += 1
        if on_run is not None:
            on_run(done, total, record)

    for record in _execute_all(tune, cache, jobs, progress):
        parts[record.spec.part].tuning.setdefault(record.spec.method, []).append(record)
    chosen: dict[str, dict[str, Candidate]] = {}
    for name, result in parts.items():
        for method, runs in result.tuning.items():
            pick = choose(runs)
            if pick is None:
                log.warning("%s %s: every grid point failed; nothing to report", name, method)
                continue
            result.chosen[method] = pick
        chosen[name] = result.chosen
    for result in parts.values():
        if result.part.reuse:
            picks = chosen.get(result.part.reuse, {})
            result.chosen = {m: c for m, c in picks.items() if m in result.part.methods}
    for record in _execute_all(report_specs(plan, chosen), cache, jobs, progress):
        parts[record.spec.part].reported.setdefault(record.spec.method, []).append(record)
    return StudyResults(plan, parts, code_commit(), command)

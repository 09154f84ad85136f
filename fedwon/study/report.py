"""Writing the study: ``results.json`` (machine), ``results.md`` (human), plots under ``img/``.

Everything here is computed from the run records (:mod:`fedwon.study.records`); nothing is
typed in by hand, and nothing depends on when or where the report is written: times are the
ones the records hold, so rebuilding from the committed records reproduces the files byte for
byte. Accuracy of a run is its last round's test accuracy *averaged over domains* (each domain
counts once); a method's ``mean`` and ``std`` are over the reported seeds (sample standard
deviation, ``null`` for a single seed). **Convergence**: ``val_change`` is the change of
validation accuracy over the last 20% of the schedule (``val(T) − val(T − round(0.2·T))``,
averaged over the reported runs); a method with ``|val_change|`` above :data:`CONVERGED`
(1 point) is marked ``converged: false``.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedwon.study.claims import RULE, check_claims, comparisons
from fedwon.study.markdown import LABELS, SETTING_NAMES, image_name, results_markdown
from fedwon.study.part import TUNING_SEED, Candidate, arm_key
from fedwon.study.plots import plot_curves, plot_heldout
from fedwon.study.runner import PartResult, StudyResults
from fedwon.study.runs import RunRecord, run_config

__all__ = [
    "CONVERGED",
    "REPORT_ORDER",
    "results_json",
    "results_markdown",
    "write_report",
]

CONVERGED = 0.01
"""Largest change of validation accuracy over the last 20% of rounds still called converged."""
REPORT_ORDER = (
    "cross_silo",
    "cross_device",
    "cross_device_bs2",
    "label_skew_alpha01",
    "label_skew_alpha05",
    "label_skew",
    "domain_generalization",
)
"""Parts in the order the report shows them (``results.json`` keys; others follow)."""
FEDBN_UNSEEN_NOTE = (
    "FedBN keeps normalization layers on clients, so no client has layers for a domain it never "
    "saw: the held-out domain is evaluated with the unweighted average of the clients' local "
    "normalization layers (affine parameters and running statistics)."
)


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) >= 2 else None


def _mean_per_domain(per_run: list[dict[str, float]]) -> dict[str, float]:
    domains = sorted({d for pd in per_run for d in pd})
    return {d: statistics.fmean(pd[d] for pd in per_run if d in pd) for d in domains}


def _val_change(part: PartResult, runs: list[RunRecord]) -> float | None:
    """Mean over ``runs`` of validation accuracy at the end minus at the last 20%'s start."""
    start, end = part.part.convergence_from, part.part.num_rounds
    changes = [
        b - a
        for r in runs
        if (a := r.val_at(start)) is not None and (b := r.val_at(end)) is not None
    ]
    return statistics.fmean(changes) if changes else None


def _entry(
    part: PartResult, all_runs: list[RunRecord], chosen: Candidate, scores: str = "test"
) -> dict[str, Any] | None:
    """``{"mean", "std", "per_domain", "seeds", "planned_seeds", "lr", "agc_clip",
    "agc_rule", "val_change", "converged", "failed_runs"}`` of one method (or arm) in one part.
    ``seeds`` counts the seeds whose every run finished (a held-out seed with one failed domain
    does not count): fewer than ``planned_seeds`` makes every claim on it incomplete."""
    broken = {r.spec.seed for r in all_runs if not r.ok}
    runs = [r for r in all_runs if r.ok and r.spec.seed not in broken]
    by_seed: dict[int, dict[str, float]] = {}
    for r in runs:
        if part.part.heldout:
            by_seed.setdefault(r.spec.seed, {}).update((r.heldout or {}).get("per_domain", {}))
        else:
            source = r.averaged if scores == "averaged" else r.test
            by_seed[r.spec.seed] = dict((source or {}).get("per_domain", {}))
    per_seed = [pd for _, pd in sorted(by_seed.items()) if pd]
    means = [statistics.fmean(pd.values()) for pd in per_seed]
    if not means:
        return None
    change = _val_change(part, runs)
    entry: dict[str, Any] = {
        "mean": statistics.fmean(means),
        "std": _std(means),
        "per_domain": _mean_per_domain(per_seed),
        "seeds": len(per_seed),
        "planned_seeds": len(part.part.seeds),
        **chosen.as_dict(),
        "val_change": change,
        "converged": None if change is None else abs(change) <= CONVERGED,
        "failed_runs": sum(1 for r in all_runs if not r.ok),
    }
    if part.part.heldout:
        seen = [r.test["accuracy"] for r in runs if r.test.get("accuracy") is not None]
        entry["seen_domains_mean"] = statistics.fmean(seen) if seen else None
    return entry


def method_entry(part: PartResult, key: str, scores: str = "test") -> dict[str, Any] | None:
    if key not in part.chosen:
        return None
    entry = _entry(part, part.reported.get(key, []), part.chosen[key], scores)
    _, _, arm = key.partition(":")
    if entry is not None and arm:
        entry["agc_arm"] = arm
    return entry


def tuning_entry(part: PartResult, key: str) -> dict[str, Any]:
    """One search: every grid point's validation accuracy at each rung it reached, the choice,
    how the grid widened and whether the choice sits on a bound."""
    s = part.searches[key]
    axes = [a.key for a in s.result.axes]
    grid = []
    for point in s.result.grid:
        row: dict[str, Any] = part.part.candidate(s.method, s.arm, point).as_dict()
        row["val"] = {str(r): v for r, v in sorted(s.result.scores.get(point, {}).items())}
        errors = [rec.error for (p, _), rec in sorted(s.runs.items()) if p == point and rec.error]
        if errors:
            row["error"] = errors[0]
        grid.append(row)
    chosen = part.chosen.get(key)
    return {
        "seed": TUNING_SEED,
        "axes": axes,
        "rungs": list(s.result.rungs),
        "bounds": {a.key: list(a.ladder.bounds) for a in s.result.axes},
        "grid": grid,
        "chosen": chosen.as_dict() if chosen else None,
        "widened": list(s.result.widened),
        "at_bound": dict(s.result.at_bound),
    }


def _settings(part: PartResult) -> dict[str, Any]:
    """The settings every run of the part shares (from the first reported run's config)."""
    record = next((r for runs in part.reported.values() for r in runs), None)
    if record is None:
        return {}
    cfg = run_config(part.part, record.spec)
    keys = (
        "model",
        "dataset",
        "domains",
        "partition",
        "num_clients",
        "num_rounds",
        "local_epochs",
        "batch_size",
        "momentum",
        "val_fraction",
        "train_per_domain",
        "test_per_domain",
        "eval_every",
    )
    values = cfg.to_flat()
    settings = {k: values[k] for k in keys if k in values}
    for k in ("train_per_domain", "test_per_domain"):
        if not settings.get(k):
            settings[k] = "data set default"
    settings["clients_per_round"] = cfg.sampled_per_round
    if cfg.data.partition == "dirichlet":
        settings["alpha"] = cfg.data.alpha
    if part.part.heldout:
        settings["domains"] = "all but the held-out one"
        settings["num_clients"] = f"{cfg.data.num_clients} (one domain held out)"
    return settings


def part_json(part: PartResult) -> dict[str, Any]:
    p = part.part
    methods = {}
    for m in p.methods:
        entry = method_entry(part, part.main_key(m))
        if entry is not None:
            methods[m] = entry
    out: dict[str, Any] = {"title": p.title, "methods": methods}
    if part.refused:
        out["refused"] = dict(part.refused)
    arms = [a for a in p.arms("fedwon") if a] if "fedwon" in p.methods and not p.reuse else []
    if len(arms) > 1:
        out["agc_ablation"] = {a: method_entry(part, arm_key("fedwon", a)) for a in arms}
    if p.fedbn_averaged and "fedbn" in part.chosen:
        out["fedbn_averaged"] = method_entry(part, "fedbn", scores="averaged")
    if part.searches:
        out["tuning"] = {k: tuning_entry(part, k) for k in part.searches}
    elif p.reuse:
        out["tuning"] = f"values chosen in {p.reuse}"
    out["seeds"] = list(p.seeds)
    out["schedule"] = {
        "num_rounds": p.num_rounds,
        "rungs": list(p.schedule),
        "convergence_from": p.convergence_from,
    }
    out["settings"] = _settings(part)
    diverged = diverged_reported(part)
    if diverged:
        out["diverged"] = diverged
    if p.heldout:
        out["note"] = FEDBN_UNSEEN_NOTE
    return out


def _diverged_round(error: str) -> int | None:
    """The round named by a divergence's error (``round 255 train: ...``)."""
    found = re.search(r"\bround (\d+)\b", error)
    return int(found.group(1)) if found else None


def diverged_reported(part: PartResult) -> list[dict[str, Any]]:
    """Reported runs that diverged (every client sent non-finite updates): a result of the
    chosen configuration on that seed, shown beside its table and never retried — unlike a
    failure, which :func:`missing_runs` lists."""
    return [
        {
            "method": key,
            "seed": r.spec.seed,
            **({"heldout": r.spec.heldout} if r.spec.heldout else {}),
            **r.spec.candidate.as_dict(),
            "round": _diverged_round(r.error),
        }
        for key, runs in part.reported.items()
        for r in runs
        if r.diverged
    ]


def missing_runs(results: StudyResults) -> list[dict[str, Any]]:
    """Every planned run without a result: each failed run, with its error (a run that
    diverged is a result, shown in its tuning table or beside its part's tables, not a missing
    run), and each method whose reported seeds never ran because no grid point finished."""
    missing: list[dict[str, Any]] = []
    for name, part in results.parts.items():
        failed = [r for r in part.tuning_runs if not r.ok and not r.diverged]
        failed += [r for runs in part.reported.values() for r in runs if not (r.ok or r.diverged)]
        for r in failed:
            missing.append(
                {
                    "part": name,
                    "method": r.spec.method,
                    "role": r.spec.role,
                    "seed": r.spec.seed,
                    **({"heldout": r.spec.heldout} if r.spec.heldout else {}),
                    **r.spec.candidate.as_dict(),
                    "rounds": r.rounds,
                    "run": r.key,
                    "error": r.error,
                }
            )
        for method in part.part.methods:
            if part.main_key(method) not in part.chosen:
                source = part.part.reuse or name
                missing.append(
                    {
                        "part": name,
                        "method": method,
                        "role": "report",
                        "seeds": list(part.part.seeds),
                        "error": f"not run: no grid point of {source} finished, nothing was chosen",
                    }
                )
    return missing


def compute(results: StudyResults) -> dict[str, Any]:
    """What the runs behind the report cost, from their records: each run's recorded round
    times and the study's evaluations of it (a run counted once, at its furthest record)."""
    latest: dict[str, RunRecord] = {}
    for r in results.records:
        if r.key not in latest or r.train_seconds > latest[r.key].train_seconds:
            latest[r.key] = r
    train = sum(r.train_seconds for r in latest.values())
    evals = sum(r.eval_seconds for r in latest.values())
    return {"runs": len(latest), "train_seconds": train, "eval_seconds": evals}


def results_json(results: StudyResults) -> dict[str, Any]:
    """The ``docs/results.json`` dictionary (schema: DESIGN.md and issue 14)."""
    order = {name: i for i, name in enumerate(REPORT_ORDER)}
    names = sorted(results.parts, key=lambda n: order.get(n, len(order)))
    parts = {name: part_json(results.parts[name]) for name in names}
    silo = parts.pop("cross_silo", {"methods": {}})
    out: dict[str, Any] = {"methods": silo.pop("methods")}
    out["cross_silo"] = silo
    out.update(parts)
    sections = {n: out[n] for n in names}
    sections["cross_silo"] = {**silo, "methods": out["methods"]}
    out["comparisons"] = [c.as_dict() for c in comparisons(sections, LABELS)]
    out["claims"] = [c.as_dict() for c in check_claims(sections, LABELS, SETTING_NAMES)]
    out["claim_rule"] = RULE
    out["convergence_rule"] = (
        "val_change = validation accuracy at the last round minus at the start of the last "
        f"20% of rounds, mean over the reported runs; |val_change| > {100 * CONVERGED:g} point "
        "= not converged"
    )
    out["missing_runs"] = missing_runs(results)
    out["compute"] = compute(results)
    out["plan"] = results.plan.name
    out["trained_at"] = sorted({r.commit for r in results.records if r.ok})
    out["commit"] = results.commit
    out["command"] = results.command
    return out


def write_report(results: StudyResults, out_dir: str | Path) -> list[Path]:
    """Write ``results.json``, ``results.md`` and the plots under ``out_dir``; return the paths."""
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    data = results_json(results)
    written = [out / "results.json", out / "results.md"]
    written[0].write_text(json.dumps(data, indent=2) + "\n")
    written[1].write_text(results_markdown(data))
    for name, part in results.parts.items():
        path = out / "img" / image_name(name)
        section = {"methods": data["methods"]} if name == "cross_silo" else data[name]
        if part.part.heldout:
            plot_heldout(section, part.part.title, path)
        else:
            runs = {m: part.reported.get(part.main_key(m), []) for m in part.part.methods}
            plot_curves(runs, part.part.title, path)
        written.append(path)
    return written

"""Conducting the study: tuning by validation accuracy, reported seeds, reuse, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mini_study import MINI

from fedwon.study.plan import Candidate
from fedwon.study.runner import StudyResults, choose, run_study
from fedwon.study.runs import RunRecord, RunSpec


def record(lr: float, val: float | None, error: str = "") -> RunRecord:
    spec = RunSpec("p", "fedavg", Candidate(lr), 0, "tune")
    scores = None if val is None else {"accuracy": val}
    return RunRecord(spec, "", "trained", 0.0, {}, [], 0.0, "c", val=scores, error=error)


def test_choose_best_validation_earliest_on_ties_never_a_failure() -> None:
    assert choose([record(0.01, 0.5), record(0.02, 0.7), record(0.05, 0.7)]) == Candidate(0.02)
    assert choose([record(0.01, 0.5), record(0.1, 0.9, error="diverged")]) == Candidate(0.01)
    assert choose([record(0.01, float("nan")), record(0.02, 0.1)]) == Candidate(0.02)
    assert choose([record(0.1, None, error="diverged")]) is None


def test_the_study_tunes_on_validation_then_runs_the_reported_seeds(
    mini_results: StudyResults,
) -> None:
    silo = mini_results.parts["cross_silo"]
    fedbn = silo.tuning["fedbn"]
    assert [r.spec.candidate.lr for r in fedbn] == [0.01, 0.05]
    assert all(r.spec.seed == 0 and r.spec.role == "tune" and r.val for r in fedbn)
    assert silo.chosen["fedbn"] == choose(fedbn)
    assert silo.chosen["fedwon"] == Candidate(0.05, 0.32)
    for method in ("fedbn", "fedwon"):
        runs = silo.reported[method]
        assert [r.spec.seed for r in runs] == [1, 2]  # the tuning seed is never reported
        assert all(r.spec.candidate == silo.chosen[method] and r.val is None for r in runs)
    device = mini_results.parts["cross_device"]
    assert "batch_size=1" in device.refused["fedavg"] and "fedavg" not in device.reported
    dg = mini_results.parts["domain_generalization"]
    assert dg.chosen == {"fedbn": silo.chosen["fedbn"]} and not dg.tuning  # reused, not tuned
    held = [r.spec.heldout for r in dg.reported["fedbn"]]
    assert held == ["mnist", "usps", "svhn"]
    for r in dg.reported["fedbn"]:
        assert set(r.heldout["per_domain"]) == {r.spec.heldout}  # type: ignore[index]
        assert set(r.test["per_domain"]) == {"mnist", "usps", "svhn"} - {r.spec.heldout}
    assert len(mini_results.records) == 3 + 4 + 1 + 1 + 3


def test_a_second_study_reuses_every_run(mini_results: StudyResults, mini_cache: Path) -> None:
    seen: list[tuple[int, int, str]] = []
    again = run_study(
        MINI,
        mini_cache,
        command="again",
        on_run=lambda done, total, r: seen.append((done, total, r.status)),
    )
    assert [s for _, _, s in seen] == ["cached"] * 12
    assert [(d, t) for d, t, _ in seen] == [(i, 12) for i in range(1, 13)]
    assert [r.test for r in again.records] == [r.test for r in mini_results.records]


def _rows(path: Path) -> list[dict[str, object]]:
    """A run's metrics.jsonl without the wall-clock seconds (the only field allowed to differ)."""
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]


@pytest.mark.slow  # ~30 s: spawned workers import torch and Flower
def test_two_jobs_give_the_same_study_as_one(
    mini_results: StudyResults, mini_cache: Path, tmp_path: Path
) -> None:
    """``fedwon study --jobs 2`` (spawned workers, runs finishing in any order) trains exactly
    the runs ``--jobs 1`` trains: same directories, configs, metrics and choices."""
    two = run_study(MINI, tmp_path, command="pytest mini study", jobs=2)
    assert [r.status for r in two.records] == ["trained"] * 12
    assert [r.spec for r in two.records] == [r.spec for r in mini_results.records]
    for one, other in zip(mini_results.records, two.records, strict=True):
        a, b = Path(one.path), Path(other.path)
        assert a.relative_to(mini_cache) == b.relative_to(tmp_path)  # same config digest
        assert (a / "config.toml").read_text() == (b / "config.toml").read_text()
        assert _rows(a) == _rows(b), a.name
        assert (one.test, one.val, one.heldout) == (other.test, other.val, other.heldout)
    for name, part in mini_results.parts.items():
        assert two.parts[name].chosen == part.chosen

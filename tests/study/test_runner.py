"""Conducting the study: halving on the tuning seed, reported seeds only, the AGC arms, runs
answered by their records, and a report rebuilt from records alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from mini_study import MINI

import fedwon.simulation
import fedwon.study.runs
from fedwon.study.part import TUNING_SEED
from fedwon.study.report import write_report
from fedwon.study.runner import StudyResults, run_study


def test_the_study_tunes_on_seed_0_by_halving_and_reports_only_the_other_seeds(
    mini_results: StudyResults,
) -> None:
    silo = mini_results.parts["cross_silo"]
    fedbn = silo.searches["fedbn"]
    runs = fedbn.runs
    rung1 = {p: r.val_at(1) for (p, rounds), r in runs.items() if rounds == 1}
    assert set(rung1) == {(0.03,), (0.1,)}
    better = max(sorted(rung1), key=lambda p: rung1[p] or 0.0)  # ties: the smaller lr
    assert [p for p, rounds in runs if rounds == 2] == [better]  # the better half goes on
    assert runs[(better, 2)].status == "resumed"  # from its rung-1 checkpoint, not retrained
    assert runs[(better, 2)].key == runs[(better, 1)].key
    assert all(r.spec.seed == TUNING_SEED and r.spec.role == "tune" for r in runs.values())
    assert silo.chosen["fedbn"].lr == better[0]
    for part in mini_results.parts.values():
        for key, reported in part.reported.items():
            assert sorted({r.spec.seed for r in reported}) == sorted(part.part.seeds), key
            assert TUNING_SEED not in {r.spec.seed for r in reported}
            assert all(r.spec.candidate == part.chosen[key] for r in reported)
            stops = {part.part.convergence_from, part.part.num_rounds}
            assert all(set(r.val) == stops for r in reported)  # validated at both stops
    # FedWon: two AGC arms searched and reported; the main row is the better at the end
    assert set(silo.searches) == {"fedbn", "fedwon:all_but_head", "fedwon:off"}
    assert set(silo.reported) == {"fedbn", "fedwon:all_but_head", "fedwon:off"}
    main = silo.main_key("fedwon")
    T = silo.part.num_rounds
    scores = {k: s.result.score(s.chosen, T) for k, s in silo.searches.items()}  # type: ignore[arg-type]
    assert scores[main] == max(scores["fedwon:all_but_head"], scores["fedwon:off"])
    device = mini_results.parts["cross_device"]
    assert "batch_size=1" in device.refused["fedavg"] and device.main_key("fedwon") == (
        "fedwon:nfnets"
    )
    dg = mini_results.parts["domain_generalization"]
    assert not dg.searches and dg.chosen == {"fedbn": silo.chosen["fedbn"]}  # reused
    assert [r.spec.heldout for r in dg.reported["fedbn"]] == ["mnist", "usps", "svhn"]
    for r in dg.reported["fedbn"]:
        assert set(r.heldout["per_domain"]) == {r.spec.heldout}  # type: ignore[index]


def test_a_done_part_leaves_no_checkpoint_behind(
    mini_results: StudyResults, mini_dirs: tuple[Path, Path]
) -> None:
    cache, _ = mini_dirs
    runs = [p for p in cache.rglob("config.toml")]
    assert len(runs) == len({r.key for r in mini_results.records})
    assert not [p for p in cache.rglob("checkpoint*") if p.is_dir()]


def test_a_second_study_is_answered_by_the_records(
    mini_results: StudyResults, mini_dirs: tuple[Path, Path]
) -> None:
    cache, records = mini_dirs
    seen: list[str] = []
    again = run_study(
        MINI, cache, records=records, command="again", on_run=lambda d, t, r: seen.append(r.status)
    )
    assert seen == ["recorded"] * len(mini_results.records)
    assert [r.val_at(r.rounds) for r in again.records] == [
        r.val_at(r.rounds) for r in mini_results.records
    ]


def test_the_records_alone_rebuild_the_report_byte_for_byte_without_training(
    mini_results: StudyResults,
    mini_dirs: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh clone: no cache, only the committed records. Nothing may train or evaluate."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a run was trained although its record answers")

    monkeypatch.setattr(fedwon.simulation, "run_simulation", forbidden)
    monkeypatch.setattr(fedwon.study.runs, "split_accuracy", forbidden)
    monkeypatch.setattr(fedwon.study.runs, "heldout_accuracy", forbidden)
    _, records = mini_dirs
    rebuilt = run_study(
        MINI, tmp_path / "fresh-cache", records=records, command="pytest mini study"
    )
    assert {r.status for r in rebuilt.records} == {"recorded"}
    first = write_report(mini_results, tmp_path / "a")
    second = write_report(rebuilt, tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert not (tmp_path / "fresh-cache" / "cross_silo").exists()  # no run directory made


@pytest.mark.slow  # ~40 s: spawned workers import torch and Flower
def test_two_jobs_give_the_same_study_as_one(mini_results: StudyResults, tmp_path: Path) -> None:
    """``fedwon study --jobs 2`` (spawned workers) trains exactly the runs ``--jobs 1`` trains:
    same keys, the same validation scores, the same choices."""
    two = run_study(MINI, tmp_path / "c", records=tmp_path / "r", command="x", jobs=2)
    assert [r.key for r in two.records] == [r.key for r in mini_results.records]
    for one, other in zip(mini_results.records, two.records, strict=True):
        assert (one.test, one.val, one.heldout) == (other.test, other.val, other.heldout)
    for name, part in mini_results.parts.items():
        assert two.parts[name].chosen == part.chosen
        assert two.parts[name].main_arm == part.main_arm

"""The report: results.json's schema, the markdown made from it alone, the convergence column,
plots, byte-stable."""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from fedwon.study.report import CONVERGED, results_json, results_markdown, write_report
from fedwon.study.runner import StudyResults

ENTRY_KEYS = {"mean", "std", "per_domain", "seeds", "lr", "agc_clip", "val_change", "converged"}


def check_entry(entry: dict[str, Any], seeds: int, domains: set[str]) -> None:
    assert set(entry) >= ENTRY_KEYS
    assert entry["seeds"] == seeds and set(entry["per_domain"]) == domains
    assert 0.0 <= entry["mean"] <= 1.0 and all(0 <= v <= 1 for v in entry["per_domain"].values())
    assert entry["mean"] == pytest.approx(sum(entry["per_domain"].values()) / len(domains))
    assert (entry["std"] is None) == (seeds < 2)


def test_results_json_schema(mini_results: StudyResults) -> None:
    data = results_json(mini_results)
    assert set(data["methods"]) == {"fedbn", "fedwon"}
    for entry in data["methods"].values():
        check_entry(entry, seeds=2, domains={"mnist", "usps"})
    assert data["methods"]["fedwon"]["agc_clip"] in (0.0, 0.32)
    assert data["methods"]["fedwon"]["agc_arm"] in ("all_but_head", "off")
    silo = data["cross_silo"]
    assert silo["seeds"] == [1, 2] and silo["settings"]["val_fraction"] == 0.1
    assert silo["schedule"] == {"num_rounds": 2, "rungs": [1, 2], "convergence_from": 1}
    assert set(silo["agc_ablation"]) == {"all_but_head", "off"}
    assert silo["agc_ablation"][data["methods"]["fedwon"]["agc_arm"]] == data["methods"]["fedwon"]
    tuning = silo["tuning"]["fedbn"]
    assert [p["lr"] for p in tuning["grid"]] == [0.03, 0.1] and tuning["seed"] == 0
    assert tuning["rungs"] == [1, 2] and tuning["bounds"] == {"lr": [0.03, 0.1]}
    assert [len(p["val"]) for p in tuning["grid"]] in ([2, 1], [1, 2])  # one went on to rung 2
    assert tuning["chosen"]["lr"] == data["methods"]["fedbn"]["lr"]
    assert tuning["at_bound"] == {"lr": tuning["chosen"]["lr"]}  # a two-point ladder: all bounds
    assert set(silo["tuning"]) == {"fedbn", "fedwon:all_but_head", "fedwon:off"}
    device = data["cross_device"]
    check_entry(device["methods"]["fedwon"], seeds=1, domains={"mnist", "usps"})
    assert device["methods"]["fedwon"]["agc_rule"] == "nfnets"
    assert device["refused"]["fedavg"].startswith("invalid config: batch_size=1")
    dg = data["domain_generalization"]
    check_entry(dg["methods"]["fedbn"], seeds=1, domains={"mnist", "usps", "svhn"})
    assert "average of the clients' local" in dg["note"]
    assert dg["tuning"] == "values chosen in cross_silo"
    assert {c["claim"]: c["verdict"] for c in data["claims"]}  # every claim has a verdict
    assert data["command"] == "pytest mini study" and data["plan"] == "mini"
    assert data["commit"] and data["trained_at"]
    cost = data["compute"]
    assert cost["runs"] == len({r.key for r in mini_results.records})
    assert cost["train_seconds"] > 0 and cost["eval_seconds"] > 0


def test_the_convergence_column_is_the_change_of_validation_over_the_last_fifth(
    mini_results: StudyResults,
) -> None:
    """val_change = mean over the reported runs of val(T) − val(T − round(0.2·T)); more than
    one point either way is "not converged", and the markdown says so in bold."""
    results = copy.deepcopy(mini_results)
    silo = results.parts["cross_silo"]
    start, end = silo.part.convergence_from, silo.part.num_rounds
    runs = silo.reported["fedbn"]
    for r, (a, b) in zip(runs, [(0.50, 0.56), (0.60, 0.62)], strict=True):
        r.val = {start: {"accuracy": a}, end: {"accuracy": b}}
    entry = results_json(results)["methods"]["fedbn"]
    assert entry["val_change"] == pytest.approx(statistics.fmean([0.06, 0.02]))
    assert entry["converged"] is False and CONVERGED == 0.01
    text = results_markdown(results_json(results))
    assert "**+4.0 (not converged)**" in text
    assert (
        "**Not converged** (|Δval| > 1 point over the last 20% of rounds): FedBN in cross-silo"
        in text
    )
    for r, (a, b) in zip(runs, [(0.50, 0.505), (0.60, 0.595)], strict=True):
        r.val = {start: {"accuracy": a}, end: {"accuracy": b}}
    assert results_json(results)["methods"]["fedbn"]["converged"] is True


def test_markdown_comes_from_the_json_alone(mini_results: StudyResults) -> None:
    data = results_json(mini_results)
    text = results_markdown(json.loads(json.dumps(data)))  # a JSON round trip changes nothing
    assert text == results_markdown(data)
    assert "## Claims" in text and "Partial study** (`mini`)" in text  # not the full plan
    assert "## Method" in text and "successive halving" in text
    assert "Seed 0 only tunes: no tuning run is reported." in text
    fedbn = data["methods"]["fedbn"]
    assert f"| FedBN | {100 * fedbn['per_domain']['mnist']:.1f} |" in text
    assert "FedAvg (BN) is refused before training: `invalid config: batch_size=1" in text
    assert "FedWon's AGC ablation" in text and "| no AGC |" in text
    assert "| lr | λ | 1 round | 2 rounds |" in text  # FedWon's rung table names λ
    assert "sits on the" in text  # a choice on a bound is flagged in its table
    assert "**Chosen on a bound**" in text and "FedBN lr " in text  # and visibly
    assert "| setting | vs FedAvg (BN) | vs FedBN |" in text  # per setting, each baseline
    assert "| cross-device, batch 1 | refused | — |" in text


def test_write_report_files_and_byte_identical_rebuild(
    mini_results: StudyResults, tmp_path: Path
) -> None:
    paths = write_report(mini_results, tmp_path / "a")
    names = sorted(p.relative_to(tmp_path / "a").as_posix() for p in paths)
    assert names == [
        "img/study_cross_device.png",
        "img/study_cross_silo.png",
        "img/study_domain_generalization.png",
        "results.json",
        "results.md",
    ]
    assert all(p.stat().st_size > 0 for p in paths)
    again = write_report(mini_results, tmp_path / "b")
    for first, second in zip(paths, again, strict=True):
        assert first.read_bytes() == second.read_bytes(), first.name


def test_a_reported_seed_that_diverged_is_a_result_beside_its_table(
    mini_results: StudyResults,
) -> None:
    """FedWon without AGC at batch size 2 diverged on every reported seed: that is evidence
    about the configuration, said beside the part's tables, not a missing run to retry."""
    results = copy.deepcopy(mini_results)
    error = "RoundFailedError: round 173 train: 0 of 2 clients returned usable results (...)"
    silo = results.parts["cross_silo"].reported["fedbn"]
    silo[1] = dataclasses.replace(
        silo[1], status="failed", test={}, curve=[], error=error, diverged=True
    )
    data = results_json(results)
    assert data["missing_runs"] == []
    assert data["cross_silo"]["diverged"] == [
        {"method": "fedbn", "seed": 2, **silo[1].spec.candidate.as_dict(), "round": 173}
    ]
    fedbn = data["methods"]["fedbn"]
    assert (fedbn["seeds"], fedbn["planned_seeds"], fedbn["failed_runs"]) == (1, 2, 1)
    text = results_markdown(data)
    assert "## Missing runs" not in text
    assert "**Diverged** (reported seeds at the chosen values" in text
    assert f"FedBN lr {fedbn['lr']:g}: seed 2 at round 173." in text


def test_failed_runs_are_listed_and_shorten_the_seed_count(mini_results: StudyResults) -> None:
    results = copy.deepcopy(mini_results)
    error = "checkpoint file /c/checkpoint/arrays.npz cannot be read (BadZipFile: not a zip)"
    silo = results.parts["cross_silo"].reported["fedbn"]
    silo[1] = dataclasses.replace(silo[1], status="failed", test={}, curve=[], error=error)
    dg = results.parts["domain_generalization"].reported["fedbn"]
    dg[2] = dataclasses.replace(dg[2], status="failed", test={}, heldout=None, error="boom")
    data = results_json(results)
    assert results_json(mini_results)["missing_runs"] == []
    fedbn = data["methods"]["fedbn"]
    assert (fedbn["seeds"], fedbn["planned_seeds"], fedbn["failed_runs"]) == (1, 2, 1)
    assert fedbn["mean"] == pytest.approx(silo[0].test["accuracy"])  # the seed that ran
    assert "fedbn" not in data["domain_generalization"]["methods"]  # its one seed is broken
    missing = data["missing_runs"]
    assert [(m["part"], m["method"], m["seed"], m["error"]) for m in missing] == [
        ("cross_silo", "fedbn", 2, error),
        ("domain_generalization", "fedbn", 1, "boom"),
    ]
    assert missing[1]["heldout"] == "svhn" and missing[0]["run"].startswith("cross_silo/fedbn-")
    text = results_markdown(data)
    assert "## Missing runs" in text and "2 planned runs have no result" in text
    assert f"- cross_silo FedBN lr={fedbn['lr']:g} seed 2 (report): failed: `{error}`" in text
    assert "- domain_generalization FedBN lr=" in text and "held-out svhn (report)" in text
    assert "| **1 of 2** |" in text  # the table's seed count says it too


def test_plot_titles_drop_the_markdown_code_spans_of_part_titles() -> None:
    from fedwon.study.plan import FULL
    from fedwon.study.plots import plain

    title = FULL.part("cross_device").title
    assert "`cnn-tiny`" in title and plain(title).endswith("10 per round, cnn-tiny")

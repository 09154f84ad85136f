"""The report: results.json's schema, the markdown made from it alone, plots, byte-stable."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from fedwon.study.report import results_json, results_markdown, write_report
from fedwon.study.runner import StudyResults

ENTRY_KEYS = {"mean", "std", "per_domain", "seeds", "lr", "agc_clip"}


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
    assert data["methods"]["fedwon"]["agc_clip"] == 0.32
    silo = data["cross_silo"]
    assert silo["seeds"] == [1, 2] and silo["settings"]["val_fraction"] == 0.1
    tuning = silo["tuning"]["fedbn"]
    assert [p["lr"] for p in tuning["grid"]] == [0.01, 0.05] and tuning["seed"] == 0
    assert all(0 <= p["val_accuracy"] <= 1 for p in tuning["grid"])
    assert tuning["chosen"]["lr"] == data["methods"]["fedbn"]["lr"]
    assert tuning["chosen_at_grid_edge"] is True  # a two-point grid has only edges
    device = data["cross_device"]
    check_entry(device["methods"]["fedwon"], seeds=1, domains={"mnist", "usps"})
    assert device["refused"]["fedavg"].startswith("invalid config: batch_size=1")
    dg = data["domain_generalization"]
    check_entry(dg["methods"]["fedbn"], seeds=1, domains={"mnist", "usps", "svhn"})
    assert "average of the clients' local" in dg["note"]
    assert dg["tuning"] == "values chosen in cross_silo"
    assert {c["claim"]: c["verdict"] for c in data["claims"]}  # every claim has a verdict
    assert data["command"] == "pytest mini study" and data["plan"] == "mini"
    assert data["commit"] and data["trained_at"]


def test_markdown_comes_from_the_json_alone(mini_results: StudyResults) -> None:
    data = results_json(mini_results)
    text = results_markdown(json.loads(json.dumps(data)))  # a JSON round trip changes nothing
    assert text == results_markdown(data)
    assert "## Claims" in text and "Partial study** (`mini`)" in text  # not the full plan
    fedbn = data["methods"]["fedbn"]
    row = f"| FedBN | {100 * fedbn['per_domain']['mnist']:.1f} |"
    assert row in text
    assert "FedAvg (BN) is refused before training: `invalid config: batch_size=1" in text
    assert "lr 0.05, AGC 0.32 →" in text  # FedWon's grid names its clip


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

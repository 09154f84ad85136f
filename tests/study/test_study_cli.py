"""``fedwon study --quick`` end to end: every part, every method, the schema, a rebuild from
the records alone that reproduces the files byte for byte, and ``make report`` pointing at this
command."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from lock_holder import holder
from typer.testing import CliRunner

from fedwon.cli import cli
from fedwon.run.directory import LOCK_FILE
from fedwon.study.plan import FULL, METHODS, QUICK

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent.parent


def test_make_report_targets_call_the_study_command() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(
        r"^report: setup\n\t\$\(BIN\)/python -m fedwon.cli study --jobs", makefile, re.M
    )
    assert re.search(r"^report-quick: setup\n\t.* study --quick\n", makefile, re.M)
    result = runner.invoke(cli, ["study", "--help"])
    for option in ("--quick", "--part", "--records", "--records-only", "--estimate"):
        assert option in result.output
    bad = runner.invoke(cli, ["study", "--part", "cross_sile"])
    assert bad.exit_code == 2
    assert (
        "unknown study part 'cross_sile'; parts: ['cross_device', 'cross_device_bs2'" in bad.output
    )


def test_estimate_prints_the_plans_cost_and_runs_nothing(tmp_path: Path) -> None:
    result = runner.invoke(cli, ["study", "--estimate", "--jobs", "2", "--cache", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "cross_device" in result.output and "with --jobs 2 at the pilot's speed" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_part_brings_the_part_whose_choices_it_reuses() -> None:
    assert [p.name for p in QUICK.parts] == [p.name for p in FULL.parts]
    plan = FULL.only(["domain_generalization"])
    assert [p.name for p in plan.parts] == ["cross_silo", "domain_generalization"]
    assert plan.name == "full (parts: cross_silo, domain_generalization)"
    assert FULL.only([p.name for p in FULL.parts]) is FULL


def test_a_device_puts_every_run_there_and_keeps_their_records() -> None:
    """``--device cpu`` or ``cuda`` sets every run's device, a machine key: the run keys (and so
    the committed records) are those of the default ``auto``."""
    from fedwon.study.part import Candidate
    from fedwon.study.runs import RunSpec, run_config, run_key

    assert QUICK.on_device("auto") is QUICK
    on_cpu = QUICK.on_device("cpu")
    for before, after in zip(QUICK.parts, on_cpu.parts, strict=True):
        assert after.settings == {**before.settings, "device": "cpu"}
        spec = RunSpec(before.name, before.methods[0], Candidate(0.03), 1, "report")
        assert run_config(after, spec).to_flat()["device"] == "cpu"
        assert run_config(before, spec).to_flat()["device"] == "auto"
        assert run_key(spec, run_config(after, spec)) == run_key(spec, run_config(before, spec))


def test_a_device_the_machine_lacks_is_refused_in_one_line(tmp_path: Path) -> None:
    import torch

    bad = runner.invoke(cli, ["study", "--quick", "--device", "gpu", "--cache", str(tmp_path)])
    assert bad.exit_code == 2 and "--device must be auto, cpu or cuda, got 'gpu'" in bad.output
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cuda = runner.invoke(cli, ["study", "--quick", "--device", "cuda", "--cache", str(tmp_path)])
    assert cuda.exit_code == 2 and "--device cuda: torch sees no CUDA device" in cuda.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_quick_study_is_complete_and_rebuilds_identically_from_its_records(
    tmp_path: Path,
) -> None:
    cache, records, out = tmp_path / "cache", tmp_path / "records", tmp_path / "report"
    args = ["study", "--quick", "--records", str(records), "--out", str(out)]
    first = runner.invoke(cli, [*args, "--cache", str(cache), "--jobs", "2"])
    assert first.exit_code == 0, first.output
    lines = [line for line in first.output.splitlines() if line.startswith("[")]
    assert lines and not any("FAILED" in line for line in lines)

    data = json.loads((out / "results.json").read_text())
    assert set(data["methods"]) == set(METHODS)  # the six methods of the schema
    for name, entry in data["methods"].items():
        assert entry["seeds"] == 2 and isinstance(entry["std"], float), name
        assert isinstance(entry["mean"], float) and isinstance(entry["lr"], float)
        assert len(entry["per_domain"]) == 5 and "val_change" in entry
    assert set(data["cross_device"]["methods"]) == {"fedavg_gn", "fedavg_ws_gn", "fedwon"}
    assert "batch_size=1" in data["cross_device"]["refused"]["fedbn"]
    assert set(data["cross_device_bs2"]["methods"]) == set(FULL.part("cross_device_bs2").methods)
    for name in ("label_skew_alpha01", "label_skew_alpha05", "label_skew"):
        assert set(data[name]["methods"]) == {"fedavg", "fedavg_gn", "fedbn", "fedwon"}
        assert data[name]["fedbn_averaged"]["mean"] >= 0
        assert set(data[name]["agc_ablation"]) == {"all_but_head", "nfnets", "off"}
    dg = data["domain_generalization"]["methods"]
    assert set(dg) == {"fedavg", "fedbn", "fedwon"}
    assert all(len(e["per_domain"]) == 5 for e in dg.values())  # every domain held out once
    assert data["command"] == "fedwon study --quick"
    text = (out / "results.md").read_text()
    for section in ("## Claims", "## Method", "## Cross-silo", "## Cross-device", "## Label skew"):
        assert section in text
    assert sorted(p.name for p in (out / "img").iterdir()) == sorted(
        f"study_{p.name}.png" for p in QUICK.parts
    )

    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    fresh = ["--cache", str(tmp_path / "fresh"), "--records-only"]  # a fresh clone's checkout
    second = runner.invoke(cli, [*args, *fresh])
    assert second.exit_code == 0, second.output
    lines = [line for line in second.output.splitlines() if line.startswith("[")]
    assert lines and all(": recorded" in line for line in lines)
    assert f"{len(lines)} runs: 0 trained, 0 resumed, {len(lines)} reused, 0 failed" in (
        second.output
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files

    gone = next(p for p in sorted((records / "cross_silo").iterdir()) if "seed1" in p.name)
    shutil.rmtree(gone)
    third = runner.invoke(cli, [*args, *fresh, "--out", str(tmp_path / "third")])
    assert third.exit_code == 2, third.output
    error = [line for line in third.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"run cross_silo/{gone.name} is needed at round" in error[0]
    assert "but there is no record" in error[0] and not gone.exists()


def test_a_second_study_on_the_same_cache_is_refused_not_recorded_as_failures(
    tmp_path: Path,
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "report"
    args = ["--cache", str(cache), "--records", str(tmp_path / "records"), "--out", str(out)]
    with holder(cache) as proc:  # another `fedwon study` on this cache
        result = runner.invoke(cli, ["study", "--quick", *args])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"study cache {cache} is in use" in error[0]
    assert f"(PID {proc.pid})" in error[0]
    assert "FAILED" not in result.output and not out.exists()
    assert [p.name for p in cache.iterdir()] == [LOCK_FILE]  # left by the killed holder only

"""``fedwon study --quick`` end to end: every part, every method, the schema, a cached rebuild
that reproduces the files byte for byte, and ``make report`` pointing at this command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from lock_holder import holder
from typer.testing import CliRunner

from fedwon.cli import cli
from fedwon.run.directory import LOCK_FILE
from fedwon.study.plan import FULL, METHODS, QUICK
from fedwon.study.runner import count_report_runs, tuning_specs

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent.parent


def test_make_report_targets_call_the_study_command() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(
        r"^report: setup\n\t\$\(BIN\)/python -m fedwon.cli study --jobs", makefile, re.M
    )
    assert re.search(r"^report-quick: setup\n\t.* study --quick\n", makefile, re.M)
    result = runner.invoke(cli, ["study", "--help"])
    assert result.exit_code == 0 and "--quick" in result.output and "--part" in result.output
    bad = runner.invoke(cli, ["study", "--part", "cross_sile"])
    assert bad.exit_code == 2
    assert "unknown study part 'cross_sile'; parts: ['cross_silo', 'cross_device'" in bad.output


def test_a_part_brings_the_part_whose_choices_it_reuses() -> None:
    plan = FULL.only(["domain_generalization"])
    assert [p.name for p in plan.parts] == ["cross_silo", "domain_generalization"]
    assert plan.name == "full (parts: cross_silo, domain_generalization)"
    assert FULL.only([p.name for p in FULL.parts]) is FULL


@pytest.mark.slow
def test_quick_study_is_complete_and_rebuilds_identically(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "report"
    args = ["study", "--quick", "--cache", str(cache), "--out", str(out)]
    first = runner.invoke(cli, [*args, "--jobs", "2"])
    assert first.exit_code == 0, first.output
    total = len(tuning_specs(QUICK)) + count_report_runs(QUICK)
    lines = [line for line in first.output.splitlines() if line.startswith("[")]
    assert len(lines) == total and all("trained" in line for line in lines)
    assert f"{total} runs: {total} trained, 0 resumed, 0 reused, 0 failed" in first.output

    data = json.loads((out / "results.json").read_text())
    assert set(data["methods"]) == set(METHODS)  # the six methods of the schema
    for name, entry in data["methods"].items():
        assert entry["seeds"] == 2 and isinstance(entry["std"], float), name
        assert isinstance(entry["mean"], float) and isinstance(entry["lr"], float)
        assert len(entry["per_domain"]) == 5
    assert set(data["cross_device"]["methods"]) == {"fedavg_gn", "fedavg_ws_gn", "fedwon"}
    assert "batch_size=1" in data["cross_device"]["refused"]["fedavg"]
    assert set(data["label_skew"]["methods"]) == {"fedavg", "fedbn", "fedwon"}
    dg = data["domain_generalization"]["methods"]
    assert set(dg) == {"fedavg", "fedbn", "fedwon"}
    assert all(len(e["per_domain"]) == 5 for e in dg.values())  # every domain held out once
    assert len(data["claims"]) == 7 and data["command"] == "fedwon study --quick"
    text = (out / "results.md").read_text()
    for section in ("## Claims", "## Cross-silo", "## Cross-device", "## Label skew", "## Domain"):
        assert section in text
    assert sorted(p.name for p in (out / "img").iterdir()) == sorted(
        f"study_{p.name}.png" for p in QUICK.parts
    )

    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    lines = [line for line in second.output.splitlines() if line.startswith("[")]
    assert len(lines) == total and all(": cached ·" in line for line in lines)
    assert f"{total} runs: 0 trained, 0 resumed, {total} reused, 0 failed" in second.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_a_second_study_on_the_same_cache_is_refused_not_recorded_as_failures(
    tmp_path: Path,
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "report"
    with holder(cache) as proc:  # another `fedwon study` on this cache
        result = runner.invoke(cli, ["study", "--quick", "--cache", str(cache), "--out", str(out)])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"study cache {cache} is in use" in error[0]
    assert f"(PID {proc.pid})" in error[0]
    assert "FAILED" not in result.output and not out.exists()
    assert [p.name for p in cache.iterdir()] == [LOCK_FILE]  # left by the killed holder only

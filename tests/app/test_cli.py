"""The ``fedwon`` command: refusing bad input before anything starts, run, report."""

import json
from pathlib import Path

from typer.testing import CliRunner

from fedwon.cli import cli

SIMS = Path(__file__).resolve().parents[2] / "sims"
runner = CliRunner()


def test_bad_override_key_is_refused_before_running(tmp_path: Path) -> None:
    result = runner.invoke(
        cli,
        ["run", str(SIMS / "cross_silo.toml"), "--set", "lrr=0.1", "--out", str(tmp_path / "x")],
    )
    assert result.exit_code == 2
    assert "unknown config key 'lrr'" in result.output
    assert not (tmp_path / "x").exists()


def test_bad_recipe_value_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('strategy = "fedswap"\n')
    result = runner.invoke(cli, ["run", str(recipe)])
    assert result.exit_code == 2
    assert "strategy: unknown strategy 'fedswap'; choose one of ['fedavg', 'fedbn', 'fedwon']" in (
        result.output
    )
    recipe.write_text('strategy = "fedprox"\n')
    result = runner.invoke(cli, ["run", str(recipe)])
    assert result.exit_code == 2
    assert "'fedprox' is an aggregator, not a method: set aggregator='fedprox'" in result.output


def test_run_then_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", str(SIMS / "cross_silo.toml"), "--out", str(out)]
    for kv in (
        "model=cnn-tiny",
        "num_rounds=1",
        "train_per_domain=100",
        "test_per_domain=50",
        "engine=fast",
        "num_workers=0",
        "lr=0.1",
    ):
        args += ["--set", kv]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "usps" in result.output and "fedwon" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "fedwon" and summary["rounds"] == 1
    assert set(summary["final"]["per_domain"]) == {"mnist", "mnist_m", "svhn", "usps", "synth"}
    report = runner.invoke(cli, ["report", str(out), "--plot", str(tmp_path / "cmp.png")])
    assert report.exit_code == 0, report.output
    assert "fedwon" in report.output and (tmp_path / "cmp.png").stat().st_size > 0


def test_report_on_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    result = runner.invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "metrics.jsonl not found" in result.output

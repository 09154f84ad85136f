"""``fedwon report`` on runs that did not simply finish: a budget stop, a broken summary."""

import json
from pathlib import Path

from typer.testing import CliRunner

from fedwon.cli import cli

ROW = '{{"round": {r}, "accuracy": 0.{r}, "accuracy/usps": 0.{r}}}\n'


def _run(run_dir: Path, num_rounds: int, last: int, summary: str | None) -> Path:
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(f"strategy = 'fedwon'\nnum_rounds = {num_rounds}\n")
    (run_dir / "metrics.jsonl").write_text("".join(ROW.format(r=r) for r in range(1, last + 1)))
    if summary is not None:
        (run_dir / "summary.json").write_text(summary)
    return run_dir


def test_a_budget_stop_is_not_unfinished_and_a_broken_summary_is_named(tmp_path: Path) -> None:
    privacy = {"strategy": "fedwon", "privacy": {"epsilon": 4.0, "stopped_by_budget": True}}
    dp = _run(tmp_path / "dp", 4, 2, json.dumps(privacy))
    cut = _run(tmp_path / "cut", 2, 2, '{"strategy": "fedw')  # truncated summary.json
    result = CliRunner().invoke(cli, ["report", str(dp), str(cut)])
    assert result.exit_code == 0, result.output
    assert "stopped at the privacy budget after round 2 of 4" in result.stdout
    assert "unfinished: round 2 of 4" not in result.stdout
    assert "cut (unfinished: round 2 of 2, summary.json unreadable)" in " ".join(
        result.stdout.split()
    )
    assert "JSONDecodeError" not in result.stdout and "Traceback" not in result.output

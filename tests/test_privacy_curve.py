"""``fedwon privacy-curve --quick``: every arm runs, the outputs have their documented shape,
and a second invocation reuses the finished run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedwon.cli import cli
from fedwon.config import ConfigError
from fedwon.privacy import compute_epsilon
from fedwon.study.privacy_curve import Arm, CurvePlan, quick_plan, run_curve

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")
RECIPE = Path(__file__).resolve().parents[1] / "sims" / "dp_cross_device.toml"
RUN_KEYS = {
    "name",
    "method",
    "clipping",
    "aggregator",
    "target_epsilon",
    "epsilon",
    "noise_multiplier",
    "accuracy",
    "per_domain",
    "best_accuracy",
    "clipped_fraction",
    "rounds",
    "seconds",
    "run_dir",
    "status",
}


def test_the_arms_are_the_papers_ablation_on_the_recipe() -> None:
    plan = CurvePlan(RECIPE, (2.0, 8.0))
    names = [a.name for a in plan.arms()]
    assert names[:4] == [
        "per_layer+lamb-nodp",
        "flat+fedavg-nodp",
        "per_layer+lamb-eps2",
        "flat+fedavg-eps2",
    ]
    assert len(names) == 2 + 2 * 4 and names[-1] == "flat+lamb-eps8"
    lamb, flat = plan.config(Arm("per_layer+lamb", 2.0)), plan.config(Arm("flat+fedavg", 2.0))
    assert (lamb.server.aggregator, lamb.dp.clipping, flat.server.aggregator, flat.dp.clipping) == (
        "lamb",
        "per_layer",
        "fedavg",
        "flat",
    )
    assert lamb.dp.clip_norm == flat.dp.clip_norm and flat.server.server_lr is None
    assert lamb.replace(aggregator="fedavg", server_lr=None, **{"dp.clipping": "flat"}) == flat
    assert not plan.config(Arm("flat+fedavg", None)).dp.enabled


def test_quick_curve_writes_table_json_and_plot_and_reuses_its_runs(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["privacy-curve", "--quick", "--recipe", str(RECIPE)]
    result = CliRunner().invoke(cli, [*args, "--cache", str(cache), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "[10/10] flat+lamb-eps16: trained" in result.output
    data = json.loads((out / "privacy_results.json").read_text())
    assert data["command"].startswith("fedwon privacy-curve --quick")
    assert data["commit"] and data["setting"]["population"] == 10
    assert len(data["runs"]) == 10
    for run in data["runs"]:
        assert set(run) == RUN_KEYS
        assert 0.0 <= run["accuracy"] <= 1.0 and run["rounds"] == 1
        if run["target_epsilon"] is None:
            assert run["epsilon"] is None and run["noise_multiplier"] is None
        else:  # z calibrated to the target over the run's round, at q = 5/10
            assert run["epsilon"] <= run["target_epsilon"]
            z = run["noise_multiplier"]
            assert run["epsilon"] == pytest.approx(compute_epsilon(z, 0.5, 1, 1e-4))
    table = (out / "privacy_results.md").read_text()
    columns = "per_layer+lamb | flat+fedavg | per_layer+fedavg | flat+lamb"
    assert f"| ε (target) | z | {columns} |" in table
    assert "| ∞ (no DP) | – |" in table and "| 16 |" in table
    assert (out / "img" / "privacy_utility.png").stat().st_size > 0
    # again: every run is reused from its directory, the results are the same
    again = run_curve(quick_plan(RECIPE), cache, tmp_path / "again", "again")
    assert {r["status"] for r in again["runs"]} == {"cached"}
    assert [r["accuracy"] for r in again["runs"]] == [r["accuracy"] for r in data["runs"]]


def test_a_bad_recipe_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["privacy-curve", "--recipe", str(tmp_path / "no.toml")])
    assert result.exit_code == 2 and "not found" in result.output
    with pytest.raises(ConfigError, match=r"unknown config key 'dp\.nois'"):
        bad = tmp_path / "bad.toml"
        bad.write_text(RECIPE.read_text().replace("[dp]", "[dp]\nnois = 1"))
        quick_plan(bad).config(Arm("flat+fedavg", 4.0))

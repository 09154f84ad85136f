"""``fedwon privacy-curve --plan population``: the plan's arms and cohort rule, the tables built
from run records alone (no training), and a tiny end-to-end run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedwon.cli import cli
from fedwon.strategies import RoundFailedError
from fedwon.study import population_curve
from fedwon.study.population_curve import (
    PROVENANCE_FILE,
    CohortRule,
    PopArm,
    PopulationPlan,
    full_plan,
    run_population,
)

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")
RECIPE = Path(__file__).resolve().parents[1] / "sims" / "dp_cross_device.toml"
POPULATIONS = (10**4, 10**5, 10**6, 10**7)


@pytest.fixture(scope="module")
def plan() -> PopulationPlan:
    return full_plan(RECIPE)


def test_cohort_rule_keeps_q_fixed_and_delta_below_one_over_n() -> None:
    rule = CohortRule()
    for n in (10**3, 10**4, 12_345, 10**5, 10**6, 10**7, 10**9):
        assert rule.noise_cohort(n) == round(0.005 * n)
        assert 0 < rule.delta(n) < 1 / n
        assert rule.delta(n) == pytest.approx(n**-1.1, rel=0.05)  # two significant digits
    assert rule.overrides(10**6) == {
        "dp.population": 10**6,
        "dp.noise_cohort_size": 5000,
        "dp.delta": 2.5e-7,
    }


def test_population_part_is_every_epsilon_and_population_beside_no_dp(
    plan: PopulationPlan,
) -> None:
    arms = plan.population_arms()
    assert len(arms) == 2 * (1 + 3 * 4)
    assert {a.model for a in arms} == {"cnn-tiny", "resnet18-tiny"}
    for model in ("cnn-tiny", "resnet18-tiny"):
        private = [a for a in arms if a.model == model and a.private]
        assert {(a.target_epsilon, a.population) for a in private} == {
            (e, n) for e in (2.0, 4.5, 7.2) for n in POPULATIONS
        }
        assert [a for a in arms if a.model == model and not a.private] == [
            PopArm(model, "per_layer+lamb", None, None)
        ]
    rates = set()
    for arm in arms:
        cfg = plan.config(arm)
        assert cfg.model.model == arm.model and cfg.resolved_norm == "ws"
        assert cfg.server.aggregator == "lamb" and cfg.seed == 0
        if not arm.private:
            assert not cfg.dp.enabled
            continue
        assert arm.population is not None
        n, m = arm.population, cfg.dp.noise_cohort_size
        assert cfg.dp.enabled and cfg.dp.target_epsilon == arm.target_epsilon
        assert (cfg.dp.clipping, cfg.dp.split, cfg.dp.population) == ("per_layer", "uniform", n)
        assert m >= cfg.sampled_per_round and m == round(0.005 * n)  # the cohort rule
        assert cfg.dp.delta < 1 / n
        check = cfg.dp_check()
        assert check.population == n and not check.warnings
        rates.add(round(check.sample_rate, 12))
    assert rates == {0.005}  # q = M / N is the same for every population
    # the recipe's model as the recipe trains it
    recipe_cfg = plan.config(PopArm("cnn-tiny", "per_layer+lamb", 2.0, 10**4))
    assert (recipe_cfg.server.num_rounds, recipe_cfg.sampled_per_round) == (40, 50)


def test_per_layer_part_is_clipping_by_server_step_over_three_seeds(
    plan: PopulationPlan,
) -> None:
    arms = plan.layer_arms()
    private = [a for a in arms if a.private]
    assert len(private) == 6 * 3
    assert {(a.target_epsilon, a.population, a.model) for a in private} == {
        (7.2, 10**6, "resnet18-tiny")
    }
    assert sorted({a.seed for a in private}) == [0, 1, 2]
    assert [a.seed for a in private[:6]] == [0] * 6  # whole seeds first
    seen = set()
    for arm in private:
        cfg = plan.config(arm)
        split = cfg.dp.split if cfg.dp.clipping == "per_layer" else "-"
        seen.add((cfg.dp.clipping, split, cfg.server.aggregator))
        assert cfg.dp.noise_cohort_size == 5000 and cfg.dp.delta < 1e-6
    assert seen == {
        (c, s, a)
        for c, s in (("flat", "-"), ("per_layer", "uniform"), ("per_layer", "dim"))
        for a in ("fedavg", "lamb")
    }
    references = [a for a in arms if not a.private]
    assert {plan.config(a).server.aggregator for a in references} == {"fedavg", "lamb"}
    # the arm both parts use trains once
    all_arms = plan.arms()
    assert len(all_arms) == len(set(all_arms)) == 26 + 20 - 2
    assert len({a.name for a in all_arms}) == len(all_arms)


def _fake_record(cfg: Any, record: Path, accuracy: float) -> None:
    """The files a finished run leaves, as a record holds them (no training)."""
    record.mkdir(parents=True)
    (record / "config.toml").write_text(cfg.to_toml())
    rounds = cfg.server.num_rounds
    rows = [{"round": r, "train_loss": 1.0, "time_s": 0.5} for r in range(1, rounds + 1)]
    rows[-1].update({"accuracy": accuracy, "accuracy/mnist": accuracy})
    if cfg.dp.enabled:
        for row in rows:
            row["clipped_fraction"] = 1.0
    (record / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary: dict[str, Any] = {"final": {"accuracy": accuracy}, "best_accuracy": accuracy}
    if cfg.dp.enabled:
        m = cfg.dp.noise_cohort_size
        summary["privacy"] = {
            "epsilon": cfg.dp.target_epsilon - 0.01,
            "delta": cfg.dp.delta,
            "noise_multiplier": 0.5,
            "sample_rate": m / cfg.dp.population,
            "noise_std_on_mean": 0.5 * cfg.dp.clip_norm / m,
            "noise_cohort_size": m,
        }
    (record / "summary.json").write_text(json.dumps(summary))
    (record / PROVENANCE_FILE).write_text(json.dumps({"commit": "abc123"}))


def _accuracy(arm: PopArm) -> float:
    """A distinct, recognizable accuracy per arm."""
    if not arm.private:
        return 0.8 if arm.method.endswith("lamb") else 0.3
    assert arm.population is not None and arm.target_epsilon is not None
    return round(
        0.1 + 0.05 * len(str(arm.population)) + arm.target_epsilon / 100 + arm.seed / 1000, 4
    )


def test_tables_are_built_from_records_without_training(
    plan: PopulationPlan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = tmp_path / "records"
    arms = plan.arms()
    for arm in arms:
        _fake_record(plan.config(arm), records / arm.name, _accuracy(arm))
    missing = arms[-2]  # one arm without a record, one with another config's record
    stale = PopArm("cnn-tiny", "per_layer+lamb", 4.5, 10**5)
    for name in (missing.name, stale.name):
        for f in (records / name).iterdir():
            f.unlink()
        (records / name).rmdir()
    _fake_record(plan.config(stale).replace(num_rounds=39), records / stale.name, 0.99)

    def no_training(*args: object, **kwargs: object) -> str:
        raise AssertionError("records only: nothing may train")

    monkeypatch.setattr(population_curve, "run_arm", no_training)
    out = tmp_path / "out"
    results = run_population(plan, tmp_path / "cache", records, out, "pytest", records_only=True)
    assert sorted(results["missing"]) == sorted([missing.name, stale.name])
    assert {r["status"] for r in results["runs"].values()} == {"recorded"}
    assert len(results["runs"]) == len(arms) - 2 and results["seconds"] > 0
    table = (out / "privacy_population.md").read_text()
    # cnn-tiny at N = 10^5: accuracy 0.1 + 0.05 * 6 + eps / 100; the stale record is not used
    assert "| `cnn-tiny` | 10⁵ | 500 | 3.2e-06 | 42.0 | – | 47.2 | 80.0 |" in table
    assert "| `resnet18-tiny` | 10⁷ | 50,000 | 2e-08 | 52.0 | 54.5 | 57.2 | 80.0 |" in table
    # per-layer table: mean ± sd over seeds 0, 1, 2 at N = 10^6 (0.1 + 0.35 + 0.072 + s/1000)
    assert "| flat | 52.3 ± 0.1 (52.2, 52.3, 52.4) | 52.3 ± 0.1 (52.2, 52.3, 52.4) |" in table
    assert "| no DP | 30.0 (1 seed) | 80.0 (1 seed) |" in table
    assert f"`{missing.name}`" in table and f"`{stale.name}`" in table
    data = json.loads((out / "privacy_population.json").read_text())
    assert data["rule"]["sample_rate"] == 0.005 and data["per_layer"]["seeds"] == [0, 1, 2]
    assert data["runs"][arms[0].name]["trained_at"] == "abc123"
    assert (out / "img" / "privacy_population.png").stat().st_size > 0


def test_quick_plan_end_to_end_through_the_cli_then_from_its_records(tmp_path: Path) -> None:
    cache, records, out = tmp_path / "cache", tmp_path / "records", tmp_path / "out"
    args = ["privacy-curve", "--plan", "population", "--quick", "--recipe", str(RECIPE)]
    paths = ["--cache", str(cache), "--records", str(records), "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, *paths])
    assert result.exit_code == 0, result.output
    assert "[3/3] cnn-tiny-flat+lamb-eps4-N1e2-seed0: trained" in result.output
    data = json.loads((out / "privacy_population.json").read_text())
    assert data["command"] == f"fedwon privacy-curve --plan population --quick --recipe {RECIPE}"
    assert len(data["runs"]) == 3 and not data["missing"]
    private = data["runs"]["cnn-tiny-per_layer+lamb-eps4-N1e2-seed0"]
    assert (private["population"], private["noise_cohort_size"], private["delta"]) == (
        100,
        5,
        0.0063,
    )
    assert private["epsilon"] <= 4.0 and private["noise_std_on_mean"] > 0
    for name in data["runs"]:
        assert sorted(p.name for p in (records / name).iterdir()) == [
            "config.toml",
            "metrics.jsonl",
            "provenance.json",
            "summary.json",
        ]
    # the same tables again, from the records alone (an empty cache: nothing trains)
    again = CliRunner().invoke(
        cli,
        [
            *args,
            "--records-only",
            "--cache",
            str(tmp_path / "empty"),
            "--records",
            str(records),
            "--out",
            str(tmp_path / "again"),
        ],
    )
    assert again.exit_code == 0, again.output
    assert "[3/3] cnn-tiny-flat+lamb-eps4-N1e2-seed0: recorded" in again.output
    rebuilt = json.loads((tmp_path / "again" / "privacy_population.json").read_text())
    assert rebuilt["runs"] == {k: {**v, "status": "recorded"} for k, v in data["runs"].items()}
    assert not (tmp_path / "empty").exists()


def test_records_belong_to_the_population_plan(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["privacy-curve", "--records-only"])
    assert result.exit_code == 2 and "--plan population" in result.output


def test_a_failed_arm_is_a_result_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = population_curve.quick_plan(RECIPE)
    records = tmp_path / "records"
    first, *others = plan.arms()
    for arm in others:
        _fake_record(plan.config(arm), records / arm.name, 0.5)

    def diverged(*args: object, **kwargs: object) -> str:
        raise RoundFailedError("round 3 train: 0 of 5 clients returned usable results")

    monkeypatch.setattr(population_curve, "run_arm", diverged)
    results = run_population(plan, tmp_path / "cache", records, tmp_path / "out", "pytest")
    assert list(results["failed"]) == [first.name] and not results["missing"]
    assert len(results["runs"]) == len(others) and not (records / first.name).exists()
    table = (tmp_path / "out" / "privacy_population.md").read_text()
    assert f"`{first.name}`: round 3 train: 0 of 5 clients" in table


def test_the_committed_tables_are_what_the_committed_records_give(
    plan: PopulationPlan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/privacy_population.md is a function of docs/privacy_study/ (below its header line,
    which names the commit and date that built it)."""
    docs = RECIPE.parents[1] / "docs"
    monkeypatch.setattr(population_curve, "write_outputs", lambda results, out: None)
    results = run_population(
        plan, tmp_path / "cache", docs / "privacy_study", tmp_path, "x", records_only=True
    )
    assert not results["missing"] and len(results["runs"]) == len(plan.arms())
    rebuilt = population_curve.markdown(results).split("\n", 3)[3]
    assert rebuilt == (docs / "privacy_population.md").read_text().split("\n", 3)[3]
    for name in results["runs"]:  # records only: no checkpoint was committed
        assert not (docs / "privacy_study" / name / "checkpoint").exists()

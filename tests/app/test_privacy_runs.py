"""The dp.* keys drive whole runs: epsilon per round in metrics.jsonl, the budget stops a run
cleanly at its last affordable round, LAMB as aggregator, a privacy block in summary.json;
dp.level='sample' runs DP-SGD on the clients and reports the worst client's epsilon."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedwon.config import ConfigError, load_config, make_config
from fedwon.privacy import compute_epsilon
from fedwon.run.directory import RunDir
from fedwon.simulation import run_simulation

DP_RUN: dict[str, Any] = {
    "strategy": "fedwon",
    "model": "cnn-tiny",
    "train_per_domain": 24,
    "test_per_domain": 16,
    "num_clients": 10,
    "clients_per_round": 5,
    "min_clients": 5,
    "num_rounds": 3,
    "lr": 0.1,
    "num_workers": 0,
    "aggregator": "lamb",
    "server_lr": 0.01,
    "dp.enabled": True,
    "dp.noise_multiplier": 0.8,
    "dp.clip_norm": 1.0,
}


def test_a_dp_run_reports_growing_epsilon_and_its_privacy(tmp_path: Path) -> None:
    outcome = run_simulation(make_config(DP_RUN), tmp_path / "run")
    rows = RunDir(tmp_path / "run").metrics()
    eps = [r["epsilon"] for r in rows]
    assert len(eps) == 3 and eps[0] > 0 and eps[0] < eps[1] < eps[2]
    assert eps[-1] == pytest.approx(compute_epsilon(0.8, 5 / 10, 3, 1e-5), rel=1e-9)
    assert all(0.0 <= r["clipped_fraction"] <= 1.0 for r in rows)
    privacy = json.loads((tmp_path / "run" / "summary.json").read_text())["privacy"]
    assert privacy["epsilon"] == pytest.approx(eps[-1])
    assert (privacy["sample_rate"], privacy["noise_multiplier"]) == (0.5, 0.8)
    assert privacy["stopped_by_budget"] is False
    assert outcome.summary["privacy"] == privacy


def test_the_budget_stops_the_run_after_its_last_affordable_round(tmp_path: Path) -> None:
    budget = (compute_epsilon(0.8, 0.5, 2, 1e-5) + compute_epsilon(0.8, 0.5, 3, 1e-5)) / 2
    cfg = make_config({**DP_RUN, "num_rounds": 5, "dp.max_epsilon": budget})
    outcome = run_simulation(cfg, tmp_path / "run")
    assert [r["round"] for r in outcome.rows] == [1, 2]
    assert outcome.rows[-1]["epsilon"] <= budget
    assert outcome.rows[-1]["accuracy"] is not None  # the last round run is evaluated
    assert outcome.summary["privacy"]["stopped_by_budget"] is True
    assert (tmp_path / "run" / "checkpoint" / "state.json").exists()  # and checkpointed


def test_dp_settings_are_checked_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match="min_clients=1 below the 5 clients sampled"):
        make_config({**DP_RUN, "min_clients": 1})
    with pytest.raises(
        ConfigError, match=r"unknown config key 'dp.noise' \(valid keys: dp.enabled"
    ):
        make_config({**DP_RUN, "dp.noise": 1.0})
    with pytest.raises(ConfigError, match=r"set exactly one of dp\.noise_multiplier"):
        make_config({**DP_RUN, "dp.target_epsilon": 3.0})
    cfg = make_config({**DP_RUN, "dp.noise_multiplier": 0.0, "dp.target_epsilon": 3.0})
    assert make_config(cfg.to_flat()) == cfg  # dp.* round-trips through flat keys and TOML
    assert "[dp]" in cfg.to_toml()


SAMPLE_RUN: dict[str, Any] = {
    "strategy": "fedwon",  # norm ws: DP-SGD's per-example gradients need no batch statistics
    "model": "cnn-tiny",
    "train_per_domain": 24,  # one client per domain: 24 examples each
    "test_per_domain": 16,
    "num_clients": 5,
    "num_rounds": 3,
    "batch_size": 8,  # 3 Poisson batches an epoch: q = 1/3
    "lr": 0.1,
    "num_workers": 0,
    "checkpoint_every": 0,
    "dp.enabled": True,
    "dp.level": "sample",
    "dp.noise_multiplier": 1.0,
    "dp.clip_norm": 1.0,
}


def test_a_dp_sgd_run_reports_each_clients_epsilon_as_opacus_accounts_it(tmp_path: Path) -> None:
    """Every client trains in every round (3 steps each): after round r each has taken 3r
    DP-SGD steps at q = 1/3, and the row's epsilon is Opacus' accountant on those steps."""
    outcome = run_simulation(make_config(SAMPLE_RUN), tmp_path / "run")
    rows = RunDir(tmp_path / "run").metrics()
    for r, row in enumerate(rows, start=1):
        accountant = RDPAccountant()
        accountant.history = [(1.0, 1 / 3, 3 * r)]
        assert row["epsilon"] == accountant.get_epsilon(1e-5)
        assert "clipped_fraction" not in row  # a user-level diagnostic
    assert rows[0]["epsilon"] < rows[1]["epsilon"] < rows[2]["epsilon"]
    assert all(r["train_loss"] is not None and r["clients"] == 5 for r in rows)
    privacy = outcome.summary["privacy"]
    assert privacy["level"] == "sample" and privacy["epsilon"] == rows[-1]["epsilon"]
    assert (privacy["noise_multiplier"], privacy["clipping"]) == (1.0, "per_layer")


def test_dp_sgd_runs_are_refused_for_batchnorm_and_fedprox() -> None:
    with pytest.raises(ConfigError, match=r"dp\.level='sample' \(DP-SGD\) cannot train BatchNorm"):
        make_config({**SAMPLE_RUN, "strategy": "fedavg", "norm": "bn"})
    with pytest.raises(ConfigError, match="FedProx's proximal term would be ignored"):
        make_config({**SAMPLE_RUN, "aggregator": "fedprox", "proximal_mu": 0.01})


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("engine", [{"engine": "flower"}, {"num_workers": 2}])
def test_dp_sgd_runs_are_the_same_on_every_engine(tmp_path: Path, engine: dict[str, Any]) -> None:
    """Clients' DP-SGD histories live in Context.state: on Flower's engine and on the fast
    engine's Ray workers too. Seeded noise and batches give the same model, bit for bit."""
    here = run_simulation(make_config(SAMPLE_RUN), tmp_path / "here")
    there = run_simulation(make_config({**SAMPLE_RUN, **engine}), tmp_path / "there")
    assert [r["epsilon"] for r in there.rows] == [r["epsilon"] for r in here.rows]
    for key, array in there.arrays.items():
        np.testing.assert_array_equal(array.numpy(), here.arrays[key].numpy(), err_msg=key)


def test_the_dp_cross_device_recipe_runs(tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[2] / "sims" / "dp_cross_device.toml"
    cfg = load_config(recipe, ["num_rounds=2", "num_workers=0"])
    outcome = run_simulation(cfg, tmp_path / "run")
    last = outcome.rows[-1]
    assert [r["clients"] for r in outcome.rows] == [50, 50]
    assert 7.99 <= last["epsilon"] <= 8.0  # z calibrated to the recipe's target over 2 rounds
    assert outcome.summary["privacy"]["sample_rate"] == 0.1
    assert last["accuracy"] is not None and last["clipped_fraction"] > 0.5


# ---- issue repros: resume, DP silently off, population, bounds ------------------------------
REPRO: dict[str, Any] = {**DP_RUN, "num_rounds": 4, "dp.delta": 1e-4}


def test_a_resume_raising_rounds_under_a_target_stays_within_it(tmp_path: Path) -> None:
    """The reported epsilon composes the noise each round actually used (Opacus' accountant
    over the summary's noise history) and never exceeds the target or the cap."""
    target = {"dp.noise_multiplier": 0.0, "dp.target_epsilon": 6.0, "dp.max_epsilon": 6.1}
    run_simulation(make_config({**REPRO, **target}), tmp_path / "run")
    first = json.loads((tmp_path / "run" / "summary.json").read_text())["privacy"]
    cfg = make_config({**REPRO, **target, "num_rounds": 8})
    outcome = run_simulation(cfg, tmp_path / "run", resume=True)
    privacy = outcome.summary["privacy"]
    history = [
        (h["noise_multiplier"], h["sample_rate"], h["rounds"]) for h in privacy["noise_history"]
    ]
    assert [n for _, _, n in history] == [4, 4] and history[0][0] == first["noise_multiplier"]
    accountant = RDPAccountant()
    accountant.history = history
    assert privacy["epsilon"] == pytest.approx(accountant.get_epsilon(1e-4), rel=1e-12)
    assert first["epsilon"] <= privacy["epsilon"] <= 6.0
    eps = [r["epsilon"] for r in RunDir(tmp_path / "run").metrics()]
    assert eps == sorted(eps) and eps[-1] == privacy["epsilon"]


def test_resuming_a_finished_dp_run_keeps_its_epsilon(tmp_path: Path) -> None:
    cfg = make_config(REPRO)
    run_simulation(cfg, tmp_path / "run")
    before = json.loads((tmp_path / "run" / "summary.json").read_text())["privacy"]
    run_simulation(cfg, tmp_path / "run", resume=True)
    after = json.loads((tmp_path / "run" / "summary.json").read_text())["privacy"]
    assert (
        after["epsilon"]
        == before["epsilon"]
        == pytest.approx(compute_epsilon(0.8, 0.5, 4, 1e-4), rel=1e-12)
    )


def test_a_budget_below_one_round_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    cfg = make_config({**REPRO, "dp.max_epsilon": 0.1})
    with pytest.raises(ConfigError, match=r"dp\.max_epsilon=0\.1 is below the epsilon of a single"):
        run_simulation(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_epsilon_for_a_larger_population_says_so(tmp_path: Path) -> None:
    outcome = run_simulation(make_config({**REPRO, "dp.population": 100_000}), tmp_path / "run")
    privacy = outcome.summary["privacy"]
    assert privacy["population_extrapolated"] is True
    assert (
        privacy["statement"] == "epsilon stated for a population of 100000 (simulated: 10 clients)"
    )
    assert privacy["sample_rate"] == 5 / 100_000


def test_dp_keys_while_dp_is_off_are_refused_naming_dp_enabled(tmp_path: Path) -> None:
    sims = Path(__file__).resolve().parents[2] / "sims"
    with pytest.raises(ConfigError, match=r"dp\.clip_norm, dp\.target_epsilon set but dp\.enabled"):
        load_config(sims / "cross_silo.toml", ["dp.target_epsilon=8", "dp.clip_norm=0.1"])
    text = (sims / "dp_cross_device.toml").read_text()
    forgot = tmp_path / "forgot_enabled.toml"  # the DP recipe with its `enabled` line deleted
    forgot.write_text("\n".join(line for line in text.splitlines() if "enabled" not in line))
    with pytest.raises(ConfigError, match=r"set but dp\.enabled is false, so the run would train"):
        load_config(forgot)
    assert load_config(sims / "dp_cross_device.toml").dp.enabled


def test_dp_values_are_as_strict_as_top_level_ones_and_bounded() -> None:
    with pytest.raises(ConfigError, match=r"dp\.enabled: expected true or false, got a string"):
        make_config({**REPRO, "dp.enabled": "yes"})
    with pytest.raises(ConfigError, match=r"dp\.population: expected an integer, got a float"):
        make_config({**REPRO, "dp.population": 20.0})
    with pytest.raises(ConfigError, match=r"dp\.population: expected an integer, got a boolean"):
        make_config({**REPRO, "dp.population": True})
    with pytest.raises(ConfigError, match=r"dp\.clip_norm: 1e\+308 is beyond 1e\+06"):
        make_config({**REPRO, "dp.clip_norm": 1e308})


def test_an_empty_override_unsets_a_recipe_key() -> None:
    recipe = Path(__file__).resolve().parents[2] / "sims" / "dp_cross_device.toml"
    with pytest.raises(ConfigError, match="server_lr"):
        load_config(recipe, ["aggregator=fedavg"])
    cfg = load_config(recipe, ["aggregator=fedavg", "server_lr=", "server_weight_decay="])
    assert (cfg.server.aggregator, cfg.server.server_lr) == ("fedavg", None)
    assert cfg.replace(server_lr=None) == cfg


def test_a_dp_sgd_resume_raising_rounds_keeps_every_client_within_the_target(
    tmp_path: Path,
) -> None:
    """Clients calibrated for 2 rounds trained in both; resumed to 5 rounds, they recalibrate
    the rounds left against the steps they took, instead of ending above the target."""
    target = {**SAMPLE_RUN, "dp.noise_multiplier": 0.0, "dp.target_epsilon": 3.0}
    run_simulation(make_config({**target, "num_rounds": 2}), tmp_path / "run")
    outcome = run_simulation(
        make_config({**target, "num_rounds": 5}), tmp_path / "run", resume=True
    )
    eps = [r["epsilon"] for r in outcome.rows]
    assert len(eps) == 5 and eps == sorted(eps)
    assert 2.9 <= outcome.summary["privacy"]["epsilon"] == eps[-1] <= 3.0


# ---- population-scale simulation: dp.noise_cohort_size ----------------------------------------
SCALED: dict[str, Any] = {
    **DP_RUN,
    "num_rounds": 2,
    "dp.delta": 1e-7,
    "dp.population": 1_000_000,
    "dp.noise_cohort_size": 1000,
}


def test_a_population_scale_run_states_what_it_simulates(tmp_path: Path) -> None:
    """5 clients train per round; the average carries the noise of 1000 (std 0.8*1/1000) and
    epsilon is Opacus' at q = 1000/1e6 for 2 rounds."""
    outcome = run_simulation(make_config(SCALED), tmp_path / "run")
    privacy = json.loads((tmp_path / "run" / "summary.json").read_text())["privacy"]
    assert outcome.summary["privacy"] == privacy
    assert privacy["sample_rate"] == 1e-3
    assert privacy["epsilon"] == pytest.approx(compute_epsilon(0.8, 1e-3, 2, 1e-7), rel=1e-12)
    assert [r["epsilon"] for r in outcome.rows] == pytest.approx(
        [compute_epsilon(0.8, 1e-3, r, 1e-7) for r in (1, 2)], rel=1e-12
    )
    assert privacy["noise_std_on_mean"] == pytest.approx(0.8 / 1000, rel=1e-15)
    assert (privacy["trained_clients_per_round"], privacy["noise_cohort_size"]) == (5, 1000)
    assert privacy["noise_cohort_simulated"] is True
    assert privacy["statement"] == (
        "epsilon stated for a population of 1000000 (simulated: 10 clients); simulated: the "
        "noise on the average of a cohort of 1000 clients (std z*C/1000) and the sample rate "
        "q = 1000/1000000; not simulated: 1000 clients' own updates -- only 5 train per round, "
        "assumed representative of 1000"
    )
    # without the noise cohort, the same run's noise is 200x larger (std z*C/5)
    plain = {**SCALED, "dp.noise_cohort_size": 0}
    assert run_simulation(make_config(plain)).summary["privacy"]["noise_std_on_mean"] == 0.16


def test_a_resumed_population_scale_run_continues_bit_for_bit(tmp_path: Path) -> None:
    cfg = make_config({**SCALED, "checkpoint_every": 1})
    whole = run_simulation(cfg, tmp_path / "whole")
    run_simulation(cfg.replace(num_rounds=1), tmp_path / "part")
    resumed = run_simulation(cfg, tmp_path / "part", resume=True)
    for key, array in whole.arrays.items():
        np.testing.assert_array_equal(resumed.arrays[key].numpy(), array.numpy(), err_msg=key)
    assert resumed.summary["privacy"]["noise_history"] == [
        {"noise_multiplier": 0.8, "sample_rate": 1e-3, "rounds": 2}
    ]
    assert resumed.summary["privacy"]["epsilon"] == whole.summary["privacy"]["epsilon"]

    def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]

    assert strip(RunDir(tmp_path / "part").metrics()) == strip(RunDir(tmp_path / "whole").metrics())


# ---- adaptive clipping: dp.mechanism = "adaptive_clipping" -----------------------------------
ADAPTIVE: dict[str, Any] = {
    **{k: v for k, v in DP_RUN.items() if k != "dp.clip_norm"},
    "num_rounds": 4,
    "dp.noise_multiplier": 0.3,  # the default count noise for 5 clients (0.25) allows z < 0.5
    "dp.mechanism": "adaptive_clipping",
}


def strip_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def test_an_adaptive_clipping_run_records_its_bound_and_pays_for_the_count(
    tmp_path: Path,
) -> None:
    """Every row carries the bound its round clipped to (from dp.initial_clip_norm, moving
    geometrically); epsilon is accounted at the configured z = 0.3, which the updates' raised
    noise z_upd = (0.3^-2 - 0.5^-2)^-1/2 = 0.375 and the count's (sigma_b = 5/20) compose to."""
    outcome = run_simulation(make_config(ADAPTIVE), tmp_path / "run")
    rows = RunDir(tmp_path / "run").metrics()
    bounds = [r["clip_norm"] for r in rows]
    assert bounds[0] == 0.1 and len(set(bounds)) == 4
    for before, after in itertools.pairwise(bounds):
        assert math.exp(-0.2) <= after / before <= math.exp(0.2)  # |b~ - gamma| <= 1 here
    eps = [r["epsilon"] for r in rows]
    assert eps == [compute_epsilon(0.3, 0.5, r, 1e-5) for r in (1, 2, 3, 4)]
    privacy = outcome.summary["privacy"]
    assert privacy["mechanism"] == "adaptive_clipping" and privacy["noise_multiplier"] == 0.3
    assert privacy["unclipped_count_stddev"] == 0.25
    assert privacy["update_noise_multiplier"] == pytest.approx(0.375, rel=1e-12)
    assert privacy["clip_norm"] == bounds[-1]
    assert privacy["noise_std_on_mean"] == pytest.approx(0.375 * bounds[-1] / 5, rel=1e-12)
    # what forgetting the count would report: epsilon at the updates' noise alone, lower
    assert compute_epsilon(0.375, 0.5, 4, 1e-5) < eps[-1]


class Killed(Exception):
    """Stands for the process being killed after a checkpoint."""


def test_a_killed_or_extended_adaptive_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    """The bound (the mechanism's state) is saved with each checkpoint and restored: killed
    after round 2 and resumed, or run for 2 rounds and resumed to 4, the run ends with the
    arrays, rows (bounds included) and epsilon of an uninterrupted 4-round run."""
    cfg = make_config({**ADAPTIVE, "checkpoint_every": 1})
    whole = run_simulation(cfg, tmp_path / "whole")

    def kill(row: dict[str, Any]) -> None:
        if row["round"] == 2:
            raise Killed

    with pytest.raises(Killed):
        run_simulation(cfg, tmp_path / "killed", on_round=kill)
    state = json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())
    second = RunDir(tmp_path / "whole").metrics()[2]["clip_norm"]  # round 3's bound
    assert state["privacy_state"] == {"mechanism": "adaptive_clipping", "clip_norm": second}
    run_simulation(cfg.replace(num_rounds=2), tmp_path / "extended")
    for name in ("killed", "extended"):
        resumed = run_simulation(cfg, tmp_path / name, resume=True)
        for key, array in whole.arrays.items():
            np.testing.assert_array_equal(resumed.arrays[key].numpy(), array.numpy(), key)
        assert strip_times(RunDir(tmp_path / name).metrics()) == strip_times(
            RunDir(tmp_path / "whole").metrics()
        )
        assert resumed.summary["privacy"] == whole.summary["privacy"]


def test_adaptive_clipping_on_the_clients_trains_like_on_the_server(tmp_path: Path) -> None:
    """dp.placement='client': the server sends each round's bound, every client clips and
    reports whether it clipped; the same bounds and (up to float rounding) the same model."""
    server = run_simulation(make_config(ADAPTIVE))
    client = run_simulation(make_config({**ADAPTIVE, "dp.placement": "client"}))
    assert [r["clip_norm"] for r in client.rows] == pytest.approx(
        [r["clip_norm"] for r in server.rows], rel=1e-6
    )
    assert [r["clipped_fraction"] for r in client.rows] == [
        r["clipped_fraction"] for r in server.rows
    ]
    for key, array in server.arrays.items():
        np.testing.assert_allclose(client.arrays[key].numpy(), array.numpy(), rtol=1e-4, atol=1e-6)


def test_adaptive_clipping_composes_with_population_scale_noise() -> None:
    """With dp.noise_cohort_size M the count's default noise is M/20 and both noises are those
    of a cohort of M; epsilon at q = M/N and the configured z."""
    cfg = make_config(
        {
            **ADAPTIVE,
            **{k: v for k, v in SCALED.items() if k.startswith("dp.")},
            "dp.noise_multiplier": 0.8,
            "num_rounds": 2,
        }
    )
    outcome = run_simulation(cfg)
    privacy = outcome.summary["privacy"]
    assert privacy["unclipped_count_stddev"] == 1000 / 20
    z_upd = (0.8**-2 - 100.0**-2) ** -0.5
    assert privacy["update_noise_multiplier"] == pytest.approx(z_upd, rel=1e-12)
    assert privacy["noise_std_on_mean"] == pytest.approx(z_upd * privacy["clip_norm"] / 1000)
    assert privacy["epsilon"] == pytest.approx(compute_epsilon(0.8, 1e-3, 2, 1e-7), rel=1e-12)
    assert outcome.rows[0]["clip_norm"] == 0.1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dp.clip_norm": 0.05}, r"dp\.clip_norm=0\.05 is a fixed bound, but dp\.mechanism="),
        (
            {"dp.level": "sample", "norm": "ws"},
            r"dp\.mechanism='adaptive_clipping' is a user-level",
        ),
        (
            {"dp.target_unclipped_quantile": 1.0},
            r"dp\.target_unclipped_quantile: must be in \(0, 1\)",
        ),
        (
            {"dp.target_unclipped_quantile": 0.0},
            r"dp\.target_unclipped_quantile: must be in \(0, 1\)",
        ),
        ({"dp.clip_learning_rate": 0.0}, r"dp\.clip_learning_rate: must be > 0"),
        ({"dp.unclipped_count_stddev": -1.0}, r"dp\.unclipped_count_stddev: must be >= 0"),
        ({"dp.initial_clip_norm": 0.0}, r"dp\.initial_clip_norm: must be > 0, got 0\.0"),
        ({"dp.mechanism": "tree"}, r"unknown mechanism 'tree'; choose one of \['gaussian', "),
        (
            {"dp.noise_multiplier": 0.8},
            r"dp\.noise_multiplier=0\.8 is out of reach of adaptive clipping with its default "
            r"0\.25 \(a cohort of 5 / 20\).*above 0\.4",
        ),
        (
            {"dp.mechanism": "gaussian", "dp.clip_learning_rate": 0.5},
            r"dp\.clip_learning_rate is read by dp\.mechanism='adaptive_clipping' only; with "
            r"dp\.mechanism='gaussian' it would be ignored",
        ),
        (
            {"dp.enabled": False, "dp.noise_multiplier": 0.0},
            r"dp\.mechanism set but dp\.enabled is false",
        ),
    ],
)
def test_inconsistent_adaptive_clipping_settings_are_refused_in_one_line(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        make_config({**ADAPTIVE, **settings})
    assert "\n" not in str(caught.value)


def test_a_target_adaptive_clipping_cannot_reach_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    cfg = make_config({**ADAPTIVE, "dp.noise_multiplier": 0.0, "dp.target_epsilon": 2.0})
    with pytest.raises(
        ConfigError, match=r"calibrated to dp\.target_epsilon=2\) is out of reach of adaptive"
    ) as caught:
        run_simulation(cfg, tmp_path / "run")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()

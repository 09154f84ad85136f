"""The dp.* keys drive whole runs: epsilon per round in metrics.jsonl, the budget stops a run
cleanly at its last affordable round, LAMB as aggregator, a privacy block in summary.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedwon.config import ConfigError, make_config
from fedwon.privacy import compute_epsilon
from fedwon.results import read_metrics
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
    rows = read_metrics(tmp_path / "run")
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

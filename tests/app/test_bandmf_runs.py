"""dp.mechanism = "bandmf" drives whole runs: cyclic groups train in turn, epsilon per round
composes participations, and a run stopped or extended after 2 rounds resumes to 4 bit for
bit (the correlated-noise history travels in the checkpoint)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedwon.config import make_config
from fedwon.privacy import compute_epsilon
from fedwon.privacy.bandmf import factorize
from fedwon.run.directory import RunDir
from fedwon.simulation import run_simulation

BANDMF_RUN: dict[str, Any] = {
    "strategy": "fedwon",
    "model": "cnn-tiny",
    "train_per_domain": 16,
    "test_per_domain": 8,
    "num_clients": 10,
    "clients_per_round": 5,
    "min_clients": 5,
    "num_rounds": 4,
    "lr": 0.1,
    "num_workers": 0,
    "checkpoint_every": 1,
    "participation": "cyclic",  # 2 groups of 5: each client every 2 rounds
    "dp.enabled": True,
    "dp.noise_multiplier": 0.8,
    "dp.clip_norm": 1.0,
    "dp.mechanism": "bandmf",
    "dp.factorization": "sqrt",  # C does not depend on num_rounds: extending is exact too
}


class Killed(Exception):
    """Stands for the process being killed after a checkpoint."""


def strip_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def test_a_bandmf_run_stopped_or_extended_after_2_rounds_resumes_to_4_bit_for_bit(
    tmp_path: Path,
) -> None:
    cfg = make_config(BANDMF_RUN)
    whole = run_simulation(cfg, tmp_path / "whole")
    rows = RunDir(tmp_path / "whole").metrics()
    # epsilon after round r: ceil(r / 2) participations of the Gaussian mechanism at q = 1
    assert [r["epsilon"] for r in rows] == [
        compute_epsilon(0.8, 1.0, math.ceil(r / 2), 1e-5) for r in (1, 2, 3, 4)
    ]
    privacy = whole.summary["privacy"]
    assert privacy["mechanism"] == "bandmf" and privacy["epsilon"] == rows[-1]["epsilon"]
    assert (privacy["bands"], privacy["min_separation"], privacy["participations"]) == (2, 2, 2)
    assert privacy["sample_rate"] == 1.0
    row_norm = factorize(4, 2, "sqrt").noise_std(4)  # ||row 4 of C^-1||
    assert privacy["noise_std_on_mean"] == pytest.approx(0.8 * row_norm / 5)

    def kill(row: dict[str, Any]) -> None:
        if row["round"] == 2:
            raise Killed

    with pytest.raises(Killed):
        run_simulation(cfg, tmp_path / "killed", on_round=kill)
    ckpt = tmp_path / "killed" / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())["privacy_state"]
    assert state["round"] == 2 and state["min_separation"] == 2
    assert sorted(state["last_round"].values()) == [1] * 5 + [2] * 5
    with np.load(ckpt / "privacy_state.npz") as stored:
        assert stored["noise"].shape[0] == 1  # b - 1 = 1 noise vector, model-sized
    run_simulation(cfg.replace(num_rounds=2), tmp_path / "extended")
    for name in ("killed", "extended"):
        resumed = run_simulation(cfg, tmp_path / name, resume=True)
        for key, array in whole.arrays.items():
            np.testing.assert_array_equal(resumed.arrays[key].numpy(), array.numpy(), key)
        assert strip_times(RunDir(tmp_path / name).metrics()) == strip_times(rows)
        assert resumed.summary["privacy"] == privacy


def test_a_bandmf_target_is_met_over_the_participations(tmp_path: Path) -> None:
    cfg = make_config(
        {**BANDMF_RUN, "num_rounds": 3, "dp.noise_multiplier": 0.0, "dp.target_epsilon": 8.0}
    )
    outcome = run_simulation(cfg, tmp_path / "run")
    privacy = outcome.summary["privacy"]
    assert 7.98 <= privacy["epsilon"] <= 8.0  # 2 participations in 3 rounds, calibrated
    assert privacy["factorization"] == "sqrt" and privacy["error_ratio_vs_independent_noise"] < 1

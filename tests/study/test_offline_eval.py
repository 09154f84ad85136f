"""Offline evaluation of a finished run rebuilds exactly the models its clients evaluated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedwon.config import make_config
from fedwon.run.directory import RunDir
from fedwon.run.recorder import per_domain
from fedwon.simulation import run_simulation
from fedwon.study.offline_eval import average_states, heldout_accuracy, split_accuracy

TINY = {
    "model": "cnn-tiny",
    "train_per_domain": 40,
    "test_per_domain": 20,
    "num_rounds": 2,
    "checkpoint_every": 0,
    "lr": 0.05,
    "seed": 3,
}


@pytest.mark.parametrize("strategy", ["fedbn", "fedwon"])
def test_test_split_matches_the_clients_own_final_evaluation(tmp_path: Path, strategy: str) -> None:
    """On ``test`` the offline evaluator must reproduce the run's last evaluated row: the same
    global arrays and, for FedBN, each client's own normalization layers."""
    cfg = make_config(
        {**TINY, "strategy": strategy, "domains": "mnist,svhn,usps", "num_clients": 3}
    )
    run_simulation(cfg, tmp_path)
    final = RunDir(tmp_path).metrics()[-1]
    offline = split_accuracy(tmp_path, cfg, "test")
    assert offline.per_domain == pytest.approx(per_domain(final), abs=1e-12)
    assert offline.examples == 3 * 20
    averaged = split_accuracy(tmp_path, cfg, "test", averaged=True)
    assert averaged.examples == offline.examples
    if strategy == "fedwon":  # nothing local: averaging the local layers changes nothing
        assert averaged == offline
    val = split_accuracy(tmp_path, cfg, "val")
    assert val.examples == 3 * 4 and set(val.per_domain) == {"mnist", "svhn", "usps"}
    held = heldout_accuracy(tmp_path, cfg)
    assert set(held.per_domain) == {"mnist_m", "synth"} and held.examples == 2 * 20
    assert held.mean == pytest.approx(sum(held.per_domain.values()) / 2)
    only = heldout_accuracy(tmp_path, cfg, ["synth"])
    assert (
        only.per_domain == {"synth": held.per_domain["synth"]}
        and only.mean == only.per_domain["synth"]
    )


def test_unfinished_or_all_domain_runs_are_refused(tmp_path: Path) -> None:
    cfg = make_config({**TINY, "strategy": "fedwon"})
    run_simulation(cfg, tmp_path)
    with pytest.raises(ValueError, match="nothing is held out"):
        heldout_accuracy(tmp_path, cfg)
    with pytest.raises(ValueError, match=r"not finished: its checkpoint is at round 2 of 5"):
        split_accuracy(tmp_path, cfg.replace(num_rounds=5), "val")


def test_average_states_is_elementwise_and_keeps_dtypes() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(6)}
    avg = average_states([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0]))
    assert avg["n"].dtype == torch.int64 and int(avg["n"]) == 4  # 4.5 rounds to even
    assert average_states([]) == {}

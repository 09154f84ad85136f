"""participation = "cyclic": fixed groups train in turn, each client every G rounds."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import BASE, FakeGrid
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedwon.config import ConfigError, make_config
from fedwon.server_app import run_strategy
from fedwon.strategies.participation import Participation

W0 = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
CYCLIC = {"model": "cnn-tiny", "num_clients": 12, "clients_per_round": 3, "participation": "cyclic"}


def test_cyclic_groups_partition_the_clients_and_come_back_every_g_rounds() -> None:
    schedule = Participation("cyclic", 12, 3)
    assert (schedule.groups, schedule.min_separation) == (4, 4)
    nodes = list(range(BASE, BASE + 12))[::-1]  # any order: groups follow the sorted ids
    groups = [schedule.members(r, nodes) for r in range(1, 5)]
    assert sorted(n for g in groups for n in g) == sorted(nodes)
    assert groups[0] == [BASE, BASE + 4, BASE + 8]
    assert schedule.members(5, nodes) == groups[0]
    assert [schedule.max_participations(r) for r in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]
    assert Participation("uniform", 12, 3).max_participations(9) == 9


def test_round_rules_train_only_the_rounds_group() -> None:
    strategy = run_strategy(make_config(CYCLIC))
    seen: dict[int, list[int]] = {}
    for rnd in range(1, 9):
        msgs = strategy.configure_train(rnd, W0, ConfigRecord(), FakeGrid(12))  # type: ignore[arg-type]
        ids = sorted(m.metadata.dst_node_id for m in msgs)
        assert ids == Participation("cyclic", 12, 3).members(rnd, list(range(BASE, BASE + 12)))
        for node in ids:
            seen.setdefault(node, []).append(rnd)
    assert all(np.diff(rounds).min() == 4 for rounds in seen.values())
    # evaluation still samples from every node
    evaluate = strategy.configure_evaluate(4, W0, ConfigRecord(), FakeGrid(12))  # type: ignore[arg-type]
    assert len(list(evaluate)) == 12


def test_a_cyclic_cohort_that_does_not_divide_the_clients_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        make_config({**CYCLIC, "clients_per_round": 5})
    message = str(err.value)
    assert "\n" not in message
    assert "must divide num_clients" in message and "clients_per_round=4 or 6" in message

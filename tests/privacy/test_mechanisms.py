"""The extension point: a user-level mechanism is one class behind one interface, registered by
name; ``dp.mechanism`` picks it and CentralDP runs it around any strategy.

A mechanism written here as a user would (one class, one registry line) -- fixed clipping,
each client allowed back only after a round's pause, its state the last cohort -- runs from a
``dp`` section: the participation constraint shapes the sampled cohorts, its state is what a
checkpoint would keep, and accounting is its ledger's. That is the shape DP-FTRL with banded
matrix factorization needs (state across rounds, a minimum separation between a client's
participations).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg
from privacy_fakes import StubGrid, client_delta, model_arrays, record, reply

from fedwon.privacy import CentralDP, DPConfig, compute_epsilon
from fedwon.privacy.mechanisms import (
    MECHANISMS,
    AdaptiveClipping,
    DPSettings,
    GaussianMechanism,
    GaussianSettings,
    MechanismSetting,
    RoundSum,
)


class SeparatedGaussian(GaussianMechanism):
    """Fixed clipping and Gaussian noise; a client may take part again only after sitting
    out one round (minimum separation 2)."""

    name = "separated_gaussian"
    constrains_participation = True
    stateful = True

    def __init__(self, settings: GaussianSettings, last: Sequence[int] = ()) -> None:
        super().__init__(settings)
        self.last = tuple(last)

    @classmethod
    def from_config(cls, dp: DPSettings, setting: MechanismSetting) -> SeparatedGaussian:
        last = (setting.state or {}).get("last", ())
        return cls(GaussianSettings.from_config(dp, setting), last=last)

    def eligible(self, server_round: int, node_ids: Sequence[int]) -> list[int]:
        return [n for n in node_ids if n not in self.last]

    def release(self, server_round: int, total: RoundSum) -> None:
        super().release(server_round, total)
        self.last = total.participants

    def state(self) -> dict[str, Any]:
        return {"mechanism": self.name, "last": list(self.last)}


def two_of(n: int) -> FedAvg:
    """Samples 2 of ``n`` nodes as fedwon's server does: fraction m/n, at least m."""
    return FedAvg(
        fraction_train=2 / n, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2
    )


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MECHANISMS, SeparatedGaussian.name, SeparatedGaussian)  # the one line


def test_a_new_mechanism_is_one_class_and_one_registry_line(registered: None) -> None:
    dp = DPConfig(enabled=True, noise_multiplier=1.0, mechanism="separated_gaussian")
    wrapper = CentralDP.from_config(
        two_of(4), dp, expected_clients=2, population=4, num_rounds=4, seed=0
    )
    assert isinstance(wrapper.mechanism, SeparatedGaussian)
    sent, grid = model_arrays(), StubGrid(4)
    cohorts = []
    for server_round in range(1, 5):
        messages = list(
            wrapper.configure_train(server_round, record(sent), ConfigRecord(), grid)  # type: ignore[arg-type]
        )
        cohort = sorted(m.metadata.dst_node_id for m in messages)
        replies = [reply(m, client_delta(i, 0.1, sent)) for i, m in enumerate(messages)]
        wrapper.aggregate_train(server_round, replies)
        cohorts.append(cohort)
        state = wrapper.mechanism.state()
        assert state is not None and sorted(state["last"]) == cohort  # who was summed
    for before, after in itertools.pairwise(cohorts):
        assert not set(before) & set(after)  # nobody twice in a row
    assert wrapper.epsilon_spent == compute_epsilon(1.0, 0.5, 4, 1e-5)
    # a resumed run gets its state back through MechanismSetting.state
    resumed = CentralDP.from_config(
        two_of(4),
        dp,
        expected_clients=2,
        population=4,
        num_rounds=4,
        seed=0,
        state={"mechanism": "separated_gaussian", "last": [100, 101]},
    )
    assert resumed.mechanism.eligible(5, [100, 101, 102, 103]) == [102, 103]


def test_a_constraint_leaving_fewer_clients_than_the_cohort_is_refused(registered: None) -> None:
    dp = DPConfig(enabled=True, noise_multiplier=1.0, mechanism="separated_gaussian")
    wrapper = CentralDP.from_config(
        two_of(3), dp, expected_clients=2, population=3, num_rounds=2, seed=0
    )
    grid, sent = StubGrid(3), model_arrays()
    messages = list(wrapper.configure_train(1, record(sent), ConfigRecord(), grid))  # type: ignore[arg-type]
    wrapper.aggregate_train(1, [reply(m, client_delta(0, 0.1, sent)) for m in messages])
    with pytest.raises(RuntimeError, match=r"lets only 1 clients take part, fewer than the cohort"):
        wrapper.configure_train(2, record(sent), ConfigRecord(), grid)  # type: ignore[arg-type]


def test_every_registered_mechanism_declares_its_keys_as_dp_fields() -> None:
    for name, mechanism in MECHANISMS.items():
        assert mechanism.name == name
        assert set(mechanism.keys) <= set(DPConfig.model_fields), name
    assert AdaptiveClipping.keys and not GaussianMechanism.keys
    assert DPConfig.model_fields["mechanism"].default == GaussianMechanism.name

"""Server optimizer state survives a checkpoint: snapshot, restore into a fresh stack."""

import numpy as np
import pytest
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAdam, FedAvgM

from fedwon.strategies import RoundRules
from fedwon.strategies.server_state import restore_server_state, snapshot_server_state


def stack(inner: object) -> RoundRules:
    return RoundRules(
        DifferentialPrivacyServerSideFixedClipping(inner, 0.0, 1.0, 2),  # type: ignore[arg-type]
        num_rounds=3,
    )


def test_adam_moments_and_avgm_momentum_round_trip_through_a_wrapper_chain() -> None:
    adam = FedAdam()
    adam.m_t = {"w": np.array([1.0, 2.0]), "b": np.array([3.0])}
    adam.v_t = {"w": np.array([0.5, 0.25]), "b": np.array([0.125])}
    flat = snapshot_server_state(stack(adam))
    assert set(flat) == {"2/m_t/w", "2/m_t/b", "2/v_t/w", "2/v_t/b"}
    fresh = FedAdam()
    restore_server_state(stack(fresh), flat)
    assert fresh.m_t is not None and fresh.v_t is not None
    np.testing.assert_array_equal(fresh.m_t["w"], [1.0, 2.0])
    np.testing.assert_array_equal(fresh.v_t["b"], [0.125])

    avgm = FedAvgM(server_momentum=0.9)
    avgm.momentum_vector = [np.ones(2), np.zeros(3)]
    fresh_m = FedAvgM(server_momentum=0.9)
    restore_server_state(stack(fresh_m), snapshot_server_state(stack(avgm)))
    assert fresh_m.momentum_vector is not None
    assert [v.shape for v in fresh_m.momentum_vector] == [(2,), (3,)]
    assert snapshot_server_state(stack(FedAdam())) == {}  # nothing before the first round


def test_a_state_that_does_not_fit_the_stack_is_refused() -> None:
    with pytest.raises(ValueError, match="'5/m_t/w' does not fit this strategy stack"):
        restore_server_state(stack(FedAdam()), {"5/m_t/w": np.zeros(1)})

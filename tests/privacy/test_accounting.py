"""Accounting: Apple's published epsilons, agreement with Opacus, monotonicity, calibration."""

from __future__ import annotations

import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedwon.privacy import (
    PrivacyLedger,
    calibrate_noise,
    compute_epsilon,
    history_epsilon,
    sample_rate,
)

# ml-pfl4asr (Apple, "Enabling DP FL for speech recognition"), Table 1, delta = 1e-9.
TABLE_1 = [(0.6144, 0.00295, 2034, 7.2), (2.048, 0.0295, 2006, 4.5)]


@pytest.fixture(autouse=True)
def _quiet_opacus() -> None:
    # "Optimal order is the largest alpha" for tiny epsilons: expected, not a failure.
    warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")


@pytest.mark.parametrize(("z", "q", "rounds", "published"), TABLE_1)
def test_rdp_reproduces_ml_pfl4asr_table_1(
    z: float, q: float, rounds: int, published: float
) -> None:
    eps = compute_epsilon(z, q, rounds, 1e-9, accountant="rdp")
    assert eps == pytest.approx(published, abs=0.06)  # 7.226 and 4.445 (printed as 4.5)
    # PRV is the tighter accountant: below the RDP bound, above half of it
    prv = compute_epsilon(z, q, rounds, 1e-9, accountant="prv")
    assert 0.5 * eps < prv < eps


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_values_agree_with_opacus_called_directly(accountant: str) -> None:
    z, q, rounds, delta = 1.1, 0.01, 300, 1e-5
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for _ in range(rounds):
        acc.step(noise_multiplier=z, sample_rate=q)
    direct = acc.get_epsilon(delta=delta)
    assert compute_epsilon(z, q, rounds, delta, accountant) == direct
    assert PrivacyLedger(z, q, delta, accountant).epsilon(rounds) == direct  # bit for bit


@settings(max_examples=8, deadline=None)
@given(
    z=st.floats(0.5, 5.0),
    q=st.floats(0.001, 0.5),
    rounds=st.integers(1, 2000),
    delta=st.sampled_from([1e-9, 1e-5, 1e-3]),
)
def test_epsilon_grows_with_rounds_and_sample_rate_and_falls_with_noise(
    z: float, q: float, rounds: int, delta: float
) -> None:
    ledger = PrivacyLedger(z, q, delta)
    eps = ledger.epsilon(rounds)
    assert 0 < eps < math.inf
    assert ledger.epsilon(rounds + 1) >= eps
    assert ledger.epsilon(2 * rounds) > eps
    assert PrivacyLedger(z, min(1.0, 2 * q), delta).epsilon(rounds) > eps
    assert PrivacyLedger(2 * z, q, delta).epsilon(rounds) < eps
    assert PrivacyLedger(z, q, delta / 10).epsilon(rounds) > eps


@settings(max_examples=6, deadline=None)
@given(
    target=st.floats(0.5, 20.0),
    q=st.floats(0.005, 0.2),
    rounds=st.integers(10, 1000),
)
def test_calibrate_noise_inverts_compute_epsilon(target: float, q: float, rounds: int) -> None:
    z = calibrate_noise(target, 1e-5, q, rounds)
    eps = compute_epsilon(z, q, rounds, 1e-5)
    assert target - 0.01 <= eps <= target  # within Opacus' bisection tolerance, never above


def test_calibration_is_opacus_bisection() -> None:
    z = calibrate_noise(4.0, 1e-5, 0.02, 100)
    direct = get_noise_multiplier(
        target_epsilon=4.0, target_delta=1e-5, sample_rate=0.02, steps=100, epsilon_tolerance=0.01
    )
    assert z == direct
    prv = calibrate_noise(4.0, 1e-5, 0.02, 100, accountant="prv")
    assert 3.99 <= compute_epsilon(prv, 0.02, 100, 1e-5, accountant="prv") <= 4.0


def test_rounds_within_a_budget() -> None:
    ledger = PrivacyLedger(1.0, 0.01, 1e-5)
    fits = ledger.rounds_within(3.0, horizon=5000)
    assert ledger.epsilon(fits) <= 3.0 < ledger.epsilon(fits + 1)
    assert ledger.rounds_within(1e6, horizon=50) == 50
    assert ledger.rounds_within(1e-6, horizon=50) == 0


def test_edge_cases_and_errors() -> None:
    assert compute_epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    assert compute_epsilon(0.0, 0.1, 5, 1e-5) == math.inf
    assert PrivacyLedger(0.0, 0.1, 1e-5).epsilon(1) == math.inf
    assert sample_rate(10, 1000) == 0.01
    with pytest.raises(
        ValueError, match=r"unknown accountant 'gdp'; choose one of \['rdp', 'prv'\]"
    ):
        compute_epsilon(1.0, 0.1, 5, 1e-5, accountant="gdp")
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        compute_epsilon(1.0, 1.5, 5, 1e-5)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        compute_epsilon(1.0, 0.1, 5, 0.0)
    with pytest.raises(ValueError, match="out of reach"):
        calibrate_noise(1e-4, 1e-12, 1.0, 100_000)
    with pytest.raises(ValueError, match="clients_per_round <= population"):
        sample_rate(20, 10)


def test_a_history_of_mechanisms_is_opacus_accountant_on_that_history() -> None:
    # a DP-SGD client: 3 steps at q=1/3, then a round at another noise, then 3 more
    history = [(1.0, 1 / 3, 3), (1.3, 1 / 3, 2), (1.0, 1 / 3, 3)]
    acc = RDPAccountant()
    for z, q, steps in history:
        for _ in range(steps):
            acc.step(noise_multiplier=z, sample_rate=q)
    assert len(acc.history) == 3  # Opacus merges consecutive equal steps the same way
    assert history_epsilon(history, 1e-5) == acc.get_epsilon(delta=1e-5)  # bit for bit
    # one mechanism: the same as compute_epsilon, with either accountant
    for accountant in ("rdp", "prv"):
        assert history_epsilon([(1.0, 0.25, 12)], 1e-5, accountant) == compute_epsilon(
            1.0, 0.25, 12, 1e-5, accountant
        )


def test_history_edge_cases() -> None:
    assert history_epsilon([], 1e-5) == 0.0
    assert history_epsilon([(1.0, 0.5, 0)], 1e-5) == 0.0
    assert history_epsilon([(0.0, 0.5, 2)], 1e-5) == math.inf
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        history_epsilon([(1.0, 0.0, 2)], 1e-5)

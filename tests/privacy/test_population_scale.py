"""Population-scale simulation (``dp.noise_cohort_size`` M): m clients train, the released
average carries the noise of a cohort of M (std z*C/M), and epsilon is accounted at q = M / N.

The noise is measured on what CentralDP releases (a seeded round over a million coordinates),
epsilon against Opacus' own accountant, and every inconsistent setting is refused in one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from privacy_fakes import COHORT, central_dp, fedavg
from test_central_dp import run_round

from fedwon.config import ConfigError, make_config
from fedwon.privacy import CentralDP, DPConfig, calibrate_noise, check_dp_run, noise_std
from fedwon.privacy.assembly import population_statement
from fedwon.privacy.central_dp import planned_noise
from fedwon.privacy.noise import noise_scale

COORDS = 1_000_000
RUN: dict[str, Any] = {
    "strategy": "fedwon",
    "model": "cnn-tiny",
    "num_clients": 20,
    "clients_per_round": 5,
    "min_clients": 5,
    "num_rounds": 3,
    "dp.enabled": True,
    "dp.noise_multiplier": 1.0,
    "dp.delta": 1e-6,
}


def opacus_epsilon(z: float, q: float, rounds: int, delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = [(z, q, rounds)]
    return float(accountant.get_epsilon(delta=delta))


def released_noise(noise_cohort: int, seed: int = 0, server_round: int = 1) -> np.ndarray:
    """What one DP round releases minus what was sent, when every client's update is zero:
    exactly the noise on the average."""
    sent = {"w": np.zeros(COORDS, np.float32)}
    dp = central_dp(noise_multiplier=1.1, clip_norm=0.5, seed=seed, noise_cohort=noise_cohort)
    got, _, _ = run_round(dp, sent, [0.0] * COHORT, server_round=server_round)
    return got["w"] - sent["w"]


def test_the_released_average_carries_the_noise_of_m_clients() -> None:
    """z = 1.1, C = 0.5, m = 4 trained, M = 4000: std on the mean z*C/M = 1.375e-4. A std
    estimated from 1e6 draws has a relative standard error of 1/sqrt(2e6) = 0.07%: 0.5% is
    seven of them."""
    noise = released_noise(4000)
    expected = 1.1 * 0.5 / 4000
    assert noise_std(1.1, 0.5, COHORT, 4000) == pytest.approx(expected, rel=1e-15)
    assert float(noise.std()) == pytest.approx(expected, rel=0.005)
    assert abs(float(noise.mean())) < 5 * expected / np.sqrt(COORDS)
    # the same draws as the cohort's own noise, scaled by pfl-research's noise_scale m/M
    assert noise_scale(COHORT, 4000) == COHORT / 4000
    plain = released_noise(0)
    assert float(plain.std()) == pytest.approx(1.1 * 0.5 / COHORT, rel=0.005)
    np.testing.assert_allclose(noise, plain * (COHORT / 4000), rtol=1e-4, atol=1e-12)
    # and seeded per round like every DP round: a resumed run draws the same noise
    np.testing.assert_array_equal(noise, released_noise(4000))
    assert not np.array_equal(noise, released_noise(4000, server_round=2))


def test_a_noise_cohort_equal_to_the_cohort_changes_nothing() -> None:
    np.testing.assert_array_equal(released_noise(COHORT), released_noise(0))


def test_epsilon_is_opacus_at_q_m_over_n() -> None:
    """M = 1000 of N = 1,000,000 (q = 1e-3), 5 trained, z = 1.0, 50 rounds, delta 1e-6."""
    dp = DPConfig(
        enabled=True, noise_multiplier=1.0, delta=1e-6, population=10**6, noise_cohort_size=1000
    )
    check = check_dp_run(dp, clients_per_round=5, min_clients=5, num_clients=20, norm="ws")
    assert (check.population, check.sample_rate) == (10**6, 1e-3)
    wrapper = CentralDP.from_config(
        fedavg(), dp, expected_clients=5, population=check.population, num_rounds=50, seed=0
    )
    assert wrapper.ledger.sample_rate == 1e-3 and wrapper.noise_cohort == 1000
    eps = wrapper.ledger.epsilon(50)
    assert eps == pytest.approx(opacus_epsilon(1.0, 1e-3, 50, 1e-6), rel=1e-12)
    # the trained cohort's own q (5e-6) would state a smaller epsilon (0.41 vs 0.80): the
    # ledger accounts for the M clients the noise stands for, not the m that trained
    assert opacus_epsilon(1.0, 5e-6, 50, 1e-6) < eps / 1.5


def test_target_epsilon_and_max_epsilon_use_q_m_over_n() -> None:
    dp = DPConfig(
        enabled=True,
        target_epsilon=4.0,
        max_epsilon=4.0,
        delta=1e-6,
        population=100_000,
        noise_cohort_size=500,
    )
    z, q = planned_noise(dp, expected_clients=5, population=100_000, num_rounds=200)
    assert q == 500 / 100_000
    assert z == calibrate_noise(4.0, 1e-6, q, 200)
    assert 3.99 - 0.01 <= opacus_epsilon(z, q, 200, 1e-6) <= 4.0
    wrapper = CentralDP.from_config(
        fedavg(), dp, expected_clients=5, population=100_000, num_rounds=400, seed=0
    )
    last = wrapper.rounds_within_budget(400)
    assert last == 400  # calibrated for 400: the cap at 4 allows all of them
    capped = CentralDP.from_config(
        fedavg(),
        dp.model_copy(update={"target_epsilon": 0.0, "noise_multiplier": z}),
        expected_clients=5,
        population=100_000,
        num_rounds=400,
        seed=0,
    )
    within = capped.rounds_within_budget(400)
    assert 200 <= within < 400  # z calibrated for 200 rounds at q = M/N: ~200 fit, not 400
    assert opacus_epsilon(z, q, within, 1e-6) <= 4.0 < opacus_epsilon(z, q, within + 1, 1e-6)


def test_inconsistent_noise_cohorts_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"dp\.noise_cohort_size=3 is below the 5 clients"):
        make_config({**RUN, "dp.noise_cohort_size": 3})
    with pytest.raises(
        ConfigError, match=r"dp\.noise_cohort_size=50 is larger than the population of 20"
    ):
        make_config({**RUN, "dp.noise_cohort_size": 50})  # population 0 = the 20 clients
    with pytest.raises(
        ConfigError, match=r"dp\.noise_cohort_size=5000 is larger than the population of 1000"
    ):
        make_config({**RUN, "dp.noise_cohort_size": 5000, "dp.population": 1000})
    with pytest.raises(
        ConfigError, match=r"dp\.noise_cohort_size=100 scales the server's noise .* dp\.level"
    ):
        make_config(
            {**RUN, "dp.level": "sample", "dp.noise_cohort_size": 100, "dp.population": 1000}
        )
    with pytest.raises(ConfigError, match=r"dp\.noise_cohort_size set but dp\.enabled is false"):
        make_config(
            {
                **RUN,
                "dp.enabled": False,
                "dp.noise_multiplier": 0.0,
                "dp.delta": 1e-5,
                "dp.noise_cohort_size": 100,
            }
        )
    with pytest.raises(ConfigError, match=r"dp\.noise_cohort_size: must be >= 0"):
        make_config({**RUN, "dp.noise_cohort_size": -1})
    with pytest.raises(ConfigError, match=r"dp\.noise_cohort_size: expected an integer"):
        make_config({**RUN, "dp.noise_cohort_size": 100.0})
    with pytest.raises(ValueError, match=r"noise_cohort=2 is below expected_clients=4"):
        central_dp(noise_cohort=2)
    ok = make_config({**RUN, "dp.noise_cohort_size": 1000, "dp.population": 10**5})
    assert ok.dp_check().sample_rate == 1000 / 10**5


def test_the_statement_and_banner_say_what_is_simulated() -> None:
    plain = population_statement(10**6, 20, 5, 0)
    assert plain["noise_cohort_simulated"] is False and plain["noise_cohort_size"] == 5
    assert (
        plain["statement"] == "epsilon stated for a population of 1000000 (simulated: 20 clients)"
    )
    block = population_statement(10**6, 20, 5, 1000)
    assert block["noise_cohort_simulated"] is True
    assert (block["trained_clients_per_round"], block["noise_cohort_size"]) == (5, 1000)
    assert block["statement"].endswith(
        "; simulated: the noise on the average of a cohort of 1000 clients (std z*C/1000) and "
        "the sample rate q = 1000/1000000; not simulated: 1000 clients' own updates -- only 5 "
        "train per round, assumed representative of 1000"
    )
    banner = make_config({**RUN, "dp.noise_cohort_size": 1000, "dp.population": 10**6}).dp.describe(
        10**6, 20
    )
    assert banner.endswith(
        "noise and sample rate of a cohort of 1000 clients (q = 1000/1000000) simulated: "
        "only the sampled cohort trains"
    )

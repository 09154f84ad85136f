"""DP-FTRL with banded matrix factorization: B C = A, the sensitivity against every
participation pattern, the correlated noise and its state, epsilon (against pfl-research's
accountants where they import), and one-line refusals."""

from __future__ import annotations

import itertools
import math
import time
import typing
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import norm

from fedwon.config import ConfigError, make_config
from fedwon.privacy import DPConfig, compute_epsilon
from fedwon.privacy.bandmf import (
    FACTORIZATIONS,
    BandMFLedger,
    CorrelatedNoise,
    bandmf_epsilon,
    calibrate_bandmf,
    factorize,
    prefix_sum_workload,
    sensitivity,
)
from fedwon.privacy.mechanisms import MECHANISMS, GaussianSettings, RoundSum
from fedwon.privacy.mechanisms.bandmf import BandMF
from fedwon.strategies import ServerSpec
from fedwon.strategies.participation import PARTICIPATION_MODES, Participation


@pytest.fixture(autouse=True)
def _quiet_opacus() -> None:
    warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")


# ---- the factorization -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["optimized", "sqrt"])
@pytest.mark.parametrize(("n", "b"), [(1, 1), (7, 1), (12, 3), (40, 8), (64, 64)])
def test_the_factorization_reproduces_the_prefix_sum_workload(kind: str, n: int, b: int) -> None:
    f = factorize(n, b, kind)
    c, decoder = f.matrix(), f.decoder()
    np.testing.assert_allclose(decoder @ c, prefix_sum_workload(n), atol=1e-9)
    lag = np.subtract.outer(np.arange(n), np.arange(n))
    assert np.all(c[(lag < 0) | (lag >= b)] == 0)  # lower triangular, b bands
    assert np.all(np.diag(c) > 0)
    norms = f.column_norms()
    np.testing.assert_allclose(norms[: n - b + 1], 1.0, rtol=1e-12)  # full bands: unit norm
    assert norms.max() == pytest.approx(1.0, rel=1e-12)


def test_banded_noise_beats_independent_noise_and_more_bands_beat_fewer() -> None:
    n = 200
    ratios = {b: factorize(n, b).error_ratio() for b in (1, 2, 4, 16, 64)}
    assert ratios[1] == pytest.approx(1.0)  # C = I: independent noise
    assert list(ratios.values()) == sorted(ratios.values(), reverse=True)
    assert ratios[64] < 0.35
    for b in (2, 16, 64):  # the optimizer improves on the closed-form baseline
        assert factorize(n, b).error_ratio() <= factorize(n, b, "sqrt").error_ratio() + 1e-12


def test_the_sqrt_factorization_does_not_depend_on_the_number_of_rounds() -> None:
    short, long = factorize(10, 4, "sqrt"), factorize(20, 4, "sqrt")
    assert short.coefficients == long.coefficients
    np.testing.assert_array_equal(long.matrix()[:10, :10], short.matrix())


def test_thousands_of_rounds_factorize_in_seconds() -> None:
    start = time.perf_counter()
    f = factorize(3000, 128)
    assert time.perf_counter() - start < 10  # ~0.5 s on an idle core
    assert f.error_ratio() < factorize(3000, 128, "sqrt").error_ratio()


# ---- sensitivity: the bound against every participation pattern ------------------------------
def patterns(n: int, k: int, separation: int) -> list[tuple[int, ...]]:
    """Every set of <= k rounds (0-based) with any two >= ``separation`` apart."""
    found = []
    for size in range(1, k + 1):
        for rounds in itertools.combinations(range(n), size):
            if all(b - a >= separation for a, b in itertools.pairwise(rounds)):
                found.append(rounds)
    return found


def worst_change(c: np.ndarray, rounds: tuple[int, ...]) -> float:
    """max ||sum_{i in rounds} C[:, i] u_i|| over unit u_i pointing the same way or opposite
    (every sign pattern): the worst a client's k clipped updates can move C X. (For
    orthogonal columns, any unit u_i give the same.)"""
    cols = c[:, list(rounds)]
    return max(
        float(np.linalg.norm(cols @ np.array(signs)))
        for signs in itertools.product((1.0, -1.0), repeat=len(rounds))
    )


@pytest.mark.parametrize("kind", ["optimized", "sqrt"])
@pytest.mark.parametrize(("n", "b", "groups"), [(9, 1, 1), (9, 2, 2), (10, 3, 3), (10, 3, 4)])
def test_the_sensitivity_is_the_worst_participation_pattern(
    kind: str, n: int, b: int, groups: int
) -> None:
    """Brute force over every pattern of <= k participations >= G apart: the columns they
    touch are orthogonal (directions do not matter), and sqrt(k) bounds the worst -- exactly
    when the k-th participation can fall before the last b - 1 (shorter) columns."""
    f = factorize(n, b, kind)
    k = Participation("cyclic", groups * 2, 2).max_participations(n)
    every = patterns(n, k, groups)
    worst = max(worst_change(f.matrix(), p) for p in every)
    norms = f.column_norms()
    assert worst == pytest.approx(max(math.sqrt(sum(norms[list(p)] ** 2)) for p in every))
    bound = sensitivity(f, k, groups)
    assert bound == pytest.approx(math.sqrt(k), rel=1e-12) and worst <= bound * (1 + 1e-12)
    if n >= (k - 1) * groups + b:
        assert worst == pytest.approx(bound, rel=1e-12)


def test_participations_closer_than_the_band_cost_more_so_they_are_refused() -> None:
    f = factorize(10, 3)
    k = 4
    closer = max(worst_change(f.matrix(), p) for p in patterns(10, k, 2))
    assert closer > math.sqrt(k) * 1.1  # overlapping bands add up
    with pytest.raises(ValueError, match="below the 3 bands"):
        sensitivity(f, k, 2)


# ---- the correlated noise --------------------------------------------------------------------
def test_the_online_noise_is_c_inverse_z_and_its_state_resumes_it_bit_for_bit() -> None:
    f = factorize(12, 4)
    z = torch.randn(12, 1000, generator=torch.Generator().manual_seed(0))
    noise = CorrelatedNoise(f)
    w = torch.stack([noise.step(t + 1, z[t]) for t in range(12)])
    expected = np.linalg.solve(f.matrix(), z.double().numpy())
    np.testing.assert_allclose(w.double().numpy(), expected, atol=1e-5)
    # stop after round 5, keep only the state, continue: the same float32 values
    first = CorrelatedNoise(f)
    for t in range(5):
        first.step(t + 1, z[t])
    state = first.state()
    assert state.shape == (3, 1000) and state.dtype == np.float32
    resumed = CorrelatedNoise(f, [torch.from_numpy(row) for row in state], last_round=5)
    rest = torch.stack([resumed.step(t + 1, z[t]) for t in range(5, 12)])
    assert torch.equal(rest, w[5:])
    with pytest.raises(RuntimeError, match="round 12 cannot follow"):
        resumed.step(12, z[0])


def test_noise_std_per_round_follows_the_rows_of_c_inverse() -> None:
    """Empirical std over 200k coordinates against ||row t of C^-1||; the prefix sums
    (the model's noise) against the rows of B = A C^-1 -- below sqrt(t), independent noise's."""
    f = factorize(16, 6)
    gen = torch.Generator().manual_seed(1)
    noise = CorrelatedNoise(f)
    w = torch.stack([noise.step(t, torch.randn(200_000, generator=gen)) for t in range(1, 17)])
    rows = np.linalg.norm(f.decoder(), axis=1)
    for t in range(1, 17):
        assert float(w[t - 1].std()) == pytest.approx(f.noise_std(t), rel=0.01)
        assert float(w[:t].sum(0).std()) == pytest.approx(rows[t - 1], rel=0.01)
    assert f.noise_std(16) > 1 and rows[-1] < math.sqrt(16) * 0.6


# ---- accounting --------------------------------------------------------------------------------
def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon of a Gaussian mechanism with sensitivity/sigma = mu (Balle & Wang
    2018): delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), solved for eps."""
    lo, hi = 0.0, 100.0
    for _ in range(200):
        eps = (lo + hi) / 2
        d = norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)
        lo, hi = (eps, hi) if d > delta else (lo, eps)
    return hi


def test_epsilon_composes_the_participations_of_each_round_at_sample_rate_one() -> None:
    z, delta, groups = 1.2, 1e-5, 5
    ledger = BandMFLedger(z, delta, groups)
    for rounds in (1, 5, 6, 20, 21):
        k = math.ceil(rounds / groups)
        assert ledger.epsilon(rounds) == compute_epsilon(z, 1.0, k, delta)  # bit for bit
    assert ledger.history(20) == [(z, 1.0, 20)]  # what the checkpoint keeps: rounds
    # RDP is an upper bound of the exact (analytic) Gaussian epsilon; PRV is close to it
    exact = analytic_gaussian_epsilon(math.sqrt(4) / z, delta)
    rdp, prv = bandmf_epsilon(z, 4, delta), bandmf_epsilon(z, 4, delta, "prv")
    assert exact < rdp < exact * 1.25
    assert prv == pytest.approx(exact, rel=0.02)
    # calibration lands within 0.01 below the target
    target = 6.0
    assert target - 0.011 <= bandmf_epsilon(calibrate_bandmf(target, delta, 4), 4, delta) <= target
    with pytest.raises(ValueError, match="cannot continue at"):
        BandMFLedger(1.0, delta, groups, prior=[(z, 1.0, 3)])


def test_epsilon_matches_pfl_researchs_bandmf_accounting() -> None:
    """pfl-research's BandedMatrixFactorizationMechanism accounts
    ``num_compositions = ceil(n / min_separation)`` Gaussian mechanisms at sampling probability
    1 with its noise parameter = z per participation: the same mechanism as fedwon's."""
    accountants = pytest.importorskip(
        "pfl.privacy.privacy_accountant", reason="pfl-research is the `bench` extra"
    )
    n, groups, z, delta = 40, 10, 1.5, 1e-6
    k = Participation("cyclic", groups * 5, 5).max_participations(n)
    assert k == n // groups + int(n % groups != 0)  # pfl's max_participation for min_sep = G
    ours_rdp = bandmf_epsilon(z, k, delta)
    ours_prv = bandmf_epsilon(z, k, delta, "prv")
    common = {"num_compositions": k, "sampling_probability": 1.0, "mechanism": "gaussian"}
    pfl_rdp = accountants.RDPPrivacyAccountant(noise_parameter=z, delta=delta, **common).epsilon
    pfl_pld = accountants.PLDPrivacyAccountant(noise_parameter=z, delta=delta, **common).epsilon
    assert ours_rdp == pytest.approx(pfl_rdp, rel=0.02)  # two RDP order grids
    assert ours_prv == pytest.approx(pfl_pld, rel=0.01)  # two numerical (tight) accountants


@pytest.mark.slow  # pfl's PLD bisection takes ~8 s
@pytest.mark.parametrize("target", [2.0, 8.0, 32.0])
def test_the_noise_calibrated_for_a_target_matches_pfl_researchs(target: float) -> None:
    """The recipe's schedule (k = 4 participations, delta = 1e-4): the noise multiplier each
    finds for a target epsilon, fedwon's PRV bisection against pfl's PLD one."""
    accountants = pytest.importorskip(
        "pfl.privacy.privacy_accountant", reason="pfl-research is the `bench` extra"
    )
    common = {"num_compositions": 4, "sampling_probability": 1.0, "mechanism": "gaussian"}
    pfl = accountants.PLDPrivacyAccountant(epsilon=target, delta=1e-4, **common)
    assert calibrate_bandmf(target, 1e-4, 4, "prv") == pytest.approx(pfl.noise_parameter, rel=0.01)


@pytest.mark.slow  # pfl's mechanism module and its factorizer take ~10 s
def test_pfl_researchs_online_noise_agrees_and_its_own_c_has_unit_rows_not_columns() -> None:
    """pfl's ForwardSubstitution on fedwon's C draws fedwon's noise. pfl's own C is
    ``cholesky(X)`` of the optimized Gram matrix X = C^T C (unit diagonal), i.e. L with
    L L^T = X: its *rows* have unit norm and its columns up to ~1.3 here (1.85 at 40 rounds,
    separation 10), so its sensitivity exceeds the sqrt(k) its accountant assumes. fedwon's
    columns have unit norm (the lower-triangular C with C^T C = X would, too)."""
    pytest.importorskip("pfl.privacy.privacy_accountant", reason="pfl-research: the bench extra")
    import pfl.internal.ops.pytorch_ops as pfl_torch
    from pfl.internal.ops.selector import set_framework_module
    from pfl.privacy.ftrl_mechanism import (
        BandedMatrixFactorizationMechanism,
        ForwardSubstitution,
        FTRLMatrixFactorizer,
    )

    set_framework_module(pfl_torch)
    f = factorize(12, 4)
    theirs, ours = ForwardSubstitution(f.matrix(), f.bands), CorrelatedNoise(f)
    gen = torch.Generator().manual_seed(0)
    for t in range(1, 13):
        z = torch.randn(50, generator=gen)
        torch.testing.assert_close(theirs.step(z), ours.step(t, z), rtol=0, atol=2e-6)
    n, separation = 12, 4
    mask = BandedMatrixFactorizationMechanism._get_banded_matrix_mask(n, separation - 1)
    gram = np.asarray(FTRLMatrixFactorizer(prefix_sum_workload(n), mask).optimize())
    pfl_c = np.linalg.cholesky(gram)  # as pfl's mechanism builds its query matrix
    np.testing.assert_allclose(np.linalg.norm(pfl_c, axis=1), 1.0, atol=1e-6)
    assert np.linalg.norm(pfl_c, axis=0).max() > 1.2
    k = math.ceil(n / separation)
    pfl_worst = max(worst_change(pfl_c, p) for p in patterns(n, k, separation))
    assert pfl_worst > math.sqrt(k) * 1.05
    reverse = np.linalg.cholesky(gram[::-1, ::-1])[::-1, ::-1].T  # lower, C^T C = gram
    np.testing.assert_allclose(np.linalg.norm(reverse, axis=0), 1.0, atol=1e-6)


def test_the_keys_choices_match_the_modules_that_implement_them() -> None:
    fields = DPConfig.model_fields
    assert typing.get_args(fields["factorization"].annotation) == FACTORIZATIONS
    annotation = ServerSpec.model_fields["participation"].annotation
    assert typing.get_args(annotation) == PARTICIPATION_MODES
    assert set(BandMF.keys) == {"bands", "factorization"}


# ---- the mechanism: the guard and one-line refusals ---------------------------------------------
BANDMF: dict[str, object] = {
    "model": "cnn-tiny",
    "num_clients": 12,
    "clients_per_round": 3,
    "min_clients": 3,
    "num_rounds": 8,
    "participation": "cyclic",
    "dp.enabled": True,
    "dp.noise_multiplier": 1.0,
    "dp.mechanism": "bandmf",
}


def test_a_client_offered_sooner_than_its_separation_is_refused() -> None:
    cfg = make_config(BANDMF)
    settings = GaussianSettings(
        noise_multiplier=1.0, clip_norm=1.0, expected_clients=3, sample_rate=1.0, delta=1e-5
    )
    mech = BandMF(
        settings,
        min_separation=4,
        factorization=factorize(8, 4),
    )
    assert cfg.participation.groups == 4
    assert mech.eligible(1, [1, 5, 9]) == [1, 5, 9]
    with pytest.raises(RuntimeError, match="node 5 trained in round 1, fewer than the 4"):
        mech.eligible(3, [5, 6])
    sums = [torch.zeros(3, 4), torch.zeros(5)]
    mech.release(1, RoundSum(sums, 3, 3, (1, 5, 9)))
    std = 1.0 * 1.0 * factorize(8, 4).noise_std(1) / 3
    assert mech.noise_std_on_mean() == pytest.approx(std)
    assert MECHANISMS["bandmf"] is BandMF
    for rnd, group in ((2, [2, 6, 10]), (3, [3, 7, 11]), (4, [4, 8, 12])):
        mech.eligible(rnd, group)
        mech.release(rnd, RoundSum([torch.zeros(3, 4), torch.zeros(5)], 3, 3, tuple(group)))
    # a resumed run whose node ids changed (Flower's engine renumbers them) is refused
    resumed = BandMF(
        replace(settings, prior=[(1.0, 1.0, 4)]),
        min_separation=4,
        factorization=factorize(8, 4),
        state=mech.state(),
    )
    assert resumed.eligible(5, [1, 5, 9]) == [1, 5, 9]
    with pytest.raises(RuntimeError, match="node ids changed"):
        resumed.eligible(6, [2, 6, 99])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"participation": "uniform"}, "set participation='cyclic'"),
        ({"dp.bands": 5}, "dp.bands=5 exceeds the 4 cyclic groups"),
        ({"dp.bands": 4, "num_rounds": 3}, "dp.bands=4 exceeds num_rounds=3"),
        ({"dp.max_epsilon": 5.0}, "dp.max_epsilon=5 does not apply to dp.mechanism='bandmf'"),
        ({"dp.noise_cohort_size": 6}, "dp.noise_cohort_size=6 does not apply"),
        ({"dp.population": 1000}, "dp.population=1000 does not apply"),
        ({"dp.mechanism": "gaussian"}, "amplification by sampling"),
        ({"dp.mechanism": "gaussian", "dp.bands": 2}, "dp.bands is read by dp.mechanism='bandmf'"),
        ({"dp.bands": -1}, "dp.bands: must be >= 0"),
        ({"dp.factorization": "svd"}, "dp.factorization"),
        ({"clients_per_round": 5, "min_clients": 5}, "must divide num_clients"),
    ],
)
def test_bad_bandmf_settings_are_refused_in_one_line(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        make_config({**BANDMF, **change})
    assert message in str(err.value) and "\n" not in str(err.value)

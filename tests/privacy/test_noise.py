"""The Gaussian mechanism: std z*C/m on the mean, seeded per round, OS-secure draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedwon.privacy.noise import (
    noise_std,
    privatize_sum_,
    round_generator,
    secure_standard_normal,
)


@settings(max_examples=12, deadline=None)
@given(
    z=st.floats(0.1, 5.0),
    clip=st.floats(0.01, 10.0),
    cohort=st.integers(1, 50),
    seed=st.integers(0, 1000),
)
def test_empirical_noise_std_matches_z_c_over_cohort(
    z: float, clip: float, cohort: int, seed: int
) -> None:
    total = torch.full((200_000,), 3.0 * cohort)  # a sum of cohort updates of 3.0 each
    sums = [total[:150_000].view(300, 500), total[150_000:]]
    privatize_sum_(sums, z, clip, cohort, round_generator(seed, 1))
    values = total - 3.0
    expected = noise_std(z, clip, cohort)
    assert expected == pytest.approx(z * clip / cohort)
    # the standard error of a std estimate from n draws is std/sqrt(2n) ~ 0.16% here
    assert float(values.std()) == pytest.approx(expected, rel=0.01)
    assert abs(float(values.mean())) < 5 * expected / np.sqrt(values.numel())


def test_seeded_noise_repeats_per_round_and_differs_between_rounds() -> None:
    def noisy(seed: int, rnd: int) -> torch.Tensor:
        sums = [torch.zeros(1000)]
        privatize_sum_(sums, 1.0, 1.0, 1, round_generator(seed, rnd))
        return sums[0]

    torch.testing.assert_close(noisy(0, 3), noisy(0, 3), rtol=0, atol=0)
    assert not torch.equal(noisy(0, 3), noisy(0, 4))
    assert not torch.equal(noisy(0, 3), noisy(1, 3))


def test_noise_does_not_depend_on_how_the_update_is_split_into_layers() -> None:
    whole = [torch.zeros(60)]
    parts = [torch.zeros(10), torch.zeros(20, 2), torch.zeros(10)]
    privatize_sum_(whole, 2.0, 0.5, 4, round_generator(7, 1))
    privatize_sum_(parts, 2.0, 0.5, 4, round_generator(7, 1))
    torch.testing.assert_close(torch.cat([p.flatten() for p in parts]), whole[0])


def test_zero_noise_only_averages_over_the_expected_cohort() -> None:
    sums = [torch.tensor([4.0, 8.0])]
    privatize_sum_(sums, 0.0, 1.0, 4, round_generator(0, 1))
    torch.testing.assert_close(sums[0], torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="expected_clients must be >= 1"):
        privatize_sum_(sums, 1.0, 1.0, 0, None)


def test_secure_draws_are_standard_normal_and_unseeded() -> None:
    a, b = secure_standard_normal(100_001), secure_standard_normal(100_001)
    assert a.shape == (100_001,) and a.dtype == torch.float64
    assert not torch.equal(a, b)
    assert float(a.std()) == pytest.approx(1.0, rel=0.02)
    assert abs(float(a.mean())) < 0.02
    # tails of a normal, not of a uniform: P(|x| > 3) = 0.27%
    assert 0.001 < float((a.abs() > 3).double().mean()) < 0.005
    sums = [torch.zeros(50_000)]
    privatize_sum_(sums, 1.0, 2.0, 1, None)  # generator None = OS-secure noise
    assert float(sums[0].std()) == pytest.approx(2.0, rel=0.03)

"""DPConfig: one-line errors, cross-field checks against the run, flat round trip.

(Tests fedwon/privacy/config.py; tests/test_config.py already takes the basename.)
"""

from __future__ import annotations

import typing

import pytest
from pydantic import ValidationError

from fedwon.privacy import ACCOUNTANTS, CLIP_MODES, SPLITS, DPConfig, check_dp_run


def error(**values: object) -> str:
    with pytest.raises(ValidationError, match="validation error for DPConfig") as info:
        DPConfig(**values)  # type: ignore[arg-type]
    (item,) = info.value.errors()
    return f"{'.'.join(map(str, item['loc']))}: {item['msg']}".removeprefix(": ")


def test_defaults_are_disabled_and_valid() -> None:
    dp = DPConfig()
    assert not dp.enabled and dp.level == "user" and dp.clipping == "per_layer"


def test_choices_match_the_modules_that_implement_them() -> None:
    fields = DPConfig.model_fields
    assert typing.get_args(fields["clipping"].annotation) == CLIP_MODES
    assert typing.get_args(fields["split"].annotation) == SPLITS
    assert typing.get_args(fields["accountant"].annotation) == ACCOUNTANTS


def test_bad_values_get_one_line_errors_naming_the_key() -> None:
    assert error(clip_norm=0) == "clip_norm: Value error, must be > 0, got 0.0"
    assert "delta: Value error, must be in (0, 1)" in error(delta=1.0)
    assert "clipping: Input should be 'flat' or 'per_layer'" in error(clipping="layer")
    assert "accountant: Input should be 'rdp' or 'prv'" in error(accountant="gdp")
    assert "Extra inputs are not permitted" in error(clip=1.0)
    for message in (error(noise_multiplier=-1), error(population=-2)):
        assert "\n" not in message


def test_enabled_needs_exactly_one_of_noise_multiplier_or_target_epsilon() -> None:
    assert "set exactly one of dp.noise_multiplier" in error(enabled=True)
    assert "set exactly one" in error(enabled=True, noise_multiplier=1.0, target_epsilon=3.0)
    DPConfig(enabled=True, noise_multiplier=1.0)
    DPConfig(enabled=True, target_epsilon=3.0, max_epsilon=5.0)
    assert "exceeds dp.max_epsilon" in error(enabled=True, target_epsilon=8.0, max_epsilon=5.0)
    assert "dp.max_epsilon caps user-level" in error(
        enabled=True, level="sample", noise_multiplier=1.0, max_epsilon=5.0
    )


def test_flat_round_trip() -> None:
    dp = DPConfig(enabled=True, noise_multiplier=1.1, clipping="flat", population=1000)
    flat = dp.to_flat()
    assert flat["dp.noise_multiplier"] == 1.1 and flat["dp.clipping"] == "flat"
    assert DPConfig.from_flat({**flat, "lr": 0.1}) == dp


RUN = dict(clients_per_round=10, min_clients=10, num_clients=100, norm="ws")


def test_run_checks_refuse_what_breaks_the_guarantee() -> None:
    dp = DPConfig(enabled=True, noise_multiplier=1.0)
    check = check_dp_run(dp, **RUN)  # type: ignore[arg-type]
    assert check.population == 100 and check.sample_rate == 0.1 and check.warnings == ()
    with pytest.raises(
        ValueError, match=r"min_clients=8 below the 10 clients .* set min_clients=10"
    ):
        check_dp_run(dp, **{**RUN, "min_clients": 8})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"dp\.population=5 is smaller than the 10 clients"):
        check_dp_run(dp.model_copy(update={"population": 5}), **RUN)  # type: ignore[arg-type]
    sample = DPConfig(enabled=True, level="sample", noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"cannot train BatchNorm.*norm='gn' or norm='ws'"):
        check_dp_run(sample, **{**RUN, "norm": "bn"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"agc_clip=0\.01: DP-SGD overwrites"):
        check_dp_run(sample, **RUN, agc_clip=0.01)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"proximal_mu=0\.1: DP-SGD steps .* set proximal_mu=0"):
        check_dp_run(sample, **RUN, proximal_mu=0.1)  # type: ignore[arg-type]
    assert check_dp_run(sample, **{**RUN, "min_clients": 1}).warnings == ()  # type: ignore[arg-type]


def test_a_large_delta_is_warned_and_population_sets_the_sample_rate() -> None:
    dp = DPConfig(enabled=True, noise_multiplier=1.0, delta=0.02, population=1000)
    check = check_dp_run(dp, **RUN)  # type: ignore[arg-type]
    assert check.sample_rate == 0.01
    (warning,) = check.warnings
    assert "dp.delta=0.02 is >= 1/population (1/1000)" in warning
    assert check_dp_run(DPConfig(), **RUN).warnings == ()  # type: ignore[arg-type]

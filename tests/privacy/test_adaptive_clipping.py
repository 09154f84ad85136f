"""Adaptive clipping (Andrew et al. 2021) as a user-level mechanism, and against Flower 1.39.

Flower's ``DifferentialPrivacyServerSideAdaptiveClipping`` / ``ClientSide`` are fed the same
client replies as fedwon's ``adaptive_clipping`` with noise disabled (z = 0, so both count and
update noise are 0): with Flower's norm bit read as the paper defines it (1 = the update was
*not* clipped), both give the same bound after every round (exactly: the same float64
arithmetic) and the same aggregate (float32 updates, to 1e-6). As shipped, Flower 1.39 counts
*clipped* updates in that rule, so its bound moves away from the target quantile, and it noises
a round with the bound after its update; both are pinned here so a Flower fix shows up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.mod import adaptiveclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
)
from flwr.serverapp.strategy import dp_adaptive_clipping as flower_adaptive
from flwr.supercore.differential_privacy import KEY_NORM_BIT, compute_adaptive_noise_params
from hypothesis import given, settings
from hypothesis import strategies as st
from privacy_fakes import StubGrid, client_delta, fedavg, model_arrays, record, reply

from fedwon.privacy import CentralDP, compute_epsilon, dp_clipping_mod
from fedwon.privacy.mechanisms import AdaptiveClipping, GaussianSettings, RoundSum
from fedwon.privacy.mechanisms import adaptive_clipping as adaptive_module
from fedwon.privacy.mechanisms.adaptive_clipping import (
    composed_noise_multiplier,
    update_noise_multiplier,
)
from fedwon.protocol import CLIP_NORM_METRIC, UNCLIPPED_KEY

COHORT = 4
SCALES = [0.002, 0.01, 0.04, 0.3]  # update norms ~0.05 .. ~7 (a float model of 1,250 entries)
TARGET, STEP, START = 0.5, 0.2, 0.5


def float_model() -> dict[str, np.ndarray]:
    """The fakes' model without its integer counter: Flower's wrappers clip every array."""
    return {k: v for k, v in model_arrays().items() if v.dtype.kind == "f"}


def adaptive(**kwargs: Any) -> AdaptiveClipping:
    """Adaptive clipping from flat keywords: its own, and those of its GaussianSettings
    (``clip_norm``: its first bound)."""
    own = {
        "target_unclipped_quantile": TARGET,
        "clip_learning_rate": STEP,
        "unclipped_count_stddev": 0.0,
    }
    own = {key: kwargs.pop(key, value) for key, value in own.items()}
    shared: dict[str, Any] = dict(
        noise_multiplier=0.0,
        clip_norm=START,
        expected_clients=COHORT,
        sample_rate=0.1,
        delta=1e-5,
        clipping="flat",
    )
    return AdaptiveClipping(GaussianSettings(**{**shared, **kwargs}), **own)


def norms(sent: dict[str, np.ndarray]) -> list[float]:
    return [
        math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in d.values()))
        for d in (client_delta(i, s, sent) for i, s in enumerate(SCALES))
    ]


def context(node: int) -> Context:
    return Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})


def train_round(
    strategy: Any,
    server_round: int,
    sent: dict[str, np.ndarray],
    mod: Callable[..., Message] | None = None,
) -> tuple[dict[str, np.ndarray], Any]:
    """One round on a stub grid: node i replies ``sent + client_delta(i)`` (through ``mod``)."""
    messages = sorted(
        strategy.configure_train(server_round, record(sent), ConfigRecord(), StubGrid(COHORT)),
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = []
    for i, msg in enumerate(messages):
        delta = client_delta(i, SCALES[i], sent)

        def trained(m: Message, _: Context, delta: dict[str, np.ndarray] = delta) -> Message:
            return reply(m, delta)

        replies.append(trained(msg, context(i)) if mod is None else mod(msg, context(i), trained))
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    assert arrays is not None
    return {k: a.numpy() for k, a in arrays.items()}, metrics


def paper_bit(flower_bit: Callable[..., bool]) -> Callable[..., bool]:
    """Flower's norm bit as Andrew et al. define it: 1 when the update was *not* clipped."""
    return lambda arrays, clip: not flower_bit(arrays, clip)


# ---- the same replies: fedwon and Flower -----------------------------------------------------
@pytest.mark.parametrize("start", [0.1, 1.5])  # below / above the median update norm
def test_server_side_matches_flower_bound_and_aggregate(
    monkeypatch: pytest.MonkeyPatch, start: float
) -> None:
    monkeypatch.setattr(
        flower_adaptive,
        "adaptive_clip_inputs_inplace",
        paper_bit(flower_adaptive.adaptive_clip_inputs_inplace),
    )
    ours = CentralDP.around(fedavg(), adaptive(clip_norm=start))
    theirs = DifferentialPrivacyServerSideAdaptiveClipping(
        fedavg(),
        noise_multiplier=0.0,
        num_sampled_clients=COHORT,
        initial_clipping_norm=start,
        target_clipped_quantile=TARGET,
        clip_norm_lr=STEP,
    )
    sent = float_model()
    bounds = [start]
    for server_round in range(1, 26):
        assert ours.clip_norm == theirs.clipping_norm == bounds[-1]
        mine, metrics = train_round(ours, server_round, sent)
        flowers, _ = train_round(theirs, server_round, sent)
        assert metrics[CLIP_NORM_METRIC] == bounds[-1]  # the bound this round clipped to
        unclipped = sum(n <= bounds[-1] for n in norms(sent))
        bounds.append(bounds[-1] * math.exp(-STEP * (unclipped / COHORT - TARGET)))
        assert ours.clip_norm == theirs.clipping_norm == bounds[-1]
        for key, value in mine.items():
            np.testing.assert_allclose(flowers[key], value, rtol=0, atol=1e-6, err_msg=key)
        sent = mine
    # from either side, the bound settled between the 2nd and 3rd of the four norms (where
    # half of the updates are left unclipped, so it stays put)
    low, high = sorted(norms(float_model()))[1:3]
    assert low < bounds[-1] < high and bounds[-1] == bounds[-2] != start


def test_client_side_matches_flower_bound_and_aggregate() -> None:
    ours = CentralDP.around(fedavg(), adaptive(clip_norm=0.1), placement="client")
    theirs = DifferentialPrivacyClientSideAdaptiveClipping(
        fedavg(),
        noise_multiplier=0.0,
        num_sampled_clients=COHORT,
        initial_clipping_norm=0.1,
        target_clipped_quantile=TARGET,
        clip_norm_lr=STEP,
    )

    def flower_mod(msg: Message, ctx: Context, call_next: Callable[..., Message]) -> Message:
        out = adaptiveclipping_mod(msg, ctx, call_next)
        metrics = out.content["metrics"]
        metrics[KEY_NORM_BIT] = 1 - int(metrics[KEY_NORM_BIT])  # the paper's bit
        return out

    sent = float_model()
    for server_round in range(1, 5):
        mine, _ = train_round(ours, server_round, sent, dp_clipping_mod)
        flowers, _ = train_round(theirs, server_round, sent, flower_mod)
        assert ours.clip_norm == theirs.clipping_norm
        for key, value in mine.items():
            np.testing.assert_allclose(flowers[key], value, rtol=0, atol=1e-6, err_msg=key)
        sent = mine
    assert ours.clip_norm > 0.1


def test_flower_as_shipped_moves_its_bound_away_from_the_quantile() -> None:
    """Flower 1.39 counts clipped replies in C <- C exp(-eta (b - gamma)): with 3 of 4 updates
    clipped its bound shrinks (clipping even more), where the paper's grows."""
    sent = float_model()
    small = 0.1  # below three of the four update norms
    assert sum(n > small for n in norms(sent)) == 3
    ours = CentralDP.around(fedavg(), adaptive(clip_norm=small))
    theirs = DifferentialPrivacyServerSideAdaptiveClipping(
        fedavg(), 0.0, COHORT, small, TARGET, STEP
    )
    train_round(ours, 1, sent)
    train_round(theirs, 1, sent)
    assert theirs.clipping_norm == pytest.approx(small * math.exp(-STEP * (3 / 4 - TARGET)))
    assert ours.clip_norm == pytest.approx(small * math.exp(-STEP * (1 / 4 - TARGET)))
    assert theirs.clipping_norm < small < ours.clip_norm


def test_flower_noises_with_the_bound_after_the_update_fedwon_with_the_one_clipped_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    z = 0.1  # Flower's default count noise for 4 clients (0.2) allows z < 0.4
    seen: dict[str, float] = {}
    monkeypatch.setattr(
        flower_adaptive, "add_gaussian_noise_inplace", lambda _, std: seen.update(flower=std)
    )
    real = adaptive_module.privatize_sum_

    def spy(sums: Any, multiplier: float, clip: float, *args: Any) -> None:
        seen.update(ours=multiplier * clip / COHORT)
        real(sums, multiplier, clip, *args)

    monkeypatch.setattr(adaptive_module, "privatize_sum_", spy)
    ours = CentralDP.around(fedavg(), adaptive(noise_multiplier=z, unclipped_count_stddev=None))
    theirs = DifferentialPrivacyServerSideAdaptiveClipping(fedavg(), z, COHORT, START)
    mechanism = ours.mechanism
    assert isinstance(mechanism, AdaptiveClipping)
    assert (theirs.clipped_count_stddev, theirs.noise_multiplier) == (
        mechanism.unclipped_count_stddev,
        mechanism.update_noise_multiplier,
    )
    sent = float_model()
    train_round(ours, 1, sent)
    train_round(theirs, 1, sent)
    z_upd = mechanism.update_noise_multiplier
    assert seen["ours"] == pytest.approx(z_upd * START / COHORT, rel=1e-12)
    assert seen["flower"] == pytest.approx(z_upd * theirs.clipping_norm / COHORT, rel=1e-12)
    assert theirs.clipping_norm != START


# ---- the mechanism on its own ----------------------------------------------------------------
def test_the_bound_tracks_the_target_quantile_of_update_norms() -> None:
    """Norms from a fixed log-normal law, 200 clients a round: after 300 rounds the bound sits
    at the target quantile of the law, with and without noise."""
    rng = np.random.default_rng(0)
    for gamma in (0.2, 0.5, 0.9):
        quantile = float(np.exp(0.5 * _normal_ppf(gamma)))  # log-norm ~ N(0, 0.5^2)
        for z in (0.0, 1.0):
            mechanism = adaptive(
                noise_multiplier=z,
                expected_clients=200,
                target_unclipped_quantile=gamma,
                unclipped_count_stddev=None if z else 0.0,
                clip_norm=0.01,
            )
            late = []
            for server_round in range(1, 301):
                bound = mechanism.clip_norm
                unclipped = int((np.exp(0.5 * rng.standard_normal(200)) <= bound).sum())
                mechanism.release(server_round, RoundSum([torch.zeros(3)], 200, unclipped))
                if server_round > 200:
                    late.append(bound)
            assert np.median(late) == pytest.approx(quantile, rel=0.08), (gamma, z)


def _normal_ppf(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def test_the_count_noise_and_update_noise_are_what_composes_to_z() -> None:
    """Measured noise: std of the released mean is z_upd*C/M, of the noised fraction sigma_b/M;
    (z_upd^-2 + (2 sigma_b)^-2)^-1/2 is the z the ledger accounts."""
    z, m, big_m, count_std = 1.0, 10, 40, 3.0
    mechanism = adaptive(
        noise_multiplier=z,
        expected_clients=m,
        noise_cohort=big_m,
        unclipped_count_stddev=count_std,
        clip_norm=2.0,
        clip_learning_rate=1e-12,  # keep C (practically) fixed while measuring
    )
    fractions, stds = [], []
    for server_round in range(1, 401):
        total = RoundSum([torch.zeros(5000)], m, m // 2)
        mechanism.release(server_round, total)
        stds.append(float(total.sums[0].std()))
        assert mechanism.noisy_unclipped_fraction is not None
        fractions.append(mechanism.noisy_unclipped_fraction - 0.5)
    z_upd = mechanism.update_noise_multiplier
    assert np.mean(stds) == pytest.approx(z_upd * 2.0 / big_m, rel=0.01)
    assert np.std(fractions) == pytest.approx(count_std / big_m, rel=0.1)
    assert composed_noise_multiplier(z_upd, count_std) == pytest.approx(z, rel=1e-12)
    assert mechanism.ledger.noise_multiplier == z
    assert mechanism.noise_std_on_mean() == pytest.approx(z_upd * mechanism.clip_norm / big_m)


@settings(max_examples=40, deadline=None)
@given(
    z=st.floats(0.05, 5.0),
    cohort=st.integers(1, 500),
    scale=st.sampled_from([1, 2, 10]),
    count_std=st.sampled_from([0.0, 0.5, 3.0, 50.0]),
)
def test_every_round_is_accounted_at_the_noise_it_used(
    z: float, cohort: int, scale: int, count_std: float
) -> None:
    """Property: whatever the cohort, noise cohort and count noise, the noise the mechanism
    adds (updates: z_upd, count: sigma_b, both scaled by m/M) composes to the z its ledger
    accounts every round at; Flower derives the same z_upd and default sigma_b."""
    big_m = cohort * scale
    sigma = count_std or big_m / 20
    if z >= 2 * sigma:
        with pytest.raises(ValueError, match="needs an unclipped count's noise std above"):
            adaptive(
                noise_multiplier=z,
                expected_clients=cohort,
                noise_cohort=big_m,
                unclipped_count_stddev=count_std or None,
            )
        return
    mechanism = adaptive(
        noise_multiplier=z,
        expected_clients=cohort,
        noise_cohort=big_m,
        unclipped_count_stddev=count_std or None,
        sample_rate=0.01,
    )
    assert mechanism.unclipped_count_stddev == sigma
    composed = composed_noise_multiplier(mechanism.update_noise_multiplier, sigma)
    assert composed == pytest.approx(mechanism.ledger.noise_multiplier, rel=1e-9)
    assert mechanism.ledger.epsilon(3) == compute_epsilon(z, 0.01, 3, 1e-5)
    flower_sigma, flower_z = compute_adaptive_noise_params(z, big_m, count_std or None)
    assert (flower_sigma, flower_z) == pytest.approx((sigma, mechanism.update_noise_multiplier))


def test_update_noise_multiplier_is_theorem_1() -> None:
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx((1 - 0.25) ** -0.5)
    assert update_noise_multiplier(0.0, 0.0) == 0.0
    assert composed_noise_multiplier(update_noise_multiplier(0.7, 0.4), 0.4) == pytest.approx(0.7)
    with pytest.raises(ValueError, match=r"needs an unclipped count's noise std above 0\.5"):
        update_noise_multiplier(1.0, 0.5)


def test_per_layer_counts_an_update_as_unclipped_only_if_no_layer_was_clipped() -> None:
    """One total bound, split by the per-layer rule; b_i = 1 iff every layer was within its
    share -- so the flat norm can be below C while the update counts as clipped."""
    sent = float_model()
    delta = {k: np.zeros_like(v) for k, v in sent.items()}
    delta["conv.bias"] = np.full_like(sent["conv.bias"], 0.3)  # norm 0.85, 3 layers: C/sqrt(3)
    dp = CentralDP.around(fedavg(1), adaptive(expected_clients=1, clipping="per_layer"))
    grid = StubGrid(1)
    (msg,) = dp.configure_train(1, record(sent), ConfigRecord(), grid)  # type: ignore[arg-type]
    _, metrics = dp.aggregate_train(1, [reply(msg, delta)])
    assert metrics["clipped_fraction"] == 1.0  # norm 0.85 > START, its bias > START/sqrt(3)
    assert dp.clip_norm == pytest.approx(START * math.exp(-STEP * (0 - TARGET)))


def test_the_client_reports_whether_it_clipped_and_the_server_needs_it() -> None:
    sent = float_model()
    dp = CentralDP.around(fedavg(), adaptive(), placement="client")
    messages = sorted(
        dp.configure_train(1, record(sent), ConfigRecord(), StubGrid(COHORT)),  # type: ignore[arg-type]
        key=lambda m: m.metadata.dst_node_id,
    )
    assert all(m.content["config"]["dp-clip-norm"] == START for m in messages)
    bits = []
    for i, msg in enumerate(messages):
        out = dp_clipping_mod(
            msg, context(i), lambda m, _, i=i: reply(m, client_delta(i, SCALES[i], sent))
        )  # type: ignore[misc]
        bits.append(out.content["metrics"][UNCLIPPED_KEY])
    assert bits == [int(n <= START) for n in norms(sent)]
    without = [reply(m, client_delta(i, 0.0, sent)) for i, m in enumerate(messages)]
    with pytest.raises(RuntimeError, match=r"did not report whether its clipping left"):
        dp.aggregate_train(1, without)


def test_os_secure_noise_drives_the_count_too() -> None:
    mechanism = adaptive(noise_multiplier=0.3, unclipped_count_stddev=None, secure_rng=True)
    total = RoundSum([torch.zeros(100)], COHORT, 0)
    mechanism.release(1, total)
    assert float(total.sums[0].abs().sum()) > 0  # update noise from the OS
    assert mechanism.noisy_unclipped_fraction != 0.0  # count noise too (sigma_b = 4/20)
    assert mechanism.clip_norm != START

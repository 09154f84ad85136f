"""CentralDP around Flower strategies, on a stub Grid with hand-made replies."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx
from privacy_fakes import (
    COHORT,
    StubGrid,
    central_dp,
    client_delta,
    fedavg,
    model_arrays,
    record,
    reply,
)

from fedwon.privacy import (
    BudgetExhaustedError,
    CentralDP,
    ClientClippingError,
    DPConfig,
    FedLAMB,
    clip_update,
    compute_epsilon,
)
from fedwon.privacy.central_dp import averages_replies
from fedwon.protocol import CLIP_NORM_KEY, CLIPPING_KEY, SPLIT_KEY


def run_round(
    dp: CentralDP,
    sent: dict[str, np.ndarray],
    scales: list[float],
    server_round: int = 1,
    examples: list[int] | None = None,
    replies_kept: int | None = None,
) -> tuple[dict[str, np.ndarray], Any, list[Message]]:
    """Configure, let node i 'train' by a delta of norm ~ scales[i], aggregate."""
    grid = StubGrid(len(scales))
    messages = sorted(
        dp.configure_train(server_round, record(sent), ConfigRecord(), grid),  # type: ignore[arg-type]
        key=lambda m: m.metadata.dst_node_id,
    )
    examples = examples or [10] * len(messages)
    replies = [
        reply(m, client_delta(i, s, sent), num_examples=n, loss=float(i))
        for i, (m, s, n) in enumerate(zip(messages, scales, examples, strict=True))
    ][:replies_kept]
    arrays, metrics = dp.aggregate_train(server_round, replies)
    assert arrays is not None
    return {k: a.numpy() for k, a in arrays.items()}, metrics, replies


def expected_mean(
    sent: dict[str, np.ndarray], scales: list[float], clip: float, mode: str, split: str
) -> dict[str, np.ndarray]:
    """sent + (sum of clipped deltas) / COHORT, computed independently with clip_update."""
    total = {k: np.zeros(v.shape, np.float64) for k, v in sent.items() if v.dtype.kind == "f"}
    for i, s in enumerate(scales):
        clipped = clip_update(client_delta(i, s, sent), clip, mode=mode, split=split)
        for k in total:
            total[k] += clipped[k]
    return {k: sent[k] + total[k] / COHORT if k in total else sent[k] for k in sent}


@pytest.mark.parametrize(
    ("mode", "split"), [("flat", "uniform"), ("per_layer", "uniform"), ("per_layer", "dim")]
)
def test_aggregate_is_sent_plus_mean_of_clipped_updates_each_client_weighted_equally(
    mode: str, split: str
) -> None:
    sent = model_arrays()
    scales = [0.001, 0.05, 0.5, 3.0]  # from untouched to heavily clipped
    dp = central_dp(clipping=mode, split=split)
    got, metrics, _ = run_round(dp, sent, scales, examples=[1, 1000, 5, 50])
    want = expected_mean(sent, scales, 1.0, mode, split)
    for key in sent:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
    assert got["bn.num_batches_tracked"] == 7  # the counter keeps the value that was sent
    # the clients' metrics still reach the inner strategy: train_loss weighted by examples
    assert metrics["train_loss"] == pytest.approx((0 * 1 + 1 * 1000 + 2 * 5 + 3 * 50) / 1056)
    assert 0 < metrics["clipped_fraction"] < 1


def test_missing_replies_still_divide_by_the_expected_cohort() -> None:
    sent = model_arrays()
    scales = [0.001, 0.002, 0.003, 0.004]  # all within the bound
    got, _, _ = run_round(central_dp(), sent, scales, replies_kept=2)
    delta = [client_delta(i, s, sent) for i, s in enumerate(scales[:2])]
    np.testing.assert_allclose(
        got["fc.weight"],
        sent["fc.weight"] + (delta[0]["fc.weight"] + delta[1]["fc.weight"]) / 4,
        rtol=1e-6,
    )


def test_noise_on_the_average_has_std_z_c_over_m_and_is_seeded_per_round() -> None:
    sent = {"w": np.zeros(200_000, np.float32)}
    z, clip = 1.5, 0.2

    def noise(seed: int, server_round: int) -> np.ndarray:
        dp = central_dp(noise_multiplier=z, clip_norm=clip, seed=seed)
        got, _, _ = run_round(dp, sent, [0.0] * COHORT, server_round=server_round)
        return got["w"]

    first = noise(0, 1)
    assert float(first.std()) == pytest.approx(z * clip / COHORT, rel=0.01)
    np.testing.assert_array_equal(first, noise(0, 1))
    assert not np.array_equal(first, noise(0, 2))
    assert not np.array_equal(first, noise(1, 1))


def test_epsilon_per_round_is_the_accountants_and_grows() -> None:
    z, q, delta = 1.2, 0.04, 1e-5
    dp = central_dp(noise_multiplier=z, sample_rate=q, delta=delta)
    sent = model_arrays()
    spent = []
    for r in (1, 2, 3):
        _, metrics, _ = run_round(dp, sent, [0.1] * COHORT, server_round=r)
        spent.append(metrics["epsilon"])
        assert metrics["epsilon"] == pytest.approx(compute_epsilon(z, q, r, delta), rel=1e-12)
    assert spent[0] < spent[1] < spent[2] == dp.epsilon_spent


def test_rounds_beyond_max_epsilon_are_refused_and_the_budget_can_be_planned() -> None:
    z, q, delta = 1.0, 0.04, 1e-5
    cap = compute_epsilon(z, q, 5, delta) + 1e-9  # exactly 5 rounds fit
    dp = central_dp(noise_multiplier=z, sample_rate=q, delta=delta, max_epsilon=cap)
    assert dp.rounds_within_budget(100) == 5
    assert dp.rounds_within_budget(3) == 3
    assert central_dp(noise_multiplier=z).rounds_within_budget(100) == 100  # no cap
    run_round(dp, model_arrays(), [0.1] * COHORT, server_round=5)
    with pytest.raises(BudgetExhaustedError, match=r"round 6 would spend epsilon .* round 5 was"):
        run_round(dp, model_arrays(), [0.1] * COHORT, server_round=6)
    assert issubclass(BudgetExhaustedError, PrivacyBudgetExhausted)


def test_an_adaptive_inner_strategy_sees_the_noisy_mean_as_its_pseudo_gradient() -> None:
    sent = model_arrays()
    scales = [0.01, 0.3, 1.0, 2.0]
    settings = dict(noise_multiplier=0.8, clip_norm=0.5, seed=3)
    plain, _, _ = run_round(central_dp(**settings), sent, scales)
    adam = FedAdam(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=4,
        min_available_nodes=4,
        beta_1=0.9,
    )
    run_round(central_dp(adam, **settings), sent, scales)
    assert adam.m_t is not None
    for key in ("conv.weight", "fc.weight"):
        pseudo_gradient = plain[key] - sent[key]  # the noisy mean update
        np.testing.assert_allclose(adam.m_t[key], 0.1 * pseudo_gradient, rtol=1e-4, atol=1e-7)


def test_replies_are_not_modified_and_bad_replies_are_refused() -> None:
    sent = model_arrays()
    dp = central_dp()
    _, _, replies = run_round(dp, sent, [5.0] * COHORT)
    raw = replies[0].content["arrays"]["fc.weight"].numpy()
    np.testing.assert_allclose(raw, sent["fc.weight"] + client_delta(0, 5.0, sent)["fc.weight"])

    messages = list(dp.configure_train(2, record(sent), ConfigRecord(), StubGrid(COHORT)))  # type: ignore[arg-type]
    bad = reply(messages[0], client_delta(0, 0.1, sent))
    del bad.content["arrays"]["conv.bias"]
    with pytest.raises(
        ValueError, match=r"node \d+ replied with other arrays .*missing \['conv.bias'\]"
    ):
        dp.aggregate_train(2, [bad])


def test_a_cohort_larger_than_calibrated_is_refused() -> None:
    dp = central_dp(fedavg(6), expected_clients=COHORT)
    with pytest.raises(ValueError, match="sampled 6 clients, more than the 4"):
        list(dp.configure_train(1, record(model_arrays()), ConfigRecord(), StubGrid(6)))  # type: ignore[arg-type]


def test_client_placement_sends_the_settings_and_refuses_unclipped_updates() -> None:
    dp = central_dp(placement="client", clip_norm=0.7, clipping="per_layer", split="dim")
    sent = model_arrays()
    messages = list(dp.configure_train(1, record(sent), ConfigRecord(), StubGrid(COHORT)))  # type: ignore[arg-type]
    config = messages[0].content["config"]
    assert (config[CLIP_NORM_KEY], config[CLIPPING_KEY], config[SPLIT_KEY]) == (
        0.7,
        "per_layer",
        "dim",
    )
    unclipped = [reply(m, client_delta(i, 3.0, sent)) for i, m in enumerate(messages)]
    with pytest.raises(ClientClippingError, match=r"install fedwon\.privacy\.dp_clipping_mod"):
        dp.aggregate_train(1, unclipped)


def test_constructor_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown clipping mode"):
        central_dp(clipping="layer")
    with pytest.raises(ValueError, match="expected_clients must be >= 1"):
        central_dp(expected_clients=0)
    with pytest.raises(ValueError, match="unknown placement 'edge'"):
        central_dp(placement="edge")
    assert math.isinf(central_dp().ledger.epsilon(1))  # no noise: no privacy


class EveryReplyFedAvg(FedAvg):
    """FedAvg with its own aggregate_train: CentralDP must hand it all N replies."""

    seen = 0

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        self.seen = len(replies)
        return super().aggregate_train(server_round, replies)


def test_mean_aggregators_get_one_collapsed_reply_with_the_same_result() -> None:
    assert (
        averages_replies(FedAvg()) and averages_replies(FedAdam()) and averages_replies(FedLAMB())
    )
    assert averages_replies(FedProx())  # inherits FedAvg's mean
    assert not averages_replies(FedMedian()) and not averages_replies(EveryReplyFedAvg())
    sent, scales, settings = (
        model_arrays(),
        [0.01, 0.3, 1.0, 2.0],
        dict(noise_multiplier=1.0, seed=9),
    )
    examples = [3, 1, 40, 7]
    collapsed, m1, _ = run_round(central_dp(**settings), sent, scales, examples=examples)
    every = EveryReplyFedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=4, min_available_nodes=4
    )
    full, m2, _ = run_round(central_dp(every, **settings), sent, scales, examples=examples)
    assert every.seen == COHORT
    for key in sent:
        np.testing.assert_allclose(collapsed[key], full[key], rtol=1e-6, atol=1e-7)
    assert m1["train_loss"] == pytest.approx(m2["train_loss"])
    assert m1["epsilon"] == m2["epsilon"]
    median = FedMedian(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=4, min_available_nodes=4
    )
    by_median, _, _ = run_round(central_dp(median, **settings), sent, scales, examples=examples)
    np.testing.assert_allclose(by_median["fc.weight"], full["fc.weight"], rtol=1e-6)


def test_from_config_calibrates_noise_to_the_target_epsilon() -> None:
    dp_cfg = DPConfig(enabled=True, target_epsilon=5.0, delta=1e-5, clip_norm=0.3, max_epsilon=6.0)
    dp = CentralDP.from_config(
        fedavg(), dp_cfg, expected_clients=10, population=1000, num_rounds=200, seed=1
    )
    assert dp.ledger.sample_rate == 0.01 and dp.clip_norm == 0.3 and dp.max_epsilon == 6.0
    assert 4.99 <= dp.ledger.epsilon(200) <= 5.0
    fixed = CentralDP.from_config(
        fedavg(),
        DPConfig(enabled=True, noise_multiplier=0.7, placement="client"),
        expected_clients=10,
        population=1000,
        num_rounds=200,
        seed=1,
    )
    assert fixed.noise_multiplier == 0.7 and fixed.placement == "client"


def test_a_non_finite_update_is_dropped_from_the_sum() -> None:
    sent = model_arrays()
    dp = central_dp()
    messages = sorted(
        dp.configure_train(1, record(sent), ConfigRecord(), StubGrid(COHORT)),  # type: ignore[arg-type]
        key=lambda m: m.metadata.dst_node_id,
    )
    deltas = [client_delta(i, 0.001, sent) for i in range(COHORT)]
    deltas[2]["fc.weight"][0, 0] = np.nan
    arrays, _ = dp.aggregate_train(1, [reply(m, d) for m, d in zip(messages, deltas, strict=True)])
    assert arrays is not None
    got = arrays["fc.weight"].numpy()
    kept = deltas[0]["fc.weight"] + deltas[1]["fc.weight"] + deltas[3]["fc.weight"]
    np.testing.assert_allclose(got, sent["fc.weight"] + kept / COHORT, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("inner", ["fedavg", "fedadam", "lamb", "median"])
def test_integer_counters_keep_dtype_shape_and_value_round_after_round(inner: str) -> None:
    """Issue 18 (severe 7): the server sent BN's counter back as float64 of shape (1,), the
    next round took it for a learned entry and refused the client's int64 () reply."""
    fixed = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=4)
    strategies: dict[str, Any] = {
        "fedavg": fedavg,
        "fedadam": lambda: FedAdam(**fixed, min_available_nodes=4),
        "lamb": lambda: FedLAMB(**fixed, min_available_nodes=4),
        "median": lambda: FedMedian(**fixed, min_available_nodes=4),
    }
    dp = central_dp(strategies[inner](), noise_multiplier=0.5, seed=1)
    arrays = model_arrays()
    for server_round in (1, 2, 3):
        previous = arrays
        arrays, _, _ = run_round(dp, arrays, [0.5] * COHORT, server_round=server_round)
        counter = arrays["bn.num_batches_tracked"]
        assert (counter.dtype, counter.shape, counter.item()) == (np.int64, (), 7)
        for key, value in previous.items():  # (Flower's FedAdam returns float64 weights)
            if key != "bn.num_batches_tracked":
                assert (arrays[key].dtype.kind, arrays[key].shape) == ("f", value.shape), key
        assert not np.array_equal(arrays["fc.weight"], previous["fc.weight"])  # it trains

"""Every method over Flower's own aggregators, configured from the run config."""

import fakes  # noqa: F401  (Flower's task identity, as inside its runtime)
import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi
from privacy.privacy_fakes import StubGrid, client_delta, model_arrays, record, reply

from fedwon.config import ConfigError, make_config
from fedwon.server_app import run_strategy
from fedwon.strategies import AGGREGATORS


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("fedavg", FedAvg),
        ("fedavgm", FedAvgM),
        ("fedprox", FedProx),
        ("fedadam", FedAdam),
        ("fedyogi", FedYogi),
        ("fedadagrad", FedAdagrad),
    ],
)
def test_aggregator_is_flowers_own_class(name: str, cls: type) -> None:
    extra = {"proximal_mu": 0.1} if name == "fedprox" else {}
    strategy = run_strategy(make_config({"aggregator": name, "num_clients": 10, **extra}))
    assert type(strategy.strategy) is cls  # not a copy, not a subclass
    assert AGGREGATORS[name].cls is cls


def test_config_keys_reach_the_aggregator() -> None:
    adam = run_strategy(
        make_config({"aggregator": "fedadam", "server_lr": 0.03, "beta_1": 0.5, "tau": 1e-4})
    ).strategy
    assert isinstance(adam, FedAdam)
    assert (adam.eta, adam.beta_1, adam.tau) == (0.03, 0.5, 1e-4)
    assert adam.beta_2 == FedAdam().beta_2  # unset: Flower's default
    prox = run_strategy(make_config({"aggregator": "fedprox", "proximal_mu": 0.2})).strategy
    assert isinstance(prox, FedProx) and prox.proximal_mu == 0.2
    avgm = run_strategy(
        make_config({"aggregator": "fedavgm", "server_lr": 0.5, "server_momentum": 0.9})
    ).strategy
    assert isinstance(avgm, FedAvgM)
    assert (avgm.server_learning_rate, avgm.server_momentum) == (0.5, 0.9)


def test_clients_per_round_is_sampled_exactly() -> None:
    for n, k in [(1000, 10), (7, 3), (49, 17), (3, 3)]:
        strategy = run_strategy(make_config({"num_clients": n, "clients_per_round": k}))
        inner = strategy.strategy
        assert isinstance(inner, FedAvg)
        assert max(int(n * inner.fraction_train), inner.min_train_nodes) == k


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"aggregator": "fedavg", "server_lr": 0.1},
            r"server_lr is not used by aggregator 'fedavg'",
        ),
        ({"aggregator": "fedadam", "proximal_mu": 0.1}, r"proximal_mu .* \['fedprox'\]"),
        ({"aggregator": "fedprox"}, r"fedprox' needs proximal_mu > 0"),
        ({"aggregator": "fedsgd"}, r"unknown aggregator 'fedsgd'; choose one of \['fedadagrad'"),
        ({"aggregator": "fedadam", "beta_1": 1.0}, r"beta_1: must be in \[0, 1\)"),
    ],
)
def test_settings_an_aggregator_would_ignore_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(settings)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_the_weighted_mean_flag_is_true_to_the_aggregator(name: str) -> None:
    """Streaming and central DP hand a ``weighted_mean`` aggregator one reply holding the
    example-weighted mean of the round's replies: for it, the replies and that one reply (with
    their total weight) must give the same model. A new aggregator registered with the wrong
    flag (a median, say) fails here."""
    settings = {
        "fedavgm": {"server_lr": 1.0, "server_momentum": 0.9},
        "fedprox": {"proximal_mu": 0.1},
    }.get(name, {"server_lr": 0.01} if AGGREGATORS[name].has_server_step else {})
    cfg = make_config({"aggregator": name, "num_clients": 3, **settings})

    def aggregate(deltas: list[dict[str, np.ndarray]], weights: list[int]) -> dict:
        strategy = run_strategy(cfg).strategy
        w = model_arrays()
        (first, *_) = strategy.configure_train(1, record(w), ConfigRecord(), StubGrid(3))
        replies = [reply(first, d, num_examples=n) for d, n in zip(deltas, weights, strict=True)]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        return {k: a.numpy() for k, a in arrays.items()}

    deltas = [client_delta(node, 0.1, model_arrays()) for node in range(3)]
    weights = [10, 30, 20]
    mean = {
        k: sum(d[k].astype(np.float64) * n for d, n in zip(deltas, weights, strict=True)) / 60
        for k in deltas[0]
    }
    many = aggregate(deltas, weights)
    one = aggregate([{k: v.astype(np.float32) for k, v in mean.items()}], [60])
    assert AGGREGATORS[name].weighted_mean  # every registered one is; a median would fail here
    for key, value in one.items():
        np.testing.assert_allclose(many[key], value, rtol=1e-5, atol=1e-6, err_msg=key)

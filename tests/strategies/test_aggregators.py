"""Every method over Flower's own aggregators, configured from the run config."""

import pytest
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

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

"""``AGGREGATORS``: Flower's own server algorithms (and fedwon's LAMB, built like Flower's
FedOpt family), picked by the ``aggregator`` config key.

Each entry is Flower's class (never a copy) and the config keys it reads. Every method
(fedavg / fedbn / fedwon) runs over every aggregator: methods only decide which arrays are
shared (:mod:`fedwon.strategies.methods`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
)
from flwr.serverapp.strategy.fedopt import FedOpt

from fedwon.strategies.lamb import FedLAMB

if TYPE_CHECKING:
    from fedwon.strategies.spec import ServerSpec


@dataclass(frozen=True)
class Aggregator:
    """A Flower strategy class and how config keys map onto its constructor arguments."""

    cls: type[FedAvg]
    params: dict[str, str]  # config key -> constructor argument
    weighted_mean: bool  # required: every entry says it (see test_aggregators)
    """``aggregate_train`` is FedAvg's weighted mean of the replies (then, maybe, a server
    optimizer step). The one answer to "is this aggregator a mean?": the round rules fold
    replies into a running mean for it (:mod:`.streaming`), and central DP hands it one reply
    holding the noisy mean instead of N identical ones (:mod:`fedwon.privacy.central_dp`)."""

    @property
    def has_server_step(self) -> bool:
        """Whether it steps on its own after averaging (it has a server learning rate)."""
        return "server_lr" in self.params


_FEDOPT = {"server_lr": "eta", "beta_1": "beta_1", "beta_2": "beta_2", "tau": "tau"}
AGGREGATORS: dict[str, Aggregator] = {
    "fedavg": Aggregator(FedAvg, {}, weighted_mean=True),
    "fedavgm": Aggregator(
        FedAvgM,
        {"server_lr": "server_learning_rate", "server_momentum": "server_momentum"},
        weighted_mean=True,
    ),
    "fedprox": Aggregator(FedProx, {"proximal_mu": "proximal_mu"}, weighted_mean=True),
    "fedadam": Aggregator(FedAdam, _FEDOPT, weighted_mean=True),
    "fedyogi": Aggregator(FedYogi, _FEDOPT, weighted_mean=True),
    "fedadagrad": Aggregator(FedAdagrad, {"server_lr": "eta", "tau": "tau"}, weighted_mean=True),
    # fedwon's layer-wise gradient normalization (LAMB trust ratios), a FedOpt like Flower's
    "lamb": Aggregator(
        FedLAMB, {**_FEDOPT, "server_weight_decay": "weight_decay"}, weighted_mean=True
    ),
}
# Config keys an aggregator may read, and the value meaning "not set".
_UNSET: dict[str, Any] = {
    "server_lr": None,
    "server_momentum": None,
    "beta_1": None,
    "beta_2": None,
    "tau": None,
    "server_weight_decay": None,
    "proximal_mu": 0.0,
}


def check_aggregator_settings(cfg: ServerSpec) -> None:
    """Refuse settings the chosen aggregator would silently ignore (or FedProx without mu)."""
    agg = AGGREGATORS[cfg.aggregator]
    ignored = [k for k, unset in _UNSET.items() if getattr(cfg, k) != unset and k not in agg.params]
    if ignored:
        users = sorted(n for n, a in AGGREGATORS.items() if ignored[0] in a.params)
        raise ValueError(
            f"{ignored[0]} is not used by aggregator {cfg.aggregator!r} (it is read by {users})"
        )
    if cfg.aggregator == "fedprox" and cfg.proximal_mu <= 0:
        raise ValueError("aggregator 'fedprox' needs proximal_mu > 0 (e.g. proximal_mu=0.01)")


def build_aggregator(
    cfg: ServerSpec,
    *,
    num_clients: int,
    client_lr: float,
    evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord],
) -> FedAvg:
    """Flower's strategy for ``cfg.aggregator``, sampling exactly ``cfg.sampled(num_clients)``
    clients a round (``client_lr`` is only logged, as Flower's FedOpt ``eta_l``).

    ``min_train_nodes`` pins the sample size: Flower samples max(int(n · fraction), minimum).
    """
    sampled = cfg.sampled(num_clients)
    agg = AGGREGATORS[cfg.aggregator]
    kwargs: dict[str, Any] = {
        arg: getattr(cfg, key) for key, arg in agg.params.items() if getattr(cfg, key) is not None
    }
    if issubclass(agg.cls, FedOpt):
        kwargs["eta_l"] = client_lr  # logged by Flower only; clients use their own lr
    n = num_clients
    return agg.cls(
        fraction_train=sampled / n,
        min_train_nodes=sampled,
        fraction_evaluate=cfg.fraction_evaluate,
        min_evaluate_nodes=max(1, int(n * cfg.fraction_evaluate)),
        min_available_nodes=sampled,
        evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        **kwargs,
    )

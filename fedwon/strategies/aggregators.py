"""``AGGREGATORS``: Flower's own server algorithms (and fedwon's LAMB, built like Flower's
FedOpt family), picked by the ``aggregator`` config key.

Each entry is Flower's class (never a copy) and the config keys it reads. Every method
(fedavg / fedbn / fedwon) runs over every aggregator: methods only decide which arrays are
shared (:mod:`fedwon.strategies.methods`).
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
)

from fedwon.strategies.lamb import FedLAMB


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

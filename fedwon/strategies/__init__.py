"""FedAvg, FedBN and FedWon as thin subclasses of Flower's Message-API strategies."""

from fedwon.strategies.aggregation import non_finite_arrays, per_domain_metrics, split_usable
from fedwon.strategies.factory import STRATEGIES, build_strategy
from fedwon.strategies.fedavg import FedAvg
from fedwon.strategies.fedbn import FedBN, norm_state_keys
from fedwon.strategies.fedwon import FedWon, check_normalization_free
from fedwon.strategies.round_control import RoundControl, RoundFailedError

__all__ = [
    "STRATEGIES",
    "FedAvg",
    "FedBN",
    "FedWon",
    "RoundControl",
    "RoundFailedError",
    "build_strategy",
    "check_normalization_free",
    "non_finite_arrays",
    "norm_state_keys",
    "per_domain_metrics",
    "split_usable",
]

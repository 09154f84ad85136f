"""The paper's methods over Flower's aggregators, wrapped in fedwon's round rules.

``build_strategy(server, ...)`` = ``RoundRules(aggregator)``: the method (``METHODS``) decides
which arrays are shared, the aggregator (``AGGREGATORS``) is one of Flower's own strategies,
and :class:`RoundRules` (outermost) adds seeded sampling, fault filtering, the resume offset,
the evaluation cadence and per-round reporting.
"""

from fedwon.strategies.aggregation import non_finite_arrays, per_domain_metrics
from fedwon.strategies.aggregators import AGGREGATORS
from fedwon.strategies.factory import build_aggregator, build_strategy
from fedwon.strategies.lamb import FedLAMB
from fedwon.strategies.methods import (
    METHODS,
    Method,
    check_normalization_free,
    norm_state_keys,
)
from fedwon.strategies.round_rules import RoundCallback, RoundFailedError, RoundReport, RoundRules
from fedwon.strategies.spec import ServerSpec

__all__ = [
    "AGGREGATORS",
    "METHODS",
    "FedLAMB",
    "Method",
    "RoundCallback",
    "RoundFailedError",
    "RoundReport",
    "RoundRules",
    "ServerSpec",
    "build_aggregator",
    "build_strategy",
    "check_normalization_free",
    "non_finite_arrays",
    "norm_state_keys",
    "per_domain_metrics",
]

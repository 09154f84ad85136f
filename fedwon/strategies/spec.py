"""``ServerSpec``: the server section of a run -- the method, the aggregator and its settings,
and the schedule of rounds (how many, how many clients each, evaluation cadence).

Validated by the registries that define the choices: a method must be in :data:`METHODS`, an
aggregator in :data:`AGGREGATORS`, and a setting the chosen aggregator would silently ignore
is refused (:func:`~fedwon.strategies.aggregators.check_aggregator_settings`).
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator, model_validator

from fedwon.section import Section
from fedwon.strategies.aggregators import AGGREGATORS
from fedwon.strategies.methods import METHODS


class ServerSpec(Section):
    """What the server runs: which arrays are shared (``strategy``, the method), how replies
    are aggregated (``aggregator`` and its settings) and the rounds' schedule."""

    # what is learned: the method (what is shared) and Flower's server algorithm
    strategy: str = "fedavg"  # METHODS
    aggregator: str = "fedavg"  # AGGREGATORS
    server_lr: float | None = None  # None = the aggregator's own default
    server_momentum: float | None = None  # fedavgm
    beta_1: float | None = None  # fedadam, fedyogi, fedadagrad, lamb
    beta_2: float | None = None
    tau: float | None = None
    server_weight_decay: float | None = None  # lamb
    proximal_mu: float = 0.0  # fedprox: (mu/2)·||w − w_global||² added to the local loss
    # rounds and sampling
    num_rounds: int = 10
    clients_per_round: int = 0  # 0 = use fraction_train
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    eval_every: int = 1
    min_clients: int = 1  # fewest successful replies a round may aggregate

    @field_validator("strategy")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS and value in AGGREGATORS:
            raise ValueError(
                f"{value!r} is an aggregator, not a method: set aggregator={value!r} and strategy "
                f"to one of {sorted(METHODS)} (what is shared)"
            )
        if value not in METHODS:
            raise ValueError(f"unknown strategy {value!r}; choose one of {sorted(METHODS)}")
        return value

    @field_validator("aggregator")
    @classmethod
    def _known_aggregator(cls, value: str) -> str:
        if value not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {value!r}; choose one of {sorted(AGGREGATORS)}")
        return value

    @field_validator("num_rounds", "eval_every", "min_clients")
    @classmethod
    def _positive_int(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value

    @field_validator("clients_per_round")
    @classmethod
    def _non_negative_int(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("fraction_train", "fraction_evaluate")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"must be in (0, 1], got {value}")
        return value

    @field_validator("proximal_mu")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("server_lr", "tau")
    @classmethod
    def _positive_optional(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError(f"must be > 0, got {value}")
        return value

    @field_validator("server_weight_decay")
    @classmethod
    def _non_negative_optional(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("server_momentum", "beta_1", "beta_2")
    @classmethod
    def _unit_interval(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"must be in [0, 1), got {value}")
        return value

    @model_validator(mode="after")
    def _aggregator_settings(self) -> ServerSpec:
        check_aggregator_settings(self)
        return self

    def sampled(self, num_clients: int) -> int:
        """Clients asked to train each round (Flower samples max(fraction * n, minimum))."""
        if self.clients_per_round:
            return self.clients_per_round
        return max(1, int(num_clients * self.fraction_train))


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

"""``ServerSpec``: the server section of a run -- the method, the aggregator and its settings,
and the schedule of rounds (how many, how many clients each, evaluation cadence).

Validated by the registries that define the choices: a method must be in :data:`METHODS`, an
aggregator in :data:`AGGREGATORS`, and a setting the chosen aggregator would silently ignore
is refused (:func:`~fedwon.strategies.aggregators.check_aggregator_settings`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from fedwon.common.section import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Section,
    UnitInterval,
)
from fedwon.strategies.aggregators import AGGREGATORS
from fedwon.strategies.methods import METHODS
from fedwon.strategies.participation import Participation

FLOWER_ROUND_TIMEOUT_S = 3600.0  # Flower's Strategy.start default


class ServerSpec(Section):
    """What the server runs: which arrays are shared (``strategy``, the method), how replies
    are aggregated (``aggregator`` and its settings) and the rounds' schedule."""

    # what is learned: the method (what is shared) and Flower's server algorithm
    strategy: str = "fedavg"  # METHODS
    aggregator: str = "fedavg"  # AGGREGATORS
    server_lr: PositiveFloat | None = None  # None = the aggregator's own default
    server_momentum: UnitInterval | None = None  # fedavgm
    beta_1: UnitInterval | None = None  # fedadam, fedyogi, fedadagrad, lamb
    beta_2: UnitInterval | None = None
    tau: PositiveFloat | None = None
    server_weight_decay: NonNegativeFloat | None = None  # lamb
    proximal_mu: NonNegativeFloat = 0.0  # fedprox: (mu/2)·||w − w_global||² added to the local loss
    # rounds and sampling
    num_rounds: PositiveInt = 10
    clients_per_round: NonNegativeInt = 0  # 0 = use fraction_train
    fraction_train: Fraction = 1.0
    fraction_evaluate: Fraction = 1.0
    eval_every: PositiveInt = 1
    min_clients: PositiveInt = 1  # fewest successful replies a round may aggregate
    # who trains when: uniform random sampling, or fixed groups in turn (DP-FTRL / BandMF)
    participation: Literal["uniform", "cyclic"] = "uniform"
    # seconds a round phase waits for replies before it goes on with those that came (a dead
    # or stalled node costs at most this); 0 = Flower's own 3,600 s, which never cuts off an
    # honest client (docs/deployment.md says how to choose it)
    round_timeout: NonNegativeFloat = 0.0

    @property
    def reply_timeout(self) -> float:
        """The timeout handed to Flower's ``Strategy.start`` (``round_timeout`` or 3,600 s)."""
        return self.round_timeout or FLOWER_ROUND_TIMEOUT_S

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

    @model_validator(mode="after")
    def _aggregator_settings(self) -> ServerSpec:
        check_aggregator_settings(self)
        return self

    def sampled(self, num_clients: int) -> int:
        """Clients asked to train each round (Flower samples max(fraction * n, minimum))."""
        if self.clients_per_round:
            return self.clients_per_round
        return max(1, int(num_clients * self.fraction_train))

    def schedule(self, num_clients: int) -> Participation:
        """Who trains when among ``num_clients`` (``participation``; ValueError, one line,
        for a cyclic cohort that does not divide them)."""
        return Participation(self.participation, num_clients, self.sampled(num_clients))


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

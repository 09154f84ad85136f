"""``STRATEGIES`` registry and the one place that turns a :class:`RunConfig` into a strategy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from fedwon.config import RunConfig
from fedwon.strategies.fedavg import FedAvg
from fedwon.strategies.fedbn import FedBN, norm_state_keys
from fedwon.strategies.fedwon import FedWon

STRATEGIES: dict[str, type[FedAvg]] = {"fedavg": FedAvg, "fedbn": FedBN, "fedwon": FedWon}


def build_strategy(
    cfg: RunConfig, model: nn.Module, domains: Sequence[str] = (), round_offset: int = 0
) -> FedAvg:
    """The strategy named by ``cfg.strategy``, sampling ``cfg.sampled_per_round`` clients."""
    sampled = cfg.sampled_per_round
    kwargs: dict[str, Any] = dict(
        fraction_train=sampled / cfg.num_clients,
        min_train_nodes=sampled,
        fraction_evaluate=cfg.fraction_evaluate,
        min_evaluate_nodes=max(1, int(cfg.num_clients * cfg.fraction_evaluate)),
        min_available_nodes=sampled,
        seed=cfg.seed,
        min_clients=cfg.min_clients,
        num_rounds=cfg.num_rounds,
        eval_every=cfg.eval_every,
        round_offset=round_offset,
        domains=domains,
    )
    if cfg.strategy == "fedbn":
        return FedBN(local_keys=norm_state_keys(model), **kwargs)
    if cfg.strategy == "fedwon":
        return FedWon(model=model, **kwargs)
    return FedAvg(**kwargs)
